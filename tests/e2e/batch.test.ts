// The scheduled run's batches: known deals read 250 per request and moved 50 per PATCH,
// with the same forward-only decisions as one event at a time.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runSweep } from '../../lib/sync/sweep.ts';
import { endRatePause, ratePause } from '../helpers/rate-pause.ts';
import { createStack, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s.close(); });
beforeEach(async () => {
  s.amo.resetCounts(); s.amo.clearFaults(); s.log.lines.length = 0;
  await s.t.sql(`update amocrm.sync_events set status = 'done', lease_holder = null where status <> 'done'`);
  await endRatePause(s.t.sql);
});

/** Students whose lesson 67 is done and whose deal the sync remembers. */
async function knownStudents(n: number, prefix: string, statusId: number = STAGE.lesson1) {
  const students = [];
  for (let i = 0; i < n; i++) {
    const st = await s.addStudent(`${prefix}${i}@student.kz`, { leadStatusId: statusId });
    await s.t.sql('insert into amocrm.student_leads (user_id, lead_id) values ($1, $2)', [st.userId, st.leadId]);
    students.push(st);
  }
  return students;
}
const due = () => s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where status = 'pending'`);
const sweep = () => runSweep(s.rt, { budgetMs: 25_000, reserveMs: 2_000 });

describe('batched scheduled run', () => {
  it('moves 30 known deals with one read and one PATCH per batch of 25', async () => {
    const students = await knownStudents(30, 'batch');
    for (const st of students) await s.complete(st.userId, 68);
    await due();
    const report = await sweep();
    expect(report.outcomes).toEqual({ done: 30 });
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(students.map(() => STAGE.lesson2));
    const c = s.amo.counts();
    expect([c.byRoute['GET /api/v4/leads'], c.byRoute['PATCH /api/v4/leads'], c.byRoute['GET /api/v4/contacts'] ?? 0]).toEqual([2, 2, 0]);
    expect(s.log.lines.filter((l) => /✅.*AmoCRM.*перемещена/.test(l))).toHaveLength(30);
  });

  it('keeps forward-only decisions per deal inside a batch (won, backwards, already there)', async () => {
    const [ahead] = await knownStudents(1, 'ahead', STAGE.lesson3);
    const [won] = await knownStudents(1, 'won', 142);
    const [there] = await knownStudents(1, 'there', STAGE.lesson2);
    const [fwd] = await knownStudents(1, 'fwd', STAGE.lesson1);
    for (const st of [ahead!, won!, there!, fwd!]) await s.complete(st.userId, 68);
    await due();
    const report = await sweep();
    expect(report.outcomes).toEqual({ skipped: 2, done: 2 });
    expect([ahead, won, there, fwd].map((st) => s.amo.lead(st!.leadId)!.statusId)).toEqual([STAGE.lesson3, 142, STAGE.lesson2, STAGE.lesson2]);
    expect(s.amo.counts().patches).toBe(1); // only fwd moved: a single PATCH
  });

  it('a student with two due lessons: one per batch, ending on the later stage', async () => {
    const [st] = await knownStudents(1, 'twice');
    await s.complete(st!.userId, 69);
    await s.complete(st!.userId, 68);
    await due();
    const report = await sweep();
    expect(report.outcomes.done! + (report.outcomes.skipped ?? 0)).toBe(2);
    expect(s.amo.lead(st!.leadId)!.statusId).toBe(STAGE.lesson3);
    const rows = await s.t.sql('select lesson_id, status from amocrm.sync_events where user_id = $1 order by lesson_id', [st!.userId]);
    expect(rows.map((r) => r.status).sort()).toEqual(['done', 'skipped']);
  });

  it('a batch amoCRM rejects falls back to one-by-one moves', async () => {
    const students = await knownStudents(3, 'rejected');
    for (const st of students) await s.complete(st.userId, 68);
    await due();
    s.amo.inject('PATCH /api/v4/leads', { status: 400, body: { title: 'Bad Request', status: 400, detail: 'Request validation failed' } });
    const report = await sweep();
    expect(report.outcomes).toEqual({ done: 3 });
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(students.map(() => STAGE.lesson2));
    expect(s.amo.counts().byRoute['PATCH /api/v4/leads/:id']).toBe(3);
  });

  it('a 429 on the batch read leaves every event of the batch retryable, nothing moved, and pauses every caller for amoCRM\'s 30 s', async () => {
    const students = await knownStudents(4, 'limited');
    for (const st of students) await s.complete(st.userId, 68);
    await due();
    s.amo.inject('GET /api/v4/leads', { status: 429, body: { status: 429, title: 'Too Many Requests', retry_after: 30 } });
    const report = await sweep();
    expect(report.outcomes).toEqual({ retry: 4 });
    expect(s.amo.counts().total).toBe(1); // the read, refused: the batch stopped there
    // The wait as the outcome set it (next_attempt_at and updated_at come from one statement).
    const events = () => s.t.sql(`select status, retryable, attempts, extract(epoch from next_attempt_at - updated_at)::float8 as wait
                                    from amocrm.sync_events e join auth.users u on u.id = e.user_id where u.email like 'limited%'`);
    const rows = await events();
    expect(rows).toHaveLength(4);
    for (const r of rows) {
      expect(r).toMatchObject({ status: 'failed', retryable: true, attempts: 1 });
      expect(r.wait).toBeGreaterThanOrEqual(30);
    }
    const stages = () => students.map((st) => s.amo.lead(st.leadId)!.statusId);
    expect(stages()).toEqual(students.map(() => STAGE.lesson1));
    const pause = await ratePause(s.t.sql);
    expect(pause.setMs).toBeGreaterThanOrEqual(30_000);
    expect(pause.leftMs).toBeGreaterThan(0);

    // The next scheduled run makes no amoCRM call: the events are not due yet…
    s.amo.resetCounts();
    expect((await sweep()).claimed).toBe(0);
    // …and once due, the shared pause holds them back untried (the attempt does not count).
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'failed'`);
    const paused = await sweep();
    // Each given back untried at most once (or left unclaimed): a run that re-claimed them
    // through the pause would spin on the database until its budget ran out.
    expect(paused.outcomes.deferred ?? 0, 'deferrals in one run while paused').toBeLessThanOrEqual(4);
    expect(Object.keys(paused.outcomes).filter((k) => k !== 'deferred')).toEqual([]);
    expect(s.amo.counts().total).toBe(0);
    const held = await events();
    expect(held).toHaveLength(4);
    for (const r of held) expect(r).toMatchObject({ status: expect.stringMatching(/^(pending|failed)$/), attempts: 1 });
    expect(stages()).toEqual(students.map(() => STAGE.lesson1));

    // amoCRM's time has passed: one read, one PATCH, all four moved.
    await endRatePause(s.t.sql);
    await due();
    expect((await sweep()).outcomes).toEqual({ done: 4 });
    expect(stages()).toEqual(students.map(() => STAGE.lesson2));
    expect([s.amo.counts().byRoute['GET /api/v4/leads'], s.amo.counts().patches, s.amo.counts().tooMany]).toEqual([1, 1, 0]);
  }, 60_000);
});
