// The operator endpoints (replay, status, the console) take AMOCRM_REPLAY_TOKEN as a Bearer
// token, or as the password of HTTP Basic auth so a browser can open them.
import { safeEqual } from '../safe-equal.ts';
import { errorResponse } from './respond.ts';

/** Bearer check for the operator endpoints (replay, status, the console), constant-time. */
export function bearerMatches(headers: Headers, token: string | undefined): boolean {
  const auth = headers.get('authorization') ?? '';
  const offered = /^Bearer\s+(.+)$/i.exec(auth)?.[1]?.trim();
  if (!token || !offered) return false;
  return safeEqual(offered, token);
}

/** The user name and password of HTTP Basic auth, unchecked; undefined without Basic. */
export function basicCredentials(headers: Headers): { user: string; password: string } | undefined {
  const encoded = /^Basic\s+(.+)$/i.exec(headers.get('authorization') ?? '')?.[1];
  if (!encoded) return undefined;
  const [user = '', ...rest] = Buffer.from(encoded, 'base64').toString('utf8').split(':');
  return { user, password: rest.join(':') };
}

function basicMatches(headers: Headers, token: string): boolean {
  const credentials = basicCredentials(headers);
  return credentials !== undefined && safeEqual(credentials.password, token);
}

/**
 * null when authorized, else the 401/503 answer to return. Without a token nobody can be
 * authorized: a bare 503 (what to set goes to the log, never to an unknown caller).
 */
export function operatorAuthFailure(req: Request, token: string | undefined, browser = false): Response | null {
  if (!token) return errorResponse(503, 'the function is not configured: its log says what to set');
  if (bearerMatches(req.headers, token) || (browser && basicMatches(req.headers, token))) return null;
  const res = browser
    ? errorResponse(401, 'sign in with HTTP Basic auth: any user name, the password is AMOCRM_REPLAY_TOKEN (scripts send Authorization: Bearer <AMOCRM_REPLAY_TOKEN>)')
    : errorResponse(401, 'missing or wrong token: send Authorization: Bearer <AMOCRM_REPLAY_TOKEN>');
  res.headers.set('www-authenticate', browser ? 'Basic realm="amocrm-sync status", charset="UTF-8"' : 'Bearer');
  return res;
}
