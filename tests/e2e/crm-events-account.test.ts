// The account check at amoCRM's hook endpoint, as the README promises it: deliveries must
// name the account AMOCRM_SUBDOMAIN (the subdomain is checked either way), and with
// AMOCRM_ACCOUNT_ID set they must carry that id as well. A delivery that does not is
// authentic (the secret matched) but unusable: answered 200, kept, flagged with the
// problem, never applied to the mirror. Real handler and database (PGlite, or PostgreSQL
// with DATABASE_URL).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleCrmEvents } from '../../lib/http/crm-events.ts';
import { applyPendingDeliveries } from '../../lib/mirror/apply.ts';
import type { Runtime } from '../../lib/runtime.ts';
import { createStack, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

const HOOK_SECRET = 'account-check-hook-secret-7d2e9b4c1a';
const SUBDOMAIN = 'onaiacademy';
const ACCOUNT_ID = 29_000_000;

let s: Stack;
let student: { userId: string; leadId: number };
let modified = 1_900_000_000;
let seq = 0;

beforeAll(async () => {
  s = await createStack({ env: { AMOCRM_HOOK_SECRET: HOOK_SECRET, AMOCRM_SUBDOMAIN: SUBDOMAIN } });
  const st = await s.addStudent('account-check@student.kz', { leadStatusId: STAGE.lesson1 });
  await s.t.sql(`insert into amocrm.student_leads (user_id, lead_id) values ($1, $2)`, [st.userId, st.leadId]);
  student = st;
});
afterAll(async () => {
  await s?.close();
});

/** The stack's runtime with the hook settings a deployment could have. */
const configured = (hooks: { subdomain?: string; accountId?: number }): Runtime =>
  ({ ...s.rt, config: { ...s.rt.config, hooks: { secret: HOOK_SECRET, ...hooks } } });

/** A status hook moving the student's deal to lesson 2's stage, naming the given account fields. */
function hook(account: { subdomain?: string; id?: number }): string {
  const lead = { id: student.leadId, status_id: STAGE.lesson2, old_status_id: STAGE.lesson1, pipeline_id: PIPELINE, old_pipeline_id: PIPELINE, last_modified: ++modified };
  const pairs: [string, string | number][] = Object.entries(lead).map(([k, v]) => [`leads[status][0][${k}]`, v]);
  if (account.subdomain !== undefined) pairs.push(['account[subdomain]', account.subdomain]);
  if (account.id !== undefined) pairs.push(['account[id]', account.id]);
  return pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`).join('&');
}

async function deliver(rt: Runtime, body: string) {
  const logFrom = s.log.lines.length;
  const res = await handleCrmEvents(new Request(`http://localhost/api/amocrm/crm-events/${HOOK_SECRET}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-amocrm-requestid': `account-check-${++seq}` },
    body,
  }), async () => rt, { params: { secret: HOOK_SECRET } });
  const answer = await res.json() as { ok: boolean; status: string; delivery_id: number };
  // Whatever was recorded pending is applied, as after the answer: a flagged one never is.
  await applyPendingDeliveries(rt);
  const [row] = await s.t.sql(`select status, problem from amocrm.crm_deliveries where id = $1`, [answer.delivery_id]);
  const stage = (await s.t.sql(`select status_id::int as status_id from amocrm.deals where lead_id = $1`, [student.leadId]))[0]?.status_id as number | undefined;
  const flaggedLines = s.log.lines.slice(logFrom).filter((l) => l.startsWith('⚠️ [AmoCRM] Хук amoCRM сохранён, но не разобран'));
  return { http: res.status, answer, row: row as { status: string; problem: string | null }, stage, flaggedLines };
}

/** Resets the mirror's view of the deal so each case shows whether it was applied. */
const forgetDeal = () => s.t.sql(`delete from amocrm.deals where lead_id = $1`, [student.leadId]);

