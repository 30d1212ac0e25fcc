// Exactly once, whatever the hook's shape (issue item 2). amoCRM sends some status hooks in
// a short form: id, status_id, pipeline_id, old_status_id, old_pipeline_id and nothing about
// when. Each closure (won, lost) and each stage change must reach amocrm.deal_changes once,
// under any number of redeliveries under new request ids, in any order, and the mirror must
// end on amoCRM's current state. The bodies are the ones the stand-in sends in that form;
// the real handler and SQL on a real database (PGlite, or PostgreSQL with DATABASE_URL).
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleCrmEvents } from '../../lib/http/crm-events.ts';
import { applyPendingDeliveries } from '../../lib/mirror/apply.ts';
import { reconcileFeed } from '../../lib/mirror/feed.ts';
import { usingPostgres } from '../helpers/db.ts';
import { createStack, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

const HOOK_SECRET = 'hook-secret-exactly-once-0123456789';
const SUBDOMAIN = 'standin'; // the stand-in's account

/** amoCRM's clock (ms): moves only by hand, so every change has its own second. */
let amoNow = Date.now();
let s: Stack;
beforeAll(async () => {
  // The clock only moves by hand, so 7 requests per second would count a whole test as one second.
  s = await createStack({ standin: { now: () => amoNow, ratePerSecond: 1000 }, env: { AMOCRM_HOOK_SECRET: HOOK_SECRET, AMOCRM_SUBDOMAIN: SUBDOMAIN } });
  // The platform's own reaction, as the README shows it: grant the full course when a deal is won.
  await s.t.sql(`create table public.course_grants (user_id uuid, lead_id bigint, granted_at timestamptz default now())`);
  await s.t.sql(`create function public.grant_full_course() returns trigger language plpgsql as $$
    begin
      insert into public.course_grants (user_id, lead_id) values (new.user_id, new.lead_id);
      return null;
    end $$`);
  await s.t.sql(`create trigger grant_full_course after insert on amocrm.deal_changes
      for each row when (new.kind = 'won') execute function public.grant_full_course()`);
  // Hooks are captured, not sent: each test posts them itself, as often and in the order it wants.
  s.amo.subscribe('http://127.0.0.1:9/captured', ['status_lead']);
  s.amo.setHookForm('short');
  s.amo.hooksOff();
});
afterAll(async () => { await s?.close(); });
beforeEach(() => { s.amo.clearFaults(); s.amo.resetCounts(); s.log.lines.length = 0; });

let requestSeq = 0;
/** One delivery under a fresh request id (amoCRM's retries carry new ids); applied after the answer, as in production. */
async function deliver(body: string, { applyAfter = true } = {}) {
  const after: Promise<unknown>[] = [];
  const res = await handleCrmEvents(new Request(`http://localhost/api/amocrm/crm-events/${HOOK_SECRET}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'user-agent': 'amoCRM-Webhooks/3.0', 'x-amocrm-requestid': `retry-${++requestSeq}` },
    body,
  }), async () => s.rt, { params: { secret: HOOK_SECRET }, waitUntil: applyAfter ? (p) => after.push(p) : undefined });
  expect(res.status).toBe(200);
  const answer = await res.json();
  expect(answer).toMatchObject({ status: 'pending', duplicate: false });
  await Promise.all(after);
  return answer.delivery_id as number;
}

/** What amoCRM sends for a manager's change: the short status form, without a modification time. */
async function shortHookOf(change: () => void): Promise<string> {
  const from = s.amo.hookAttempts.length;
  change();
  await s.amo.hooksSettled();
  const sent = s.amo.hookAttempts.slice(from).filter((a) => a.action === 'status');
  expect(sent).toHaveLength(1);
  expect(sent[0]!.body).not.toMatch(/last_modified|updated_at/);
  return sent[0]!.body;
}

/**
 * Time passes. amoCRM's clock moves forward; the database's cannot be moved, so what the
 * mirror recorded moves back instead (as the other tests age rows with now() - interval).
 */
async function elapse(seconds: number) {
  amoNow += seconds * 1000;
  await s.t.sql(`update amocrm.deals set modified_at = modified_at - make_interval(secs => $1)`, [seconds]);
  await s.t.sql(`update amocrm.deal_stage_history set changed_at = changed_at - make_interval(secs => $1)`, [seconds]);
  await s.t.sql(`update amocrm.deal_changes set changed_at = changed_at - make_interval(secs => $1)`, [seconds]);
}

async function knownStudent(email: string) {
  const st = await s.addStudent(email, { leadStatusId: STAGE.lesson3 });
  await s.t.sql(`insert into amocrm.student_leads (user_id, lead_id) values ($1, $2)`, [st.userId, st.leadId]);
  return st;
}
const changes = (leadId: number) => s.t.sql(`select kind, status_id::int from amocrm.deal_changes where lead_id = $1 order by id`, [leadId]);
const grants = (leadId: number) => s.t.sql(`select user_id from public.course_grants where lead_id = $1`, [leadId]);
/** The mirror's state of the deal, and amoCRM's. */
async function mirrorAndAmo(leadId: number) {
  const [m] = await s.t.sql(`select pipeline_id::int, status_id::int from amocrm.deals where lead_id = $1`, [leadId]);
  const lead = s.amo.lead(leadId)!;
  return { mirror: m, amo: { pipeline_id: lead.pipelineId, status_id: lead.statusId } };
}

describe('a short-form hook (no modification time) redelivered under a new request id', () => {
  it('a won deal reaches deal_changes once, the course is granted once', async () => {
    const st = await knownStudent('won-twice@exactly-once.kz');
    amoNow += 1000;
    const won = await shortHookOf(() => s.amo.managerWin(st.leadId));
    await deliver(won);
    await elapse(10); // amoCRM retries later (more than the 5 s a duplicate is looked for)
    await deliver(won);
    await elapse(3600);
    await deliver(won);

    expect(await changes(st.leadId)).toEqual([{ kind: 'won', status_id: 142 }]);
    expect(await grants(st.leadId)).toEqual([{ user_id: st.userId }]);
    const { mirror, amo } = await mirrorAndAmo(st.leadId);
    expect(mirror).toEqual(amo);
  });

  it('a stage change reaches deal_changes once', async () => {
    const st = await knownStudent('moved-twice@exactly-once.kz');
    amoNow += 1000;
    const moved = await shortHookOf(() => s.amo.managerMove(st.leadId, { statusId: STAGE.paid }));
    await deliver(moved);
    await elapse(10);
    await deliver(moved);

    expect(await changes(st.leadId)).toEqual([{ kind: 'stage_changed', status_id: STAGE.paid }]);
    const { mirror, amo } = await mirrorAndAmo(st.leadId);
    expect(mirror).toEqual(amo);
  });

  it('a won deal edited later (amoCRM\'s updated_at moves on) still reaches deal_changes once', async () => {
    const st = await knownStudent('edited@exactly-once.kz');
    amoNow += 1000;
    const won = await shortHookOf(() => s.amo.managerWin(st.leadId));
    await deliver(won);
    await elapse(60);
    s.amo.managerMove(st.leadId, { statusId: 142 }); // an edit: the stage stays, updated_at moves
    await deliver(won);

    expect(await changes(st.leadId)).toEqual([{ kind: 'won', status_id: 142 }]);
    expect(await grants(st.leadId)).toHaveLength(1);
  });

  it('a lost deal reaches deal_changes once, also when both deliveries are applied together', async () => {
    const st = await knownStudent('lost-twice@exactly-once.kz');
    amoNow += 1000;
    const lost = await shortHookOf(() => s.amo.managerLose(st.leadId));
    await deliver(lost);
    await deliver(lost);
    await elapse(10);
    await deliver(lost);
    await applyPendingDeliveries(s.rt);

    expect(await changes(st.leadId)).toEqual([{ kind: 'lost', status_id: 143 }]);
  });
});

describe('two short-form hooks applied in reverse order', () => {
  it('leave the mirror on amoCRM\'s newer state, and the won deal reaches deal_changes once', async () => {
    const st = await knownStudent('reversed@exactly-once.kz');
    amoNow += 1000;
    const paid = await shortHookOf(() => s.amo.managerMove(st.leadId, { statusId: STAGE.paid }));
    amoNow += 10_000;
    const won = await shortHookOf(() => s.amo.managerWin(st.leadId));
    await deliver(won);
    await deliver(paid); // the older one arrives last

    const { mirror, amo } = await mirrorAndAmo(st.leadId);
    expect(amo).toEqual({ pipeline_id: PIPELINE, status_id: 142 });
    expect(mirror).toEqual(amo);
    expect((await changes(st.leadId)).filter((c) => c.kind === 'won')).toHaveLength(1);
    expect(await grants(st.leadId)).toHaveLength(1);
  });
});

describe('when the deal cannot be read from amoCRM', () => {
  it('the endpoint answers without calling amoCRM; the delivery waits, never applied with a guessed time, then applies once', async () => {
    const st = await knownStudent('unreadable@exactly-once.kz');
    amoNow += 1000;
    const won = await shortHookOf(() => s.amo.managerWin(st.leadId));
    s.amo.resetCounts();
    const id = await deliver(won, { applyAfter: false }); // no waitUntil: only the answer
    expect(s.amo.counts().total).toBe(0);

    s.amo.inject('GET /api/v4/leads', { status: 503 }, 10);
    await applyPendingDeliveries(s.rt);
    const [row] = await s.t.sql(`select status from amocrm.crm_deliveries where id = $1`, [id]);
    expect(row!.status).toBe('pending');
    expect(await changes(st.leadId)).toEqual([]);
    expect(await s.t.sql(`select 1 from amocrm.deal_stage_history where lead_id = $1`, [st.leadId])).toEqual([]);
    expect(s.log.lines.some((l) => l.startsWith('⚠️ [AmoCRM] Хуки amoCRM без времени изменения отложены'))).toBe(true);

    // amoCRM answers again; the claim of the failed read has run out; the scheduled run applies it.
    s.amo.clearFaults();
    await s.t.sql(`update amocrm.crm_deliveries set resolve_until = now() - interval '1 second' where id = $1`, [id]);
    await elapse(600);
    await applyPendingDeliveries(s.rt);
    const [applied] = await s.t.sql(`select status from amocrm.crm_deliveries where id = $1`, [id]);
    expect(applied!.status).toBe('applied');
    expect(await changes(st.leadId)).toEqual([{ kind: 'won', status_id: 142 }]);
    const [deal] = await s.t.sql(`select extract(epoch from modified_at)::bigint as at from amocrm.deals where lead_id = $1`, [st.leadId]);
    expect(Number(deal!.at)).toBe(s.amo.lead(st.leadId)!.updatedAt); // amoCRM's time, not the moment applied
  });

  it('a deal amoCRM no longer returns: the change is skipped, the delivery does not wait forever', async () => {
    const id = await deliver(`leads%5Bstatus%5D%5B0%5D%5Bid%5D=88000001&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=${PIPELINE}&account%5Bsubdomain%5D=${SUBDOMAIN}`);
    const [row] = await s.t.sql(`select status from amocrm.crm_deliveries where id = $1`, [id]);
    expect(row!.status).toBe('applied');
    expect(await changes(88_000_001)).toEqual([]);
  });
});

describe('short-form hooks and the events feed', () => {
  it('whichever comes first, a won deal reaches deal_changes once', async () => {
    amoNow = Date.now(); // the feed reads up to the real now
    const feedFirst = await knownStudent('feed-first@exactly-once.kz');
    const hookFirst = await knownStudent('hook-first@exactly-once.kz');
    const wonA = await shortHookOf(() => s.amo.managerWin(feedFirst.leadId));
    const wonB = await shortHookOf(() => s.amo.managerWin(hookFirst.leadId));
    await deliver(wonB);
    await reconcileFeed(s.rt);
    await deliver(wonA);
    await deliver(wonA);
    await deliver(wonB);
    await reconcileFeed(s.rt);

    for (const [st, source] of [[feedFirst, 'feed'], [hookFirst, 'hook']] as const) {
      expect(await s.t.sql(`select kind, source from amocrm.deal_changes where lead_id = $1`, [st.leadId])).toEqual([{ kind: 'won', source }]);
      expect(await grants(st.leadId)).toHaveLength(1);
    }
  });
});

describe.runIf(usingPostgres)('several appliers at once (PostgreSQL)', () => {
  it('redeliveries applied in parallel: one won row, one grant, the mirror on amoCRM\'s state', async () => {
    const st = await knownStudent('parallel@exactly-once.kz');
    amoNow += 1000;
    const won = await shortHookOf(() => s.amo.managerWin(st.leadId));
    for (let i = 0; i < 6; i++) await deliver(won, { applyAfter: false });
    const runtimes = await Promise.all(Array.from({ length: 4 }, async () => s.runtimeOver(await s.t.newDb(2))));
    await Promise.all(runtimes.map((rt) => applyPendingDeliveries(rt)));

    expect(await changes(st.leadId)).toEqual([{ kind: 'won', status_id: 142 }]);
    expect(await grants(st.leadId)).toHaveLength(1);
    const { mirror, amo } = await mirrorAndAmo(st.leadId);
    expect(mirror).toEqual(amo);
    expect(await s.t.sql(`select count(*)::int as n from amocrm.crm_deliveries where status = 'pending'`)).toEqual([{ n: 0 }]);
  });
});
