// The console's funnel view per funnel (20261208001400): two funnels in two pipelines, one
// lesson in both, events in each. Step 1 of one funnel is not step 1 of the other: each
// funnel's counts are its own events only, live and from the hourly rollup alike, with the
// steps of the version in force and the won/lost deals of its own pipeline. The expected
// figures are counted here with plain SQL, never copied from the function under test.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consoleFunnel, type FunnelCounts } from '../../lib/db/console.ts';
import { setFunnels } from '../../lib/db/funnels.ts';
import type { Funnel } from '../../lib/funnels/model.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';

const tripwire: Funnel = {
  key: 'tripwire', name: 'Tripwire', pipelineId: 7000001,
  steps: [{ lessons: [67], stageId: 70011 }, { lessons: [68], stageId: 70012 }, { lessons: [69], stageId: 70013 }],
};
// Lesson 68 is step 2 of Tripwire and step 1 of course B.
const course: Funnel = {
  key: 'course-b', name: 'Course B', pipelineId: 7000002,
  steps: [{ lessons: [68], stageId: 80011 }, { lessons: [102, 103], stageId: 80012 }],
};

let t: TestDatabase;
const users: string[] = [];
const period = () => ({ from: new Date(Date.now() - 3600_000).toISOString(), to: new Date(Date.now() + 60_000).toISOString() });
const past = () => ({ from: new Date(Date.now() - 8 * 3600_000).toISOString(), to: new Date(Date.now() - 2 * 3600_000).toISOString() });

async function addEvent(user: number, funnel: string, lesson: number, step: number, status: string, code: string | null, ago = '0 seconds') {
  await t.sql(`insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, funnel_key, status, last_error_code, created_at, next_attempt_at)
               values ($1, $2, $3, $4, $5, $6, $7, now() - $8::interval, now())`,
  [users[user], `f${user}@console.kz`, lesson, step, funnel, status, code, ago]);
}

/** The events table's own counts per funnel and step, in [from, to). */
async function expectedCounts(p: { from: string; to: string }) {
  return t.sql(`select funnel_key, stage_number::int, count(*)::int as completed, count(*) filter (where status = 'done')::int as moved,
                       count(*) filter (where status in ('failed', 'dead', 'parked'))::int as failed
                  from amocrm.sync_events where created_at >= $1 and created_at < $2 group by 1, 2 order by 1, 2`, [p.from, p.to]);
}
const countsOf = (funnels: FunnelCounts[]) => funnels.flatMap((f) => f.steps.filter((s) => s.completed > 0)
  .map((s) => ({ funnel_key: f.key, stage_number: s.stage_number, completed: s.completed, moved: s.moved, failed: s.failed })))
  .sort((a, b) => a.funnel_key.localeCompare(b.funnel_key) || a.stage_number - b.stage_number);

beforeAll(async () => {
  t = await createTestDatabase();
  for (let i = 0; i < 5; i++) {
    const [u] = await t.sql(`insert into auth.users (email) values ($1) returning id`, [`f${i}@console.kz`]);
    users.push(u!.id);
  }
  expect(await setFunnels(t.db, { funnels: [tripwire, course], changedBy: 'test', expectedVersion: 0 })).toEqual({ saved: true, version: 1 });
  // This hour: Tripwire step 1 for five, step 2 (lesson 68) for three; course B step 1
  // (lesson 68 again) for three, one of them failed; step 2 for one.
  for (const u of [0, 1, 2, 3, 4]) await addEvent(u, 'tripwire', 67, 1, u === 4 ? 'dead' : 'done', u === 4 ? 'server_error' : null);
  for (const u of [0, 1, 2]) await addEvent(u, 'tripwire', 68, 2, 'done', null);
  for (const u of [0, 1, 2]) await addEvent(u, 'course-b', 68, 1, u === 2 ? 'failed' : 'done', u === 2 ? 'contact_not_found' : null);
  await addEvent(0, 'course-b', 102, 2, 'done', null);
  // Five hours ago (a closed hour, read from the rollup): two in Tripwire step 1, one in course B step 1.
  await addEvent(0, 'tripwire', 69, 3, 'done', null, '5 hours');
  await addEvent(1, 'tripwire', 69, 3, 'skipped', 'would_move_backwards', '5 hours');
  await addEvent(3, 'course-b', 68, 1, 'done', null, '5 hours');
  await t.sql(`insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, changed_at, source)
               values (1, $1, 'won', 7000001, 142, now(), 'hook'), (2, $2, 'won', 7000002, 142, now(), 'hook'),
                      (3, $3, 'won', 7000002, 142, now(), 'hook'), (4, $1, 'lost', 7000002, 143, now(), 'hook')`, [users[0], users[1], users[2]]);
});
afterAll(async () => { await t?.close(); });

