// The health page's "разобрано всего" (drain.drained_total): every event a drainer claimed,
// counted once. A drainer that lingers (nothing due now, but an event is due within its
// linger window) reports its running total on each pass; the total must grow by what was
// drained, not by the running total again on every pass. Real database (PGlite, or
// PostgreSQL with DATABASE_URL), the amoCRM stand-in, the real drainer and console.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { handleConsole } from '../../lib/http/console/routes.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { createStack, REPLAY_TOKEN, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => {
  s = await createStack();
});
afterAll(async () => {
  await s?.close();
});

/** What the health page shows as "разобрано всего" (its JSON twin). */
async function healthTotal(): Promise<number> {
  const res = await handleConsole(new Request('http://localhost/api/amocrm/console/health?format=json', {
    headers: { authorization: `Bearer ${REPLAY_TOKEN}`, accept: 'application/json' },
  }), async () => s.rt);
  expect(res.status).toBe(200);
  const body = await res.json() as { drain: { drained_total: number | string } };
  return Number(body.drain.drained_total);
}

let seq = 0;
async function completed(due: string): Promise<{ leadId: number }> {
  const st = await s.addStudent(`total.${++seq}@drain.kz`);
  const eventId = await s.complete(st.userId, 67);
  await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() + $2::interval where id = $1`, [eventId, due]);
  return st;
}

describe('drained total', () => {
  it('a drainer that lingers several times adds what it drained, once', async () => {
    const before = await healthTotal();
    // Two events due now; a third due in 2.5 s, inside the linger window: the drainer moves
    // the two, then lingers (a pass every second) until the third is due, and moves it.
    const students = [await completed('0 seconds'), await completed('0 seconds'), await completed('2.5 seconds')];
    const report = await runDrain(s.rt, { budgetMs: 60_000, reserveMs: 1_000, lookahead: false, lingerMs: 10_000 });
    expect(report).toMatchObject({ ran: true, claimed: 3, outcomes: { done: 3 }, stoppedBy: 'empty' });
    expect(report.elapsedMs).toBeGreaterThanOrEqual(2_000); // it did linger
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual([STAGE.lesson1, STAGE.lesson1, STAGE.lesson1]);

    expect(await healthTotal()).toBe(before + 3);
  });

  it('a drainer out of budget hands over and counts what it drained; its successor adds the rest', async () => {
    const before = await healthTotal();
    for (let i = 0; i < 5; i++) await completed('0 seconds');
    // One event per batch, and a budget that ends after half a second of work: five cold
    // events need ten requests at 6/s, so the drainer stops on its budget with work left.
    const first = await runDrain(s.rt, { budgetMs: 1_500, reserveMs: 1_000, batchSize: 1, lookahead: false });
    expect(first).toMatchObject({ ran: true, stoppedBy: 'budget' });
    expect(first.claimed).toBeGreaterThanOrEqual(1);
    expect(first.claimed).toBeLessThan(5);
    expect(await healthTotal()).toBe(before + first.claimed);
    const successor = await runDrain(s.rt, { budgetMs: 60_000, reserveMs: 1_000, lookahead: false });
    expect(successor).toMatchObject({ claimed: 5 - first.claimed, stoppedBy: 'empty' });
    expect(await healthTotal()).toBe(before + 5);
  });

  it('the next drainer adds its own count on top', async () => {
    const before = await healthTotal();
    await completed('0 seconds');
    await completed('1.5 seconds');
    const report = await runDrain(s.rt, { budgetMs: 60_000, reserveMs: 1_000, lookahead: false, lingerMs: 10_000 });
    expect(report).toMatchObject({ claimed: 2, stoppedBy: 'empty' });
    expect(await healthTotal()).toBe(before + 2);
  });
});
