// One rendered view, answered as a page or as its JSON twin. The JSON twin is chosen by
// ?format=json, or by a client that does not ask for HTML (a script).
import { wantsHtml } from '../handler.ts';
import { json } from '../respond.ts';
import type { Html } from './html.ts';
import { page, type View } from './layout.ts';
import { ConsoleInputError } from './query.ts';
import { COMMON_HEADERS, htmlHeaders, newNonce } from './security.ts';

export interface Rendered {
  status?: number;
  title: string;
  view: View;
  body: Html;
  /** The JSON twin's body (ok and view are added). */
  data: Record<string, unknown>;
  /** Views reload themselves; action results and errors do not. */
  refreshes?: boolean;
}

export function wantsJson(req: Request, params: URLSearchParams): boolean {
  const format = params.get('format')?.trim();
  if (format === 'json') return true;
  if (format === 'html') return false;
  if (format) throw new ConsoleInputError('format', 'json или html');
  return !wantsHtml(req);
}

export interface RenderContext {
  req: Request;
  params: URLSearchParams;
  asJson: boolean;
  refresh: number;
  nowMs: number;
}

export function respond(ctx: RenderContext, r: Rendered): Response {
  const status = r.status ?? 200;
  if (ctx.asJson) return json(status, { ok: status < 400, view: r.view, ...r.data }, COMMON_HEADERS);
  const nonce = newNonce();
  const url = new URL(ctx.req.url);
  const toggle = (value: string | null) => {
    const u = new URL(url);
    if (value === null) u.searchParams.delete('refresh'); else u.searchParams.set('refresh', value);
    return `${u.pathname}${u.search}`;
  };
  const refresh = r.refreshes ? ctx.refresh : 0;
  return new Response(page({
    title: r.title, view: r.view, nonce, refresh, body: r.body,
    generatedAt: new Date(ctx.nowMs).toISOString(),
    refreshToggle: r.refreshes ? { on: toggle(null), off: toggle('0') } : undefined,
  }), { status, headers: htmlHeaders(nonce) });
}
