// The manager's notes and tasks: exactly once per lesson event whatever fails (a POST applied
// but unanswered, an answer that never came, a killed sender, a replay, two senders at once),
// never for an event that is not done, never while a lesson event waits for a slot, and off
// unless a step asks. Real database (PGlite or PostgreSQL 15), the amoCRM stand-in, the real
// sender; the step is handed in as the funnel configuration will hand it.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { amoNotes } from '../../lib/amocrm/notes.ts';
import { createAmoHttp } from '../../lib/amocrm/http.ts';
import { claimDealNotes } from '../../lib/db/deal-notes.ts';
import type { FunnelStep } from '../../lib/funnels/model.ts';
import { queueStepNotes, sendDealNotes } from '../../lib/sync/deal-notes.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { createStack, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => {
  s = await createStack();
});
afterAll(async () => {
  await s?.close();
});
beforeEach(async () => {
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0;
  // Nothing of an earlier test is due in this one.
  await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  await s.t.sql(`update amocrm.deal_notes set status = 'failed' where status in ('pending', 'sending')`);
});

const BOTH: FunnelStep = { lessons: [67], stageId: STAGE.lesson1, note: true, task: { text: 'Позвонить: прошёл урок 1', dueMinutes: 30 } };
let seq = 0;
const email = () => `notes.${++seq}.${Date.now().toString(36)}@notes.kz`;

