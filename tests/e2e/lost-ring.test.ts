// A lesson event whose webhook never comes (pg_net's request lost; pg_net does not retry)
// stays at the trigger's default, due 60 s after it was recorded. A drainer that holds the
// queue takes it once the webhook's timeout (10 s) has passed, instead of idling until
// then; an event younger than that is left to its webhook, and a webhook that comes after
// all moves nothing twice. Real database (PGlite, or PostgreSQL with DATABASE_URL), the
// amoCRM stand-in, the real drainer (its production linger of 45 s) and webhook handler.
// The rings are never sent here: no pg_net worker runs, so every ring is a lost one.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { runDrain, type DrainReport } from '../../lib/sync/drainer.ts';
import { createStack, dbWebhookBody, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s?.close(); });
beforeEach(async () => {
  s.amo.resetCounts(); s.log.lines.length = 0;
  await s.t.sql(`update amocrm.sync_events set status = 'done', lease_holder = null, lease_until = null where status <> 'done'`);
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null, last_woken_at = null, started_at = null, ring_failed_at = null`);
});

let seq = 0;
const student = () => s.addStudent(`lost-ring.${++seq}@drain.kz`);
const drain = () => runDrain(s.rt, { budgetMs: 120_000, reserveMs: 1_000, lookahead: false, lingerMs: 45_000 });
const webhook = (userId: string, lesson: number) =>
  handleLessonCompleted(s.webhookRequest(dbWebhookBody(userId, lesson)), async () => s.rt).then((r) => r.json());
/** Status changes amoCRM recorded for the deal: one per move. */
const movesOf = (leadId: number) => s.amo.leadEvents().filter((e) => e.entity_id === leadId && e.type === 'lead_status_changed').length;
/** Seconds from the event's recording to its move, as the database saw them. */
const secondsToMove = async (eventId: number) =>
  Number((await s.t.sql('select extract(epoch from done_at - created_at)::float8 as s from amocrm.sync_events where id = $1', [eventId]))[0]!.s);

async function until(check: () => boolean | Promise<boolean>, what: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The trigger's record: pending, never tried, due 60 s after it was recorded. */
async function expectAtDefault(eventId: number) {
  const [e] = await s.t.sql(`select status, attempts, next_attempt_at = created_at + interval '60 seconds' as at_default
                               from amocrm.sync_events where id = $1`, [eventId]);
  expect(e).toMatchObject({ status: 'pending', attempts: 0, at_default: true });
}

const drainHeld = async () => (await s.t.sql(`select count(*)::int as n from amocrm.drainer where key = 'drain' and lease_until >= now()`))[0]!.n === 1;

describe('an event whose webhook never comes', () => {
  it('is moved by the drainer holding the queue once the webhook timeout has passed, not 60 s after it was recorded; its late webhook moves nothing twice', async () => {
    const lost = await student();
    const lostEvent = await s.complete(lost.userId, 67);
    await expectAtDefault(lostEvent);
    // A backlog the webhooks did hand over (due at once), for the drainer to work first.
    const backlog = await Promise.all([1, 2, 3, 4, 5].map(() => student()));
    for (const st of backlog) await s.complete(st.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where user_id = any($1::uuid[])`, [backlog.map((st) => st.userId)]);

    let report: DrainReport | undefined;
    const running = drain().then((r) => { report = r; return r; });
    try {
      await until(() => backlog.every((st) => s.amo.lead(st.leadId)!.statusId === STAGE.lesson1), 'the backlog moved', 30_000);
      // Before: the drainer lingered idle (the event is due within its 45 s linger) and took
      // it only when it fell due, 60 s after it was recorded.
      await until(async () => s.amo.lead(lost.leadId)!.statusId === STAGE.lesson1 || report !== undefined,
        'the lost event moved or the drain over', 25_000);
      expect(s.amo.lead(lost.leadId)!.statusId).toBe(STAGE.lesson1);
    } finally {
      await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null`);
      await running;
    }
    const took = await secondsToMove(lostEvent);
    expect(took).toBeGreaterThanOrEqual(10); // its webhook had its timeout to come
    expect(took).toBeLessThanOrEqual(15);
    expect(report).toMatchObject({ ran: true, claimed: 6, outcomes: { done: 6 } });

    // The webhook comes after all: the event is done, nothing is sent again.
    const patches = s.amo.counts().patches;
    await webhook(lost.userId, 67);
    expect(s.amo.counts().patches).toBe(patches);
    expect(movesOf(lost.leadId)).toBe(1);
    expect((await s.event(lostEvent)).attempts).toBe(1);
  }, 60_000);

  it('younger than the webhook timeout, it is left to its webhook: the webhook hands it over and it moves once', async () => {
    const late = await student();
    const lateEvent = await s.complete(late.userId, 67);
    await expectAtDefault(lateEvent);
    const running = drain();
    try {
      await until(drainHeld, 'the drain lease taken', 10_000);
      // The drainer has looked at the queue and left the event alone: its webhook may come.
      const [{ age }] = await s.t.sql(`select extract(epoch from now() - created_at)::float8 as age from amocrm.sync_events where id = $1`, [lateEvent]) as [{ age: number }];
      await new Promise((r) => setTimeout(r, Math.max(0, Math.min(2_000, (8 - age) * 1_000))));
      await expectAtDefault(lateEvent);
      expect(s.amo.lead(late.leadId)!.statusId).toBe(STAGE.incoming);
      // The webhook comes (within its timeout): it hands the event to the drainer.
      await webhook(late.userId, 67);
      await until(() => s.amo.lead(late.leadId)!.statusId === STAGE.lesson1, 'the handed-over event moved', 20_000);
    } finally {
      await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null`);
      await running;
    }
    expect(await secondsToMove(lateEvent)).toBeLessThan(10); // moved on the webhook's word, not as a lost one
    expect(movesOf(late.leadId)).toBe(1);
    expect(s.amo.counts().patches).toBe(1);
    expect((await s.event(lateEvent)).attempts).toBe(1);
  }, 60_000);
});
