// A long amoCRM outage is not the events' fault: on a real database with the amoCRM
// stand-in down (503 to everything, or every connection reset), events are retried past
// the attempt budget that kills an event for its own failures, never go dead, are tried at
// least every 10 minutes, and are each moved once when amoCRM answers again. A failure about
// the event (a 500 on its own request while amoCRM is up) still ends dead after the budget.
// Time passing is simulated by moving next_attempt_at, never by sleeping.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runSweep } from '../../lib/sync/sweep.ts';
import { endRatePause } from '../helpers/rate-pause.ts';
import { createStack, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s.close(); });
beforeEach(async () => {
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0;
  // Each test starts from a quiet outbox: earlier tests' events are closed out.
  await s.t.sql(`update amocrm.sync_events set status = 'done', lease_holder = null, lease_until = null where status <> 'done'`);
  await endRatePause(s.t.sql);
});

const MAX_ATTEMPTS = 8; // the stack's AMOCRM_MAX_ATTEMPTS (the default)
const makeDue = (ids: number[]) =>
  s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where id = any($1::bigint[])`, [ids]);
const sweep = () => runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 });
async function events(ids: number[]) {
  return (await s.t.sql(`select id, status, attempts, retryable, last_error_code,
      extract(epoch from next_attempt_at - updated_at)::float8 as wait_s
      from amocrm.sync_events where id = any($1::bigint[]) order by id`, [ids]))
    .map((e) => ({ status: e.status as string, attempts: Number(e.attempts), retryable: e.retryable as boolean | null, waitS: Number(e.wait_s) }));
}

describe('a long amoCRM outage', () => {
  it.each([
    ['503 to everything', { status: 503 }],
    ['every connection reset', { kind: 'reset' as const }],
  ])('%s: past twice the attempt budget no event is dead, each waits at most 10 min, all move once amoCRM answers', async (_, fault) => {
    const students = await Promise.all([0, 1, 2].map((i) => s.addStudent(`outage-${'status' in fault ? fault.status : 'reset'}-${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 67));
    s.amo.inject('*', fault, 100_000);

    // Each round is the next time the events are due: the clock past every wait they set.
    for (let round = 1; round <= 2 * MAX_ATTEMPTS + 2; round++) {
      await makeDue(ids);
      const report = await sweep();
      expect(report.outcomes.dead ?? 0, `round ${round}`).toBe(0);
      for (const e of await events(ids)) {
        expect(['failed', 'pending'], `round ${round}`).toContain(e.status);
        if (e.status === 'failed') expect(e.retryable).toBe(true);
        expect(e.waitS, `round ${round}: the wait is capped`).toBeLessThanOrEqual(600.5);
      }
    }
    const during = await events(ids);
    expect(Math.max(...during.map((e) => e.attempts)), 'an event tried more often than the budget').toBeGreaterThan(2 * MAX_ATTEMPTS);
    expect(s.log.lines.filter((l) => l.includes('окончательно не обработано'))).toEqual([]);
    expect(s.amo.counts().patches).toBe(0);

    // amoCRM answers again: the next scheduled runs move every deal, once.
    s.amo.clearFaults();
    for (let run = 0; run < 5 && (await events(ids)).some((e) => e.status !== 'done'); run++) {
      await makeDue(ids);
      await sweep();
    }
    expect((await events(ids)).map((e) => e.status)).toEqual(['done', 'done', 'done']);
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual([STAGE.lesson1, STAGE.lesson1, STAGE.lesson1]);
    expect(s.amo.counts().patches).toBeLessThanOrEqual(3);
    expect(s.amo.leadEvents().filter((e) => students.some((st) => st.leadId === e.entity_id) && e.type === 'lead_status_changed')).toHaveLength(3);
  });

  it('a failure about the event (500 on its own request while amoCRM is up) still ends dead after the attempt budget', async () => {
    const st = await s.addStudent('outage-500@student.kz');
    const id = await s.complete(st.userId, 67);
    s.amo.inject('GET /api/v4/contacts', { status: 500 }, 100);
    const outcomes: string[] = [];
    for (let round = 1; round <= MAX_ATTEMPTS + 2; round++) {
      await makeDue([id]);
      const report = await sweep();
      outcomes.push(...Object.keys(report.outcomes));
    }
    expect(outcomes).toEqual([...Array(MAX_ATTEMPTS - 1).fill('retry'), 'dead']);
    expect(await events([id])).toMatchObject([{ status: 'dead', attempts: MAX_ATTEMPTS }]);
    expect(s.log.lines.filter((l) => l.includes('окончательно не обработано'))).toHaveLength(1);
  });
});
