// POST /api/amocrm/crm-events/<secret> — amoCRM's account webhooks. They are unsigned, so
// the secret in the URL (compared in constant time) and the account are the
// authentication. The delivery is recorded as it came and answered 200 at once (amoCRM
// waits 2 s, and disables a hook after 100 bad answers); applying it to the mirror
// happens after the answer. Content we cannot use is kept and flagged for an operator,
// never answered with an error: only a delivery we could not record gets a non-2xx.
import { HookContentError, parseHookBody, type LeadChange } from '../amocrm/hooks.ts';
import { recordDelivery, type DeliveryStatus } from '../db/mirror.ts';
import { applyPendingDeliveries } from '../mirror/apply.ts';
import { safeEqual } from '../webhook/verify.ts';
import { readBody } from '../webhook/payload.ts';
import { endpoint } from './handler.ts';
import { errorResponse, json } from './respond.ts';

/** Netlify's request limit; anything amoCRM sends is far smaller. */
const BODY_LIMIT_BYTES = 6 * 1024 * 1024;
/** What is kept of a body in the database. */
const KEPT_BYTES = 256 * 1024;

export const handleCrmEvents = endpoint({
  methods: ['POST'],
  usage: 'amoCRM posts its account webhooks here (application/x-www-form-urlencoded)',
  async handle(req, rt, context) {
    const { secret, subdomain, accountId } = rt.config.hooks;
    const offered = context.params?.secret ?? safeDecode(new URL(req.url).pathname.split('/').at(-1) ?? '');
    if (!secret) return errorResponse(404, 'not found');
    if (!safeEqual(offered, secret)) return errorResponse(404, 'not found');

    const raw = await readBody(req, BODY_LIMIT_BYTES);
    const bodyBytes = Buffer.byteLength(raw);
    // PostgreSQL text cannot hold a NUL byte: keep the body with it replaced, and flag it.
    const body = raw.replaceAll('\u0000', '\uFFFD');
    let changes: LeadChange[] = [];
    let account: { id?: number; subdomain?: string } = {};
    let status: DeliveryStatus = 'pending';
    let problem: string | undefined;
    try {
      ({ changes, account } = parseHookBody(raw));
      if (raw !== body) problem = 'a NUL byte in the body';
      else problem = accountProblem(account, { subdomain, accountId });
      if (!problem && bodyBytes > KEPT_BYTES) problem = `body of ${bodyBytes} bytes: larger than any amoCRM delivery`;
      if (problem) status = 'flagged';
      else if (changes.length === 0) status = 'ignored';
    } catch (err) {
      if (!(err instanceof HookContentError)) throw err;
      status = 'flagged';
      problem = err.message;
    }
    const recorded = await recordDelivery(rt.db, {
      requestId: requestIdOf(req.headers), body, bodyBytes,
      changes: status === 'pending' ? changes : [], status, problem, accountId: account.id, subdomain: account.subdomain,
    });
    if (status === 'flagged') {
      rt.log.warn('Хук amoCRM сохранён, но не разобран: нужен оператор', { delivery: recorded.id, problem: problem?.slice(0, 200) });
    }
    if (status === 'pending' && !recorded.duplicate) {
      // After the answer: Netlify keeps the invocation alive for it. Without waitUntil the
      // scheduled run applies the delivery (it is durable already).
      context.waitUntil?.(applyPendingDeliveries(rt).catch((err) =>
        rt.log.warn('Хуки amoCRM не применены сразу: плановый запуск применит', { error: String((err as Error)?.message ?? err).slice(0, 200) })));
    }
    return json(200, { ok: true, delivery_id: recorded.id, status, duplicate: recorded.duplicate });
  },
});

/**
 * Whether the delivery names this deployment's account, as the README promises: it must
 * name AMOCRM_SUBDOMAIN (checked whenever it is set), and carry AMOCRM_ACCOUNT_ID when
 * that is set. A field the configuration asks for and the delivery lacks is a problem, not
 * a pass. With neither configured (AMOCRM_BASE_URL alone) nothing can be checked: flagged.
 */
function accountProblem(account: { id?: number; subdomain?: string }, expected: { subdomain?: string; accountId?: number }): string | undefined {
  if (!account.subdomain && account.id === undefined) return 'no account[subdomain] or account[id] in the delivery';
  if (!expected.subdomain && expected.accountId === undefined) return 'AMOCRM_SUBDOMAIN is not set: the delivery\'s account cannot be checked';
  if (expected.subdomain) {
    if (!account.subdomain) return 'no account[subdomain] in the delivery: it must name AMOCRM_SUBDOMAIN';
    if (account.subdomain.toLowerCase() !== expected.subdomain) return `another account: ${account.subdomain}`;
  }
  if (expected.accountId !== undefined) {
    if (account.id === undefined) return 'no account[id] in the delivery: it must carry AMOCRM_ACCOUNT_ID';
    if (account.id !== expected.accountId) return `another account id: ${account.id}`;
  }
  return undefined;
}

/** A path segment as sent; malformed percent-encoding is compared as it came (and fails). */
function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** amoCRM's X-Amocrm-Requestid is a UUID; anything else is not used to recognise a retry. */
function requestIdOf(headers: Headers): string | undefined {
  const id = headers.get('x-amocrm-requestid')?.trim();
  return id && /^[A-Za-z0-9_.:-]{1,100}$/.test(id) ? id : undefined;
}
