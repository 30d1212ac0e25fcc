// The reverse direction (issue 10): amoCRM's hooks reach the endpoint, are recorded,
// answered at once and applied to the deal mirror in amoCRM's order; the platform's own
// trigger on amocrm.deal_changes hears each change exactly once. Real database (PGlite or
// PostgreSQL 15), the real handler and SQL; the deliveries are the form bodies amoCRM sends.
import qs from 'qs';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleCrmEvents } from '../../lib/http/crm-events.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { applyPendingDeliveries } from '../../lib/mirror/apply.ts';
import { reconcileFeed } from '../../lib/mirror/feed.ts';
import { usingPostgres } from '../helpers/db.ts';
import { createStack, dbWebhookBody, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

const HOOK_SECRET = 'hook-secret-0123456789abcdef0123';
const SUBDOMAIN = 'onaiacademy';

let s: Stack;
beforeAll(async () => {
  s = await createStack({ env: { AMOCRM_HOOK_SECRET: HOOK_SECRET, AMOCRM_SUBDOMAIN: SUBDOMAIN } });
  // The platform's own reaction, as the README shows it: grant the full course when a deal is won.
  await s.t.sql(`create table public.course_grants (user_id uuid, lead_id bigint, granted_at timestamptz default now())`);
  await s.t.sql(`create function public.grant_full_course() returns trigger language plpgsql as $$
    begin
      insert into public.course_grants (user_id, lead_id) values (new.user_id, new.lead_id);
      return null;
    end $$`);
  await s.t.sql(`create trigger grant_full_course after insert on amocrm.deal_changes
      for each row when (new.kind = 'won') execute function public.grant_full_course()`);
});
afterAll(async () => { await s?.close(); });
beforeEach(() => { s.amo.resetCounts(); s.log.lines.length = 0; });

let requestSeq = 0;
/** A status hook as amoCRM sends it: bracketed keys, v2 names, unix seconds. */
function statusHook(change: { id: number; status_id: number; pipeline_id?: number; old_pipeline_id?: number; old_status_id?: number; last_modified: number }, extra: Record<string, unknown> = {}) {
  return qs.stringify({
    leads: { status: [{ pipeline_id: PIPELINE, old_pipeline_id: PIPELINE, modified_user_id: 555, ...change }] },
    account: { subdomain: SUBDOMAIN, id: 29_000_000 },
    ...extra,
  });
}
const post = (body: string, { secret = HOOK_SECRET, requestId = `req-${++requestSeq}`, waitUntil }: { secret?: string; requestId?: string; waitUntil?: (p: Promise<unknown>) => void } = {}) =>
  handleCrmEvents(new Request(`http://localhost/api/amocrm/crm-events/${secret}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'user-agent': 'amoCRM-Webhooks/3.0', 'x-amocrm-requestid': requestId },
    body,
  }), async () => s.rt, { params: { secret }, waitUntil });

const history = (leadId: number) => s.t.sql(`select status_id::int, old_status_id::int, source from amocrm.deal_stage_history where lead_id = $1 order by id`, [leadId]);
const changes = (leadId: number) => s.t.sql(`select kind, status_id::int from amocrm.deal_changes where lead_id = $1 order by id`, [leadId]);
const grants = (leadId: number) => s.t.sql(`select user_id from public.course_grants where lead_id = $1`, [leadId]);
async function knownStudent(email: string) {
  const st = await s.addStudent(email, { leadStatusId: STAGE.lesson3 });
  await s.t.sql(`insert into amocrm.student_leads (user_id, lead_id) values ($1, $2)`, [st.userId, st.leadId]);
  return st;
}

describe('a hook moves the mirror', () => {
  it('is recorded and answered 200 at once; applied after the answer; the platform hears a won deal', async () => {
    const st = await knownStudent('won@mirror.kz');
    const after: Promise<unknown>[] = [];
    const res = await post(statusHook({ id: st.leadId, status_id: 142, old_status_id: STAGE.lesson3, last_modified: 1_800_000_000 }), { waitUntil: (p) => after.push(p) });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, status: 'pending' });
    expect(after).toHaveLength(1); // the work is handed to waitUntil, not done before answering
    await Promise.all(after);

    expect(await s.t.db.rpc('amocrm_student_deal', { p_user_id: st.userId })).toMatchObject({
      lead_id: st.leadId, mirrored: true, pipeline_id: PIPELINE, status_id: 142, closed: 'won', deleted: false, modified_by: 555,
    });
    expect(await history(st.leadId)).toEqual([{ status_id: 142, old_status_id: STAGE.lesson3, source: 'hook' }]);
    expect(await grants(st.leadId)).toEqual([{ user_id: st.userId }]);
    expect(s.log.lines.some((l) => /✅ \[AmoCRM\] Сделка \d+ выиграна в amoCRM/.test(l))).toBe(true);
  });

  it('duplicates and retries change nothing: one history row, one grant', async () => {
    const st = await knownStudent('dup@mirror.kz');
    const body = statusHook({ id: st.leadId, status_id: 142, old_status_id: STAGE.lesson3, last_modified: 1_800_000_100 });
    await post(body, { requestId: 'same-request' });
    const retry = await post(body, { requestId: 'same-request' });
    expect(await retry.json()).toMatchObject({ duplicate: true });
    await post(body); // the same change under another request id
    await applyPendingDeliveries(s.rt);
    await applyPendingDeliveries(s.rt);
    expect(await history(st.leadId)).toHaveLength(1);
    expect(await grants(st.leadId)).toHaveLength(1);
  });

  it('a delivery older than what the mirror holds never overwrites it (order by amoCRM time)', async () => {
    const st = await knownStudent('order@mirror.kz');
    await post(statusHook({ id: st.leadId, status_id: STAGE.paid, old_status_id: STAGE.lesson3, last_modified: 1_800_000_300 }));
    await post(statusHook({ id: st.leadId, status_id: STAGE.lesson3, old_status_id: STAGE.lesson2, last_modified: 1_800_000_200 }));
    await applyPendingDeliveries(s.rt);
    expect(await s.t.db.rpc('amocrm_student_deal', { p_user_id: st.userId })).toMatchObject({ status_id: STAGE.paid });
    expect((await history(st.leadId)).map((h) => h.status_id).sort()).toEqual([STAGE.lesson3, STAGE.paid].sort());
    // The older change still happened: the platform hears of it once, after the newer one.
    expect(await changes(st.leadId)).toEqual([{ kind: 'stage_changed', status_id: STAGE.paid }, { kind: 'stage_changed', status_id: STAGE.lesson3 }]);
  });

  it('a deleted deal is marked, not forgotten, and the student\'s remembered deal follows', async () => {
    const st = await knownStudent('deleted@mirror.kz');
    await post(statusHook({ id: st.leadId, status_id: STAGE.paid, old_status_id: STAGE.lesson3, last_modified: 1_800_000_400 }));
    await post(qs.stringify({ leads: { delete: [{ id: st.leadId }] }, account: { subdomain: SUBDOMAIN } }));
    await applyPendingDeliveries(s.rt);
    const [deal] = await s.t.sql(`select deleted, status_id::int from amocrm.deals where lead_id = $1`, [st.leadId]);
    expect(deal).toEqual({ deleted: true, status_id: STAGE.paid });
    expect(await s.t.sql(`select 1 from amocrm.student_leads where user_id = $1`, [st.userId])).toEqual([]);
    expect((await changes(st.leadId)).map((c) => c.kind)).toEqual(['stage_changed', 'deleted']);
  });

  it('deals that do not matter (another pipeline, no known student) are not mirrored', async () => {
    await post(statusHook({ id: 77_000_001, status_id: 9, pipeline_id: 999, old_pipeline_id: 999, old_status_id: 8, last_modified: 1_800_000_500 }));
    await applyPendingDeliveries(s.rt);
    expect(await s.t.sql(`select 1 from amocrm.deals where lead_id = 77000001`)).toEqual([]);
  });
});

describe('the platform\'s trigger', () => {
  it('a trigger that raises flags its own delivery and never blocks the others', async () => {
    const bad = await knownStudent('raises@mirror.kz');
    const good = await knownStudent('fine@mirror.kz');
    await s.t.sql(`create function public.picky() returns trigger language plpgsql as $$
      begin if new.lead_id = ${bad.leadId} then raise exception 'platform says no'; end if; return null; end $$`);
    await s.t.sql(`create trigger picky after insert on amocrm.deal_changes for each row execute function public.picky()`);
    try {
      const first = await (await post(statusHook({ id: bad.leadId, status_id: STAGE.paid, old_status_id: STAGE.lesson3, last_modified: 1_800_000_900 }))).json();
      await post(statusHook({ id: good.leadId, status_id: STAGE.paid, old_status_id: STAGE.lesson3, last_modified: 1_800_000_901 }));
      await applyPendingDeliveries(s.rt);
      const [flagged] = await s.t.sql(`select status, problem from amocrm.crm_deliveries where id = $1`, [first.delivery_id]);
      expect(flagged).toEqual({ status: 'flagged', problem: expect.stringMatching(/platform says no/) });
      expect(await s.t.db.rpc('amocrm_student_deal', { p_user_id: good.userId })).toMatchObject({ status_id: STAGE.paid });
    } finally {
      await s.t.sql(`drop trigger picky on amocrm.deal_changes`);
    }
  });
});

describe('nothing missed for long: the events feed', () => {
  it('with the hooks switched off, the feed fills in a won deal; the late hook adds nothing', async () => {
    const st = await knownStudent('feed@mirror.kz');
    s.amo.hooksOff();
    s.amo.managerWin(st.leadId);
    expect(await grants(st.leadId)).toEqual([]);

    const report = await reconcileFeed(s.rt);
    expect(report.changed).toBeGreaterThanOrEqual(1);
    expect(await s.t.db.rpc('amocrm_student_deal', { p_user_id: st.userId })).toMatchObject({ status_id: 142, closed: 'won' });
    expect(await history(st.leadId)).toEqual([{ status_id: 142, old_status_id: STAGE.lesson3, source: 'feed' }]);
    expect(await grants(st.leadId)).toHaveLength(1);

    // The hook that went missing turns up after all (amoCRM retries): recorded once.
    const lead = s.amo.lead(st.leadId)!;
    await post(statusHook({ id: st.leadId, status_id: 142, old_status_id: STAGE.lesson3, last_modified: lead.updatedAt }));
    await applyPendingDeliveries(s.rt);
    expect(await history(st.leadId)).toHaveLength(1);
    expect(await grants(st.leadId)).toHaveLength(1);
    // A second read of the feed over the same window changes nothing either.
    expect((await reconcileFeed(s.rt)).changed).toBe(0);
    s.amo.hooksOn();
  });
});

describe('the forward sync and the mirror', () => {
  it('a remembered deal the mirror knows is won is skipped without spending a read', async () => {
    const st = await knownStudent('skip@mirror.kz');
    await post(statusHook({ id: st.leadId, status_id: 142, old_status_id: STAGE.lesson3, last_modified: 1_800_000_600 }));
    await applyPendingDeliveries(s.rt);
    s.amo.resetCounts();
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(st.userId, 69)), async () => s.rt);
    expect(await res.json()).toMatchObject({ outcome: 'skipped', code: 'deal_closed' });
    expect(s.amo.counts().total).toBe(0);
  });

  it('the sync\'s own move comes back as a hook and only updates the mirror', async () => {
    const st = await s.addStudent('own@mirror.kz');
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(st.userId, 67)), async () => s.rt);
    expect(await res.json()).toMatchObject({ outcome: 'done' });
    const [event] = await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = $1`, [st.userId]);
    await post(statusHook({ id: st.leadId, status_id: STAGE.lesson1, old_status_id: STAGE.incoming, last_modified: Math.floor(Date.now() / 1000) }));
    await applyPendingDeliveries(s.rt);
    expect(await s.t.db.rpc('amocrm_student_deal', { p_user_id: st.userId })).toMatchObject({ status_id: STAGE.lesson1 });
    const [after] = await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = $1`, [st.userId]);
    expect(after!.n).toBe(event!.n); // nothing started
  });
});

describe('authenticity', () => {
  it('an unknown secret gets 404 and records nothing', async () => {
    const before = await s.t.sql(`select count(*)::int as n from amocrm.crm_deliveries`);
    const res = await post(statusHook({ id: 1, status_id: 142, last_modified: 1 }), { secret: 'wrong-secret-0123456789abcdef0123' });
    expect(res.status).toBe(404);
    expect(await s.t.sql(`select count(*)::int as n from amocrm.crm_deliveries`)).toEqual(before);
  });

  it('another account is kept, flagged for an operator and answered 200 (the hook stays enabled)', async () => {
    const res = await post(qs.stringify({ leads: { status: [{ id: 5, status_id: 142, pipeline_id: PIPELINE }] }, account: { subdomain: 'someoneelse' } }));
    expect(res.status).toBe(200);
    const { delivery_id: id, status } = await res.json();
    expect(status).toBe('flagged');
    const [row] = await s.t.sql(`select status, problem from amocrm.crm_deliveries where id = $1`, [id]);
    expect(row!.problem).toMatch(/another account/);
  });
});

describe.runIf(usingPostgres)('two deliveries of one change at once (PostgreSQL)', () => {
  it('record it once: one history row, one grant', async () => {
    const st = await knownStudent('parallel@mirror.kz');
    const db = await s.t.newDb(8);
    const change = { lead_id: st.leadId, action: 'status', pipeline_id: PIPELINE, status_id: 142, old_pipeline_id: PIPELINE, old_status_id: STAGE.lesson3, modified_at: 1_800_000_700 };
    await Promise.all(Array.from({ length: 8 }, () => db.rpc('amocrm_apply_changes', { p_changes: [change], p_source: 'hook', p_pipeline_id: PIPELINE })));
    expect(await history(st.leadId)).toHaveLength(1);
    expect(await grants(st.leadId)).toHaveLength(1);
  });
});