describe('AMOCRM_ACCOUNT_ID unset (the default): the delivery must name AMOCRM_SUBDOMAIN', () => {
  const rt = () => configured({ subdomain: SUBDOMAIN });

  it('only account[id], no subdomain: kept and flagged, not applied', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ id: 1 }));
    expect(d.http).toBe(200);
    expect(d.answer).toMatchObject({ ok: true, status: 'flagged' });
    expect(d.row).toEqual({ status: 'flagged', problem: 'no account[subdomain] in the delivery: it must name AMOCRM_SUBDOMAIN' });
    expect(d.flaggedLines).toHaveLength(1);
    expect(d.stage).toBeUndefined();
  });

  it('only account[id], even the right one: flagged (the id is not what is configured)', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ id: ACCOUNT_ID }));
    expect(d.row.status).toBe('flagged');
    expect(d.stage).toBeUndefined();
  });

  it('another subdomain: flagged', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ subdomain: 'otheracademy', id: ACCOUNT_ID }));
    expect(d.row).toEqual({ status: 'flagged', problem: 'another account: otheracademy' });
    expect(d.stage).toBeUndefined();
  });

  it('the subdomain, any id or none: accepted and applied', async () => {
    await forgetDeal();
    const withoutId = await deliver(rt(), hook({ subdomain: SUBDOMAIN }));
    expect(withoutId.answer).toMatchObject({ ok: true, status: 'pending' });
    expect(withoutId.row.status).toBe('applied');
    expect(withoutId.stage).toBe(STAGE.lesson2);
    await forgetDeal();
    const anyId = await deliver(rt(), hook({ subdomain: SUBDOMAIN, id: 12345 }));
    expect(anyId.row.status).toBe('applied');
    expect(anyId.stage).toBe(STAGE.lesson2);
  });
});

describe('AMOCRM_ACCOUNT_ID set: the id must match as well', () => {
  const rt = () => configured({ subdomain: SUBDOMAIN, accountId: ACCOUNT_ID });

  it('the subdomain but no account[id]: flagged', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ subdomain: SUBDOMAIN }));
    expect(d.row).toEqual({ status: 'flagged', problem: 'no account[id] in the delivery: it must carry AMOCRM_ACCOUNT_ID' });
    expect(d.stage).toBeUndefined();
  });

  it('the right id but no subdomain: flagged (the subdomain is checked either way)', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ id: ACCOUNT_ID }));
    expect(d.row).toEqual({ status: 'flagged', problem: 'no account[subdomain] in the delivery: it must name AMOCRM_SUBDOMAIN' });
    expect(d.stage).toBeUndefined();
  });

  it('another id: flagged', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ subdomain: SUBDOMAIN, id: 1 }));
    expect(d.row).toEqual({ status: 'flagged', problem: 'another account id: 1' });
    expect(d.stage).toBeUndefined();
  });

  it('both right: accepted and applied', async () => {
    await forgetDeal();
    const d = await deliver(rt(), hook({ subdomain: SUBDOMAIN, id: ACCOUNT_ID }));
    expect(d.row.status).toBe('applied');
    expect(d.stage).toBe(STAGE.lesson2);
  });
});

describe('AMOCRM_SUBDOMAIN unset (only AMOCRM_BASE_URL, a proxy)', () => {
  it('without AMOCRM_ACCOUNT_ID nothing names the account: every delivery is flagged, saying what to set', async () => {
    await forgetDeal();
    const d = await deliver(configured({}), hook({ subdomain: SUBDOMAIN, id: ACCOUNT_ID }));
    expect(d.row).toEqual({ status: 'flagged', problem: 'AMOCRM_SUBDOMAIN is not set: the delivery\'s account cannot be checked' });
    expect(d.stage).toBeUndefined();
  });

  it('with AMOCRM_ACCOUNT_ID the id is checked: the right one is applied, none is flagged', async () => {
    await forgetDeal();
    const right = await deliver(configured({ accountId: ACCOUNT_ID }), hook({ subdomain: 'whatever', id: ACCOUNT_ID }));
    expect(right.row.status).toBe('applied');
    await forgetDeal();
    const none = await deliver(configured({ accountId: ACCOUNT_ID }), hook({ subdomain: SUBDOMAIN }));
    expect(none.row.status).toBe('flagged');
    expect(none.stage).toBeUndefined();
  });
});
