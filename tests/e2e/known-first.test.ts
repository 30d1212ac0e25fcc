// A known student's lesson does not wait behind a cold backlog, and the cold backlog is not
// held back by known students' lessons. Known: the deal is remembered (a share of one read
// and one PATCH); cold: a contact search each, at amoCRM's 6 requests/s. The drainer's
// batches are small here (10 events, 5 searches) so that a backlog of a few hundred is
// many batches deep, as 10,000 events are for the production batch of 250 and 50 searches.
// Real database (PGlite, or PostgreSQL with DATABASE_URL), the amoCRM stand-in, the drainer.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runDrain, type DrainReport } from '../../lib/sync/drainer.ts';
import { createStack, STAGE, type Stack } from '../helpers/stack.ts';

const BATCH = { batchSize: 10, maxSearches: 5 };

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s?.close(); });
beforeEach(async () => {
  s.amo.resetCounts(); s.log.lines.length = 0;
  await s.t.sql(`update amocrm.sync_events set status = 'done', lease_holder = null, lease_until = null where status <> 'done'`);
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null`);
});

let seq = 0;
/** Students in amoCRM whose deal the sync has not found yet (each costs a contact search). */
async function coldStudents(n: number) {
  const list = [];
  for (let i = 0; i < n; i++) list.push(await s.addStudent(`cold.${++seq}@known-first.kz`));
  return list;
}
/** Students whose deal (at lesson 1's stage) the sync remembers. */
async function knownStudents(n: number) {
  const list = [];
  for (let i = 0; i < n; i++) list.push(await s.addStudent(`known.${++seq}@known-first.kz`, { leadStatusId: STAGE.lesson1 }));
  await s.t.sql('insert into amocrm.student_leads (user_id, lead_id) select unnest($1::uuid[]), unnest($2::bigint[])',
    [list.map((st) => st.userId), list.map((st) => st.leadId)]);
  return list;
}
/** The students complete the lesson, all in one INSERT (the trigger records one event each). */
const complete = (list: { userId: string }[], lesson: number) =>
  s.t.sql('insert into public.lesson_progress (user_id, lesson_id) select unnest($1::uuid[]), $2', [list.map((st) => st.userId), lesson]);
/** The backlog already due a minute ago: older than anything that arrives later. */
const dueSinceAMinute = (list: { userId: string }[]) =>
  s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 minute' where user_id = any($1::uuid[])`, [list.map((st) => st.userId)]);

const searchesFrom = (from: number) => s.amo.requests.slice(from).filter((r) => r.method === 'GET' && r.path === '/api/v4/contacts').length;

async function until(check: () => boolean | Promise<boolean>, what: string, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Ends a running drain: its lease taken away, it stops after the batch in hand. */
async function stopDrain(drain: Promise<DrainReport>): Promise<DrainReport> {
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null`);
  return drain;
}

describe('known students first', () => {
  it("a known student's lesson arriving behind 200 cold events is moved within the next batch, not after the backlog", async () => {
    const cold = await coldStudents(200);
    const [known] = await knownStudents(1);
    await complete(cold, 67);
    await dueSinceAMinute(cold);
    const from = s.amo.requests.length;
    const drain = runDrain(s.rt, { ...BATCH, budgetMs: 600_000, reserveMs: 1_000, lookahead: false });
    try {
      // The drain in full swing, then the known student's lesson 68.
      await until(() => searchesFrom(from) >= 3, 'the first searches');
      await complete([known!], 68);
      const committedAt = s.amo.requests.length;
      // Before: the lesson was outside the claim's window until ~170 searches had been made.
      await until(() => s.amo.lead(known!.leadId)!.statusId === STAGE.lesson2 || searchesFrom(committedAt) > 40, 'the known deal moved or 40 searches made');
      expect(s.amo.lead(known!.leadId)!.statusId).toBe(STAGE.lesson2);
      // At most the batch in hand's searches were made before it.
      expect(searchesFrom(committedAt)).toBeLessThanOrEqual(BATCH.maxSearches);
    } finally {
      await stopDrain(drain);
    }
    const waiting = await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = any($1::uuid[]) and status = 'pending'`, [cold.map((st) => st.userId)]);
    expect(waiting[0]!.n).toBeGreaterThan(100); // the known lesson did not wait for the backlog
  });

  it('the cold backlog drains completely while known students keep completing lessons', async () => {
    const cold = await coldStudents(20);
    const known = await knownStudents(300);
    await complete(cold, 67);
    await dueSinceAMinute(cold);
    const coldIds = cold.map((st) => st.userId);
    const coldLeft = async () => (await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = any($1::uuid[]) and status <> 'done'`, [coldIds]))[0]!.n;
    const knownDue = async () => (await s.t.sql(`select count(*)::int as n from amocrm.sync_events where status = 'pending' and lesson_id = 68 and next_attempt_at <= now()`))[0]!.n;
    let fed = 0;
    // A steady stream: never fewer than two batches' worth of known lessons due.
    const feed = async () => {
      const take = known.slice(fed, fed + 10);
      fed += take.length;
      if (!take.length) return;
      await complete(take, 68);
      // Due at once, as every completion is while a drainer holds the queue.
      await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where user_id = any($1::uuid[])`, [take.map((st) => st.userId)]);
    };
    await feed(); await feed();
    const drain = runDrain(s.rt, { ...BATCH, budgetMs: 600_000, reserveMs: 1_000, lookahead: false });
    try {
      await until(async () => {
        if ((await coldLeft()) === 0) return true;
        if ((await knownDue()) < 20) await feed();
        return fed >= known.length;
      }, 'the cold backlog done or the known stream used up', 120_000);
      expect(await coldLeft()).toBe(0);
      // Each batch kept room for the searches: the cold events were done within a few batches.
      expect(fed).toBeLessThan(known.length);
    } finally {
      await stopDrain(drain);
    }
    expect(cold.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(cold.map(() => STAGE.lesson1));
  });
});
