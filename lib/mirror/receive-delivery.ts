// Receiving one amoCRM hook delivery: it is recorded as it came (the caller answers
// amoCRM at once), and what cannot be used is kept and flagged for an operator, never
// refused, so amoCRM never disables the hook over content. Applying it to the mirror is
// returned as work for after the answer.
import { HookContentError, parseHookBody, type LeadChange } from '../amocrm/hook-form.ts';
import { recordDelivery, type DeliveryStatus } from '../db/deal-mirror.ts';
import type { Runtime } from '../runtime.ts';
import { errorText } from '../log.ts';
import { applyPendingDeliveries } from './apply.ts';

/** What is kept of a body in the database. */
const KEPT_BYTES = 256 * 1024;

export interface ReceivedDelivery {
  id: number;
  status: DeliveryStatus;
  duplicate: boolean;
  /** Applying it to the mirror, for after the answer; absent when there is nothing to apply. */
  afterAnswer?: () => Promise<void>;
}

export async function receiveDelivery(rt: Runtime, raw: string, requestId?: string): Promise<ReceivedDelivery> {
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
    else problem = accountProblem(account, rt.config.hooks);
    if (!problem && bodyBytes > KEPT_BYTES) problem = `body of ${bodyBytes} bytes: larger than any amoCRM delivery`;
    if (problem) status = 'flagged';
    else if (changes.length === 0) status = 'ignored';
  } catch (err) {
    if (!(err instanceof HookContentError)) throw err;
    status = 'flagged';
    problem = err.message;
  }
  const recorded = await recordDelivery(rt.db, {
    requestId, body, bodyBytes,
    changes: status === 'pending' ? changes : [], status, problem, accountId: account.id, subdomain: account.subdomain,
  });
  if (status === 'flagged') {
    rt.log.warn('Хук amoCRM сохранён, но не разобран: нужен оператор', { delivery: recorded.id, problem: problem?.slice(0, 200) });
  }
  const apply = async () => {
    // Durable already: what is not applied now, the scheduled run applies.
    await applyPendingDeliveries(rt).catch((err) =>
      rt.log.warn('Хуки amoCRM не применены сразу: плановый запуск применит', { error: errorText(err).slice(0, 200) }));
  };
  return { id: recorded.id, status, duplicate: recorded.duplicate, afterAnswer: status === 'pending' && !recorded.duplicate ? apply : undefined };
}

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
