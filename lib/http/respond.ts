// Small helpers shared by the HTTP entry points: JSON answers and the errors every
// entry point turns into a clear 4xx/5xx instead of a crash.
import { ConfigError } from '../config.ts';
import { DbError } from '../db/port.ts';
import { errorText, redact } from '../log.ts';
import { PayloadError } from './body.ts';
import { WebhookVerificationError } from '../lesson-webhook/verify.ts';

export const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json; charset=utf-8', ...headers } });

export const errorResponse = (status: number, error: string, extra: Record<string, unknown> = {}) =>
  json(status, { ok: false, error, ...extra });

/** Maps what went wrong to a status and a message a person can act on; never a stack or a secret. */
export function failureResponse(err: unknown): Response {
  if (err instanceof WebhookVerificationError) return errorResponse(401, err.message);
  if (err instanceof PayloadError) return errorResponse(err.status, err.message);
  if (err instanceof ConfigError) {
    return errorResponse(503, 'the function is not configured: fix these Netlify environment variables (Functions scope)', {
      problems: err.problems,
    });
  }
  if (err instanceof DbError) {
    return errorResponse(503, `database unavailable or not migrated (${err.fn}${err.code ? `, ${err.code}` : ''}): nothing was changed, send the request again later (lesson events stay in the outbox and the scheduled run retries them)`);
  }
  return errorResponse(500, `unexpected error: ${redact(errorText(err)).slice(0, 200)}`);
}