describe('the funnel view counts each funnel apart', () => {
  it('each funnel\'s steps hold its own events only, as the events table counts them', async () => {
    const funnel = await consoleFunnel(t.db, period());
    expect(funnel.funnels.map((f) => f.key)).toEqual(['tripwire', 'course-b']);
    expect(countsOf(funnel.funnels)).toEqual(await expectedCounts(period()));
    const [trip, b] = funnel.funnels;
    expect(trip!.steps.map((s) => [s.stage_number, s.completed])).toEqual([[1, 5], [2, 3], [3, 0]]);
    expect(b!.steps.map((s) => [s.stage_number, s.completed, s.moved])).toEqual([[1, 3, 2], [2, 1, 1]]);
  });

  it('each step is named from the version in force: its stage and lessons, a step nobody reached included', async () => {
    const [trip, b] = (await consoleFunnel(t.db, period())).funnels;
    expect(trip).toMatchObject({ name: 'Tripwire', pipeline_id: 7000001, configured: true });
    expect(trip!.steps.map((s) => [s.stage_id, s.lessons])).toEqual([[70011, [67]], [70012, [68]], [70013, [69]]]);
    expect(b!.steps.map((s) => [s.stage_id, s.lessons])).toEqual([[80011, [68]], [80012, [102, 103]]]);
  });

  it('stuck events and won/lost deals belong to their own funnel', async () => {
    const funnel = await consoleFunnel(t.db, period());
    const [trip, b] = funnel.funnels;
    expect(trip!.stuck).toEqual([{ stage_number: 1, status: 'dead', code: 'server_error', count: 1 }]);
    expect(b!.stuck).toEqual([{ stage_number: 1, status: 'failed', code: 'contact_not_found', count: 1 }]);
    expect([trip!.won, trip!.lost, b!.won, b!.lost]).toEqual([1, 0, 2, 1]);
    expect([funnel.won, funnel.lost]).toEqual([3, 1]);
    expect(funnel.stuck.map((s) => [s.funnel_key, s.stage_number, s.status])).toEqual(expect.arrayContaining([
      ['tripwire', 1, 'dead'], ['course-b', 1, 'failed']]));
    expect(funnel.lessons.find((l) => l.funnel_key === 'course-b' && l.stage_number === 1)).toMatchObject({ lesson_id: 68, completed: 3 });
  });

  it('a closed hour counted into the rollup keeps the funnels apart, and is counted again per funnel after a replay', async () => {
    const before = await consoleFunnel(t.db, past());
    expect(countsOf(before.funnels)).toEqual(await expectedCounts(past()));
    const [rolled] = await t.sql(`select count(distinct funnel_key)::int as n from amocrm.console_rollup where kind = 'funnel'`);
    expect(rolled!.n).toBe(2);
    const [e] = await t.sql(`select id from amocrm.sync_events where status = 'skipped'`);
    await t.sql(`update amocrm.sync_events set status = 'processing' where id = $1`, [e!.id]);
    await t.sql(`update amocrm.sync_events set status = 'done', last_error_code = null, done_at = now() where id = $1`, [e!.id]);
    const after = await consoleFunnel(t.db, past());
    expect(countsOf(after.funnels)).toEqual(await expectedCounts(past()));
    expect(after.funnels[0]!.steps[2]).toMatchObject({ stage_number: 3, completed: 2, moved: 2 });
    expect(after.funnels[1]!.steps[0]).toMatchObject({ stage_number: 1, completed: 1, moved: 1 });
  });

  it('a funnel taken out of the configuration still shows its period\'s events, marked as no longer configured', async () => {
    const [{ version }] = await t.sql(`select max(version)::int as version from amocrm.funnel_versions`) as [{ version: number }];
    expect(await setFunnels(t.db, { funnels: [tripwire], changedBy: 'test', expectedVersion: version })).toEqual({ saved: true, version: version + 1 });
    try {
      const funnel = await consoleFunnel(t.db, period());
      expect(funnel.funnels.map((f) => [f.key, f.configured])).toEqual([['tripwire', true], ['course-b', false]]);
      expect(funnel.funnels[1]!.steps.map((s) => [s.stage_number, s.completed, s.stage_id])).toEqual([[1, 3, null], [2, 1, null]]);
      expect(funnel.funnels[1]!.pipeline_id).toBeNull();
    } finally {
      // The other tests read both funnels in force.
      await setFunnels(t.db, { funnels: [tripwire, course], changedBy: 'test', expectedVersion: version + 1 });
    }
  });
});
