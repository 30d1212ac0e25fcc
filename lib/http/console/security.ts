// What keeps the console's pages safe to open: a fresh nonce per page for its one inline
// style and script, a Content-Security-Policy that allows nothing else (no other origin,
// no inline handlers, no frames, forms only to this origin), no caching, no referrer, and a
// same-origin check on every action.
import { randomBytes } from 'node:crypto';
import { bearerMatches } from '../operator-auth.ts';

export const newNonce = () => randomBytes(16).toString('base64');

export function contentSecurityPolicy(nonce: string): string {
  return [
    "default-src 'none'",
    `script-src 'nonce-${nonce}'`,
    `style-src 'nonce-${nonce}'`,
    "img-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
  ].join('; ');
}

/** Headers every console answer carries, pages and JSON alike. */
export const COMMON_HEADERS: Record<string, string> = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  // Links out (a deal in amoCRM) must not carry the console's URL, which may hold an e-mail.
  // Not no-referrer: with it a browser sends `Origin: null` on the console's own form posts.
  'referrer-policy': 'same-origin',
  'x-frame-options': 'DENY',
};

export function htmlHeaders(nonce: string): Record<string, string> {
  return { 'content-type': 'text/html; charset=utf-8', 'content-security-policy': contentSecurityPolicy(nonce), ...COMMON_HEADERS };
}

/**
 * Why an action request may not come from this console, or null when it may. A browser
 * sends Basic credentials to any site that makes it post here, so a browser's request must
 * say it comes from this origin: Sec-Fetch-Site (which no page can set), else Origin. A
 * script's Bearer token is never attached by a browser on another site's behalf, so a
 * request with neither header is accepted only with Bearer.
 */
export function crossOriginRefusal(req: Request, token: string | undefined): string | null {
  const site = req.headers.get('sec-fetch-site');
  if (site) return site === 'same-origin' ? null : `запрос пришёл не со страницы консоли (Sec-Fetch-Site: ${site.slice(0, 40)})`;
  const origin = req.headers.get('origin');
  const own = new URL(req.url).origin;
  if (origin) return origin === own ? null : `запрос пришёл с другого адреса (Origin: ${origin.slice(0, 100)}, ожидался ${own})`;
  if (bearerMatches(req.headers, token)) return null;
  return 'у запроса нет заголовков Sec-Fetch-Site и Origin: браузер отправляет их сам; скрипты отправляют Authorization: Bearer';
}