/** A student whose lesson 67 event is done (moved by a drain), and the event's id. */
async function doneEvent(opts: { responsible?: number } = {}) {
  const st = await s.addStudent(email());
  if (opts.responsible) s.amo.addLead({ ...s.amo.lead(st.leadId)!, responsibleUserId: opts.responsible });
  const eventId = await s.complete(st.userId, 67);
  await drainNow();
  expect((await s.event(eventId)).status).toBe('done');
  return { ...st, eventId };
}
const drainNow = async () => {
  await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status in ('pending', 'failed')`);
  return runDrain(s.rt, { budgetMs: 60_000, reserveMs: 1_000, lookahead: false });
};
const queue = (eventId: number, step: FunnelStep | undefined = BOTH, stepNumber = 1) => queueStepNotes(s.t.db, [{ eventId, step, stepNumber }]);
/** Rows put off are due again now: the next round is the retry. */
const dueNow = () => s.t.sql(`update amocrm.deal_notes set next_attempt_at = now() where status = 'pending'`);
const rowsOf = (eventId: number) => s.t.sql(`select kind, status, uncertain, attempts, amo_id, text from amocrm.deal_notes where event_id = $1 order by kind`, [eventId]);
const posts = () => {
  const c = s.amo.counts().byRoute;
  return { notes: c['POST /api/v4/leads/notes'] ?? 0, tasks: c['POST /api/v4/tasks'] ?? 0 };
};

describe('off unless a step asks', () => {
  it('a step without note or task queues nothing and sends nothing', async () => {
    const { eventId } = await doneEvent();
    expect(await queue(eventId, { lessons: [67], stageId: STAGE.lesson1 })).toBe(0);
    expect(await queue(eventId, { lessons: [67], stageId: STAGE.lesson1, note: false, task: null })).toBe(0);
    expect(await queueStepNotes(s.t.db, [{ eventId, step: undefined, stepNumber: 1 }])).toBe(0);
    s.amo.resetCounts();
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 0 });
    expect(s.amo.counts().total).toBe(0);
    expect(await rowsOf(eventId)).toEqual([]);
  });
});

describe('a note and a task, once per event', () => {
  it('the note names the lesson and its time in the academy time zone; the task goes to the deal\'s manager, due in N minutes', async () => {
    const { eventId, leadId } = await doneEvent({ responsible: 504141 });
    const [e] = await s.t.sql(`select to_char(created_at at time zone 'Asia/Almaty', 'DD.MM HH24:MI') as at from amocrm.sync_events where id = $1`, [eventId]);
    const before = Math.floor(Date.now() / 1000);
    expect(await queue(eventId)).toBe(2);
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 2, done: 2 });
    expect(s.amo.notes(leadId).map((n) => n.text)).toEqual([`Студент прошёл урок 1 «Урок 1. Что умеет AI» ${e!.at}`]);
    const [task] = s.amo.tasks(leadId);
    expect(task).toMatchObject({ text: 'Позвонить: прошёл урок 1', responsibleUserId: 504141, taskTypeId: 1 });
    expect(task!.completeTill).toBeGreaterThanOrEqual(before + 30 * 60 - 5);
    expect(task!.completeTill).toBeLessThanOrEqual(Math.floor(Date.now() / 1000) + 30 * 60 + 5);
    expect(s.log.lines.filter((l) => l.includes('для менеджера добавлена'))).toHaveLength(2);
    // Every later round, and a replay queueing the event again, add nothing.
    expect(await queue(eventId)).toBe(0);
    await dueNow();
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 0 });
    expect([s.amo.notes(leadId).length, s.amo.tasks(leadId).length]).toEqual([1, 1]);
  });

  it('a configured time zone is used', async () => {
    await s.t.sql(`insert into amocrm.system_settings (key, value) values ('academy_time_zone', '"Europe/Moscow"') on conflict (key) do update set value = excluded.value`);
    try {
      const { eventId, leadId } = await doneEvent();
      const [e] = await s.t.sql(`select to_char(created_at at time zone 'Europe/Moscow', 'DD.MM HH24:MI') as at from amocrm.sync_events where id = $1`, [eventId]);
      await queue(eventId, { ...BOTH, task: null }, 2);
      await sendDealNotes(s.rt);
      expect(s.amo.notes(leadId).map((n) => n.text)).toEqual([`Студент прошёл урок 2 «Урок 1. Что умеет AI» ${e!.at}`]);
    } finally {
      await s.t.sql(`delete from amocrm.system_settings where key = 'academy_time_zone'`);
    }
  });

  it('not due before its event is done; an event that ends skipped never gets one', async () => {
    const st = await s.addStudent(email());
    const eventId = await s.complete(st.userId, 67);
    await queue(eventId); // queued with the move, before the outcome is written
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 0 });
    await drainNow(); // moves it, then sends its note and task once nothing else is due
    expect([s.amo.notes(st.leadId).length, s.amo.tasks(st.leadId).length]).toEqual([1, 1]);

    const closed = await s.addStudent(email());
    s.amo.managerWin(closed.leadId);
    const skippedId = await s.complete(closed.userId, 67);
    await queue(skippedId);
    await drainNow();
    expect((await s.event(skippedId)).status).toBe('skipped');
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 0 });
    expect([s.amo.notes(closed.leadId).length, s.amo.tasks(closed.leadId).length]).toEqual([0, 0]);
  });
});

describe('exactly once under failures', () => {
  it('a POST amoCRM applied but whose answer was lost: the deal is read, the note found, nothing sent twice', async () => {
    const { eventId, leadId } = await doneEvent();
    await queue(eventId);
    s.amo.inject('POST /api/v4/leads/notes', { kind: 'after', status: 504 });
    s.amo.inject('POST /api/v4/tasks', { kind: 'after', status: 502 });
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 2, later: 2 });
    expect((await rowsOf(eventId)).map((r) => [r.kind, r.status, r.uncertain])).toEqual([['note', 'pending', true], ['task', 'pending', true]]);
    await dueNow();
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 2, done: 2 });
    expect(posts()).toEqual({ notes: 1, tasks: 1 });
    expect([s.amo.notes(leadId).length, s.amo.tasks(leadId).length]).toEqual([1, 1]);
    expect((await rowsOf(eventId)).map((r) => [r.status, Number(r.amo_id)])).toEqual([
      ['done', s.amo.notes(leadId)[0]!.id], ['done', s.amo.tasks(leadId)[0]!.id],
    ]);
  });

  it('a POST that timed out and was applied later is found, not repeated', async () => {
    const { eventId, leadId } = await doneEvent();
    await queue(eventId, { ...BOTH, task: null });
    s.amo.inject('POST /api/v4/leads/notes', { kind: 'late', applyAfterMs: 0 });
    expect(await sendDealNotes(s.rt)).toMatchObject({ later: 1 });
    await dueNow();
    expect(await sendDealNotes(s.rt)).toMatchObject({ done: 1 });
    expect(s.amo.notes(leadId)).toHaveLength(1);
    expect(posts().notes).toBe(1);
  });

  it('a POST that failed without being applied is checked, then sent once', async () => {
    const { eventId, leadId } = await doneEvent();
    await queue(eventId);
    s.amo.inject('POST /api/v4/leads/notes', { status: 503 });
    await sendDealNotes(s.rt); // the note's request failed; the task's, a request of its own, went through
    await dueNow();
    await sendDealNotes(s.rt);
    expect([s.amo.notes(leadId).length, s.amo.tasks(leadId).length]).toEqual([1, 1]);
    expect(s.amo.counts().byRoute['GET /api/v4/leads/notes']).toBe(1); // the uncertain note was looked for first
  });

  it('a killed sender: once its claim expires the next one reads the deal first (sent before it died: found; not sent: sent)', async () => {
    const a = await doneEvent();
    const b = await doneEvent();
    await queue(a.eventId, { ...BOTH, task: null });
    await queue(b.eventId, { ...BOTH, task: null });
    const claimed = await claimDealNotes(s.t.db, 'killed-drainer', 10);
    expect(claimed.map((r) => r.event_id).sort()).toEqual([a.eventId, b.eventId].sort());
    // It had sent a's note, then died before recording anything.
    const inv = s.rt.invocation(1_000);
    const http = createAmoHttp(s.rt.transport, { current: () => inv.tokens.current(), afterUnauthorized: (u) => inv.tokens.afterUnauthorized(u) }, { acquire: async () => {}, rateLimited: async () => {} });
    const row = claimed.find((r) => r.event_id === a.eventId)!;
    await amoNotes(http).addNotes([{ requestId: 'x', leadId: row.lead_id, text: row.text }]);
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 0 }); // its claim still holds
    await s.t.sql(`update amocrm.deal_notes set lease_until = now() - interval '1 second' where lease_holder = 'killed-drainer'`);
    // The next sender takes both; on a loaded machine a spare slot may be refused and the
    // row put off for a moment, so it is asked again until both are settled.
    const first = await sendDealNotes(s.rt);
    expect(first.claimed).toBe(2);
    let done = first.done;
    for (let round = 0; done < 2 && round < 10; round++) {
      await dueNow();
      done += (await sendDealNotes(s.rt)).done;
    }
    expect(done).toBe(2);
    expect([s.amo.notes(a.leadId).length, s.amo.notes(b.leadId).length]).toEqual([1, 1]);
    expect(posts().notes).toBe(2); // the killed one's, and b's
  });

  it('two senders at once: each row is claimed by one of them', async () => {
    const events = [await doneEvent(), await doneEvent(), await doneEvent()];
    for (const e of events) await queue(e.eventId);
    const reports = await Promise.all([sendDealNotes(s.rt), sendDealNotes(s.rt)]);
    expect(reports[0]!.claimed + reports[1]!.claimed).toBe(6);
    for (const e of events) expect([s.amo.notes(e.leadId).length, s.amo.tasks(e.leadId).length]).toEqual([1, 1]);
  });

  it('a deal deleted in amoCRM fails alone; its batch neighbours are sent once', async () => {
    const gone = await doneEvent();
    const kept = await doneEvent();
    await queue(gone.eventId, { ...BOTH, task: null });
    await queue(kept.eventId, { ...BOTH, task: null });
    s.amo.managerDelete(gone.leadId);
    await sendDealNotes(s.rt);
    await dueNow();
    await sendDealNotes(s.rt);
    expect((await rowsOf(gone.eventId)).map((r) => r.status)).toEqual(['failed']);
    expect((await rowsOf(kept.eventId)).map((r) => r.status)).toEqual(['done']);
    expect(s.amo.notes(kept.leadId)).toHaveLength(1);
    expect(s.log.lines.some((l) => l.startsWith('❌') && l.includes(`не добавлена в сделку ${gone.leadId}`))).toBe(true);
  });
});

describe('after the moves', () => {
  it('while a lesson event is due, no note takes a slot: the rows are given back untried', async () => {
    const { eventId, leadId } = await doneEvent();
    await queue(eventId);
    const waiting = await s.addStudent(email());
    await s.complete(waiting.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);
    s.amo.resetCounts();
    expect(await sendDealNotes(s.rt)).toMatchObject({ claimed: 2, waitingForSlot: 2 });
    expect(s.amo.counts().total).toBe(0);
    expect((await rowsOf(eventId)).map((r) => [r.status, r.attempts])).toEqual([['pending', 0], ['pending', 0]]);
    await drainNow();
    await dueNow();
    await sendDealNotes(s.rt); // the drain may have sent them already
    expect([s.amo.notes(leadId).length, s.amo.tasks(leadId).length]).toEqual([1, 1]);
  });
});

describe('in the drain', () => {
  it('a burst\'s moves go first: every PATCH is sent before any note or task, though notes were due before the burst', async () => {
    const earlier = [await doneEvent(), await doneEvent()];
    for (const e of earlier) await queue(e.eventId);
    const burst = await Promise.all(Array.from({ length: 12 }, () => s.addStudent(email())));
    for (const st of burst) await s.complete(st.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);
    s.amo.resetCounts();
    const report = await runDrain(s.rt, { budgetMs: 60_000, reserveMs: 1_000, lookahead: false, batchSize: 4 });
    expect(report.outcomes).toMatchObject({ done: 12 });
    const order = s.amo.requests.map((r) => `${r.method} ${r.path}`);
    const lastPatch = order.map((r, i) => (r.startsWith('PATCH /api/v4/leads') ? i : -1)).reduce((a, b) => Math.max(a, b));
    expect(order.filter((r) => r.startsWith('PATCH')).length).toBe(3); // 12 moves in batches of 4
    expect(order.some((r) => r === 'POST /api/v4/leads/notes')).toBe(true);
    expect(order.findIndex((r) => r === 'POST /api/v4/leads/notes')).toBeGreaterThan(lastPatch);
    expect(order.findIndex((r) => r === 'POST /api/v4/tasks')).toBeGreaterThan(lastPatch);
    for (const e of earlier) expect([s.amo.notes(e.leadId).length, s.amo.tasks(e.leadId).length]).toEqual([1, 1]);
  });
});
