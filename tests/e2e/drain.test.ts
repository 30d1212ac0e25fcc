// Bursts (issue 9): one drainer at a time works the queue at the shared rate; the webhook
// hands events to it instead of waiting for slots; a killed drainer is replaced once its
// lease expires; look-ahead jobs find deals at sign-up with spare capacity only.
// Real database (PGlite or PostgreSQL 15), the amoCRM stand-in, the real steps.
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../lib/config.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { BURST_BACKLOG } from '../../lib/sync/receive-lesson.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { runLookahead } from '../../lib/sync/lookahead.ts';
import { SEARCHES_IN_FLIGHT, processEvents } from '../../lib/sync/steps.ts';
import { claimDue, rememberLeads } from '../../lib/db/outbox.ts';
import { faultyDb } from '../helpers/faulty-db.ts';
import { createStack, dbWebhookBody, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
let wakeServer: Server;
let wakes: { secret: string | undefined }[] = [];
let rt: Runtime; // the stack's runtime, with the drainer's address pointing at wakeServer

beforeAll(async () => {
  s = await createStack({ lookahead: true });
  wakeServer = createServer((req, res) => {
    wakes.push({ secret: req.headers['x-webhook-secret'] as string | undefined });
    res.writeHead(202).end();
  });
  await new Promise<void>((r) => wakeServer.listen(0, '127.0.0.1', r));
  const { port } = wakeServer.address() as { port: number };
  rt = buildRuntime(loadConfig({ ...s.env, AMOCRM_DRAIN_URL: `http://127.0.0.1:${port}/.netlify/functions/amocrm-drain-background` }), s.t.db, { log: s.log });
});
afterAll(async () => {
  await new Promise((r) => wakeServer?.close(r));
  await s?.close();
});
beforeEach(async () => {
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0; wakes = [];
  await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  await s.t.sql(`update amocrm.lookahead_jobs set status = 'failed' where status in ('pending', 'processing')`);
  // Every drainer column: a test's rings and drains never decide the next test's routing.
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null, last_woken_at = null, started_at = null, ring_failed_at = null`);
});

let seq = 0;
const email = (tag: string) => `${tag}.${++seq}@drain.kz`;
const webhook = (userId: string, lesson: number, runtime = rt) =>
  handleLessonCompleted(s.webhookRequest(dbWebhookBody(userId, lesson)), async () => runtime).then((r) => r.json());
const drain = (budgetMs = 60_000) => runDrain(rt, { budgetMs, reserveMs: 1_000, lookahead: false });

describe('one drainer at a time', () => {
  it('two drainers woken together: one drains, the other finds the lease taken; each event moves once', async () => {
    const students = await Promise.all([1, 2, 3, 4, 5, 6].map(() => s.addStudent(email('pair'))));
    for (const st of students) await s.complete(st.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);
    const [a, b] = await Promise.all([drain(), drain()]);
    expect([a.ran, b.ran].sort()).toEqual([false, true]);
    expect([a, b].find((r) => !r.ran)!.stoppedBy).toBe('busy');
    expect([a, b].find((r) => r.ran)).toMatchObject({ claimed: 6, outcomes: { done: 6 }, stoppedBy: 'empty' });
    expect(s.amo.counts().patches).toBe(1); // the six moves in one PATCH
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(students.map(() => STAGE.lesson1));
    expect((await s.t.sql(`select holder from amocrm.drainer`))[0]!.holder).toBeNull();
  });

  it('a killed drainer is replaced once its lease expires, not before', async () => {
    const student = await s.addStudent(email('killed'));
    await s.complete(student.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);
    // A drainer that took the lease and died (no renewals, no end).
    await s.t.db.rpc('amocrm_begin_drain', { p_holder: 'killed-drainer', p_lease_seconds: 60 });
    expect((await drain()).stoppedBy).toBe('busy');
    expect(await s.t.db.rpc('amocrm_request_drain', {})).toEqual({ wake: false }); // nobody rings while the lease holds

    await s.t.sql(`update amocrm.drainer set lease_until = now() - interval '1 second'`);
    expect(await s.t.db.rpc('amocrm_request_drain', {})).toEqual({ wake: true });
    const report = await drain();
    expect(report).toMatchObject({ ran: true, outcomes: { done: 1 }, stoppedBy: 'empty' });
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson1);
  });

  it('a drainer that ends while an event becomes due goes on instead of stranding it', async () => {
    await s.t.db.rpc('amocrm_begin_drain', { p_holder: 'd1' });
    const student = await s.addStudent(email('late'));
    await s.complete(student.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);
    expect(await s.t.db.rpc('amocrm_end_drain', { p_holder: 'd1' })).toMatchObject({ ended: false });
    await s.t.db.rpc('amocrm_release_drain', { p_holder: 'd1' });
  });
});

describe('the webhook and the drainer', () => {
  it('while a drainer holds the queue, a webhook answers at once (no amoCRM call) and the event is due for the drainer', async () => {
    const student = await s.addStudent(email('handoff'));
    const eventId = await s.complete(student.userId, 67);
    await s.t.db.rpc('amocrm_begin_drain', { p_holder: 'busy-drainer' });
    const answer = await handleLessonCompleted(s.webhookRequest({ ...dbWebhookBody(student.userId, 67), event_id: eventId }), async () => rt);
    expect(answer.status).toBe(202);
    expect(await answer.json()).toMatchObject({ outcome: 'queued', event_id: eventId });
    expect(s.amo.counts().total).toBe(0);
    const [row] = await s.t.sql(`select status, next_attempt_at <= now() as due from amocrm.sync_events where id = $1`, [eventId]);
    expect(row).toEqual({ status: 'pending', due: true });

    await s.t.db.rpc('amocrm_release_drain', { p_holder: 'busy-drainer' });
    expect(await drain()).toMatchObject({ outcomes: { done: 1 } });
  });

  it('a lone event at idle is still moved by its own webhook, and nobody is woken', async () => {
    const student = await s.addStudent(email('lone'));
    expect(await webhook(student.userId, 67)).toMatchObject({ outcome: 'done', moved: true });
    expect(wakes).toEqual([]);
  });

  it('webhooks that cannot get a slot defer at once and wake the drainer once, with the secret', async () => {
    const students = await Promise.all([1, 2, 3].map(() => s.addStudent(email('crowd'))));
    // A queue for amoCRM far longer than a webhook's patience (1 s).
    await s.t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + interval '30 seconds'`);
    try {
      const answers = await Promise.all(students.map((st) => webhook(st.userId, 67)));
      // The first to defer rings; a webhook that routes its event after that ring hands it to
      // the rung drainer (queued). Which of them comes after the ring depends on timing.
      const outcomes = answers.map((a) => a.outcome as string);
      expect(outcomes.filter((o) => o !== 'deferred' && o !== 'queued')).toEqual([]);
      expect(outcomes).toContain('deferred');
      expect(s.amo.counts().total).toBe(0);
      expect(wakes).toEqual([{ secret: s.env.AMOCRM_WEBHOOK_SECRET }]);
      const due = await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = any($1::uuid[]) and status = 'pending'`,
        [students.map((st) => st.userId)]);
      expect(due[0]!.n).toBe(3); // all three left for the drainer, none lost
    } finally {
      await s.t.sql(`update amocrm.rate_limiter set next_free_at = now()`);
    }
  });
});

describe('a drainer that has been rung', () => {
  it('takes the webhooks\' events before its first batch: they answer queued at once, without a second ring', async () => {
    const students = await Promise.all([1, 2].map(() => s.addStudent(email('rung'))));
    expect(await s.t.db.rpc('amocrm_request_drain', {})).toEqual({ wake: true }); // the first deferral rang it
    const answers = await Promise.all(students.map((st) => handleLessonCompleted(s.webhookRequest(dbWebhookBody(st.userId, 67)), async () => rt)));
    expect(answers.map((a) => a.status)).toEqual([202, 202]);
    expect((await Promise.all(answers.map((a) => a.json()))).map((a) => a.outcome)).toEqual(['queued', 'queued']);
    expect(s.amo.counts().total).toBe(0);
    expect(wakes).toEqual([]); // rung less than 5 s ago: not rung again
    const due = await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = any($1::uuid[]) and status = 'pending' and next_attempt_at <= now()`,
      [students.map((st) => st.userId)]);
    expect(due[0]!.n).toBe(2);
    // The drainer it rang takes them.
    expect(await drain()).toMatchObject({ claimed: 2, outcomes: { done: 2 } });
  });

  it('a burst is seen by its first webhook: with five events pending and nobody draining, it rings the drainer and hands its event over', async () => {
    expect(BURST_BACKLOG).toBe(5);
    const students = await Promise.all(Array.from({ length: 5 }, () => s.addStudent(email('burst'))));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 67)); // committed; their webhooks on the way
    const answer = await handleLessonCompleted(s.webhookRequest({ ...dbWebhookBody(students[0]!.userId, 67), event_id: ids[0] }), async () => rt);
    expect(answer.status).toBe(202);
    expect(await answer.json()).toMatchObject({ outcome: 'queued', event_id: ids[0] });
    expect(wakes).toHaveLength(1);
    expect(s.amo.counts().total).toBe(0);
    // The next webhook of the burst: the drainer is rung, not rung again.
    expect(await (await handleLessonCompleted(s.webhookRequest({ ...dbWebhookBody(students[1]!.userId, 67), event_id: ids[1] }), async () => rt)).json())
      .toMatchObject({ outcome: 'queued' });
    expect(wakes).toHaveLength(1);
    expect(await drain()).toMatchObject({ claimed: 2, outcomes: { done: 2 } });
  });

  it('four pending events are not a burst: the webhook moves its own event', async () => {
    const students = await Promise.all(Array.from({ length: 4 }, () => s.addStudent(email('class'))));
    for (const st of students.slice(1)) await s.complete(st.userId, 67);
    expect(await webhook(students[0]!.userId, 67)).toMatchObject({ outcome: 'done', moved: true });
    expect(wakes).toEqual([]);
  });

  it('counts only until that drainer begins, and only for a while: then webhooks deliver their own events again', async () => {
    await s.t.db.rpc('amocrm_request_drain', {});
    await s.t.db.rpc('amocrm_begin_drain', { p_holder: 'answered' });
    await s.t.db.rpc('amocrm_release_drain', { p_holder: 'answered' }); // it began and ended: nobody is coming
    const after = await s.addStudent(email('after'));
    expect(await webhook(after.userId, 67)).toMatchObject({ outcome: 'done', moved: true });

    await s.t.sql(`update amocrm.drainer set last_woken_at = now() - interval '11 seconds', started_at = now() - interval '1 minute'`);
    const late = await s.addStudent(email('late-ring'));
    expect(await webhook(late.userId, 67)).toMatchObject({ outcome: 'done', moved: true });
  });

  it('a ring that is still unanswered after 5 s is repeated by the next webhook', async () => {
    // A drain that ran a moment ago (began before the ring) does not make the ring answered.
    await s.t.sql(`update amocrm.drainer set started_at = now() - interval '8 seconds'`);
    await s.t.db.rpc('amocrm_request_drain', {});
    await s.t.sql(`update amocrm.drainer set last_woken_at = now() - interval '6 seconds'`);
    const student = await s.addStudent(email('re-ring'));
    expect(await webhook(student.userId, 67)).toMatchObject({ outcome: 'queued' });
    expect(wakes).toHaveLength(1);
    expect(await drain()).toMatchObject({ outcomes: { done: 1 } });
  });
});

describe('a batch at the limit', () => {
  it('keeps three contact searches in flight (never more), remembers the found deals and writes every outcome in one call each', async () => {
    const students = await Promise.all(Array.from({ length: 9 }, () => s.addStudent(email('inflight'))));
    for (const st of students) await s.complete(st.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);
    const inv = rt.invocation(10_000);
    const db = faultyDb(s.t.db);
    let inFlight = 0;
    let most = 0;
    const amo = {
      ...inv.sync.amo,
      async searchContacts(...args: Parameters<typeof inv.sync.amo.searchContacts>) {
        most = Math.max(most, ++inFlight);
        try { return await inv.sync.amo.searchContacts(...args); } finally { inFlight--; }
      },
    };
    const batch = await claimDue(s.t.db, inv.holder, 50);
    expect(batch).toHaveLength(9);
    const outcomes = await processEvents({ ...inv.sync, db, amo }, batch, inv.holder);
    expect(outcomes.map((o) => o.status)).toEqual(batch.map(() => 'done'));
    expect(outcomes.map((o) => o.eventId)).toEqual(batch.map((e) => e.id)); // in the batch's order
    expect(SEARCHES_IN_FLIGHT).toBe(3);
    expect(most).toBe(3);
    expect(s.amo.counts().byRoute['GET /api/v4/contacts']).toBe(9);
    expect(s.amo.counts().patches).toBe(1);
    const calls = db.calls.map((c) => c.fn);
    expect(calls.filter((fn) => fn === 'amocrm_finish_events')).toHaveLength(1);
    expect(calls.filter((fn) => fn === 'amocrm_remember_leads')).toHaveLength(1);
    expect(calls.filter((fn) => fn === 'amocrm_finish_event' || fn === 'amocrm_remember_lead')).toEqual([]);
    const kept = await s.t.sql(`select count(*)::int as n from amocrm.student_leads where user_id = any($1::uuid[])`, [students.map((st) => st.userId)]);
    expect(kept[0]!.n).toBe(9);
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(students.map(() => STAGE.lesson1));
  });
});

describe('fairness', () => {
  it('a batch searches at most its share of unknown students; known students\' events ride along, the rest stay oldest-first', async () => {
    const unknown = await Promise.all(Array.from({ length: 5 }, () => s.addStudent(email('unknown'))));
    const known = await Promise.all(Array.from({ length: 2 }, () => s.addStudent(email('known'))));
    await rememberLeads(s.t.db, known.map((st) => ({ userId: st.userId, leadId: st.leadId })));
    // The unknown students' events are the oldest; the known students' the newest.
    for (const [i, st] of [...unknown, ...known].entries()) {
      await s.complete(st.userId, 67);
      await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - make_interval(secs => $2) where user_id = $1`, [st.userId, 100 - i]);
    }
    const claimed = await s.t.db.rpc<{ user_id: string }[]>('amocrm_claim_due', { p_holder: 'capped', p_limit: 10, p_max_unknown: 2 });
    expect(claimed.map((e) => e.user_id)).toEqual([unknown[0]!.userId, unknown[1]!.userId, known[0]!.userId, known[1]!.userId]);
    const next = await s.t.db.rpc<{ user_id: string }[]>('amocrm_claim_due', { p_holder: 'capped', p_limit: 10, p_max_unknown: 2 });
    expect(next.map((e) => e.user_id)).toEqual([unknown[2]!.userId, unknown[3]!.userId]);
    await s.t.sql(`update amocrm.sync_events set status = 'dead' where lease_holder = 'capped'`);
  });

  it('retries take at most half a batch: fresh events are never starved', async () => {
    const students = await Promise.all(Array.from({ length: 8 }, () => s.addStudent(email('fair'))));
    for (const st of students) await s.complete(st.userId, 67);
    const ids = students.map((st) => st.userId);
    // The four oldest are due retries, the four newest fresh.
    await s.t.sql(`update amocrm.sync_events set status = 'failed', retryable = true, next_attempt_at = now() - interval '1 hour'
                    where user_id = any($1::uuid[])`, [ids.slice(0, 4)]);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where user_id = any($1::uuid[]) and status = 'pending'`, [ids.slice(4)]);
    const claimed = await s.t.db.rpc<{ status: string; user_id: string }[]>('amocrm_claim_due', { p_holder: 'fair', p_limit: 4 });
    expect(claimed).toHaveLength(4);
    const retries = claimed.filter((e) => ids.slice(0, 4).includes(e.user_id));
    expect(retries).toHaveLength(2);
    await s.t.sql(`update amocrm.sync_events set status = 'dead' where lease_holder = 'fair'`);
  });
});

describe('deals found ahead of time', () => {
  it('a sign-up queues a job; the job finds and remembers the deal; the first lesson is warm (no search)', async () => {
    const student = await s.addStudent(email('ahead'));
    const [job] = await s.t.sql(`select status from amocrm.lookahead_jobs where user_id = $1`, [student.userId]);
    expect(job!.status).toBe('pending');
    const report = await runLookahead(rt);
    expect(report.found).toBeGreaterThanOrEqual(1);
    const [kept] = await s.t.sql(`select lead_id from amocrm.student_leads where user_id = $1`, [student.userId]);
    expect(Number(kept!.lead_id)).toBe(student.leadId);

    s.amo.resetCounts();
    expect(await webhook(student.userId, 67)).toMatchObject({ outcome: 'done', lead_id: student.leadId });
    expect(s.amo.counts().byRoute['GET /api/v4/contacts'] ?? 0).toBe(0);
  });

  it('a student with no deal yet at sign-up is searched again at the first lesson', async () => {
    const address = email('nodeal');
    const [user] = await s.t.sql(`insert into auth.users (email) values ($1) returning id`, [address]);
    const report = await runLookahead(rt);
    expect(report.noDeal).toBeGreaterThanOrEqual(1);
    expect(await s.t.sql(`select 1 from amocrm.student_leads where user_id = $1`, [user!.id])).toEqual([]);
    // The deal appears later (sales created it); the first lesson finds it by a search.
    s.amo.addLead({ id: 95_000_001, name: 'late deal', pipelineId: s.rt.config.pipelineId!, statusId: STAGE.incoming, updatedAt: 1_700_000_000 });
    s.amo.addContact({ id: 85_000_001, name: 'late', emails: [address], leadIds: [95_000_001] });
    s.amo.resetCounts();
    expect(await webhook(user!.id, 67)).toMatchObject({ outcome: 'done', lead_id: 95_000_001 });
    expect(s.amo.counts().byRoute['GET /api/v4/contacts']).toBe(1);
  });

  it('look-ahead jobs never take a slot while a lesson event is due: no amoCRM call, the job waits', async () => {
    const waiting = await s.addStudent(email('waiting'));
    const lesson = await s.addStudent(email('lesson'));
    await s.t.sql(`update amocrm.lookahead_jobs set status = 'failed' where user_id = $1`, [lesson.userId]);
    await s.complete(lesson.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where user_id = $1`, [lesson.userId]);
    s.amo.resetCounts();
    const report = await runLookahead(rt);
    expect(report.claimed).toBeGreaterThanOrEqual(1);
    expect(report.found).toBe(0);
    expect(report.later).toBe(report.claimed);
    expect(s.amo.counts().total).toBe(0);
    const [job] = await s.t.sql(`select status, last_error_code from amocrm.lookahead_jobs where user_id = $1`, [waiting.userId]);
    expect(job).toEqual({ status: 'pending', last_error_code: 'no_spare_capacity' });
  });

  it('a remembered deal that was closed or deleted leads to a fresh search', async () => {
    const closed = await s.addStudent(email('closed'), { leads: [{ statusId: STAGE.incoming }, { statusId: STAGE.incoming }] });
    await runLookahead(rt);
    const [kept] = await s.t.sql(`select lead_id from amocrm.student_leads where user_id = $1`, [closed.userId]);
    const remembered = Number(kept!.lead_id);
    const other = closed.leadIds.find((id) => id !== remembered)!;
    s.amo.setLeadStatus(remembered, 143); // lost: the student's open deal is the other one
    s.amo.resetCounts();
    expect(await webhook(closed.userId, 67)).toMatchObject({ outcome: 'done', lead_id: other });
    expect(s.amo.counts().byRoute['GET /api/v4/contacts']).toBe(1);
    expect(s.amo.lead(remembered)!.statusId).toBe(143);
  });

  it('look-ahead jobs left when the scheduled run\'s budget ends wake the background drainer (not when look-ahead is off)', async () => {
    await s.addStudent(email('wake-ahead'));
    const tight = () => runDrain(rt, { budgetMs: 1_000, reserveMs: 1_000 }); // out of budget at once, jobs left
    expect(await tight()).toMatchObject({ ran: true, stoppedBy: 'budget' });
    expect(wakes).toHaveLength(1);

    await s.t.sql(`update amocrm.drainer set last_woken_at = null`);
    await s.t.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
    try {
      expect(await tight()).toMatchObject({ stoppedBy: 'budget' });
      expect(wakes).toHaveLength(1);
    } finally {
      await s.t.sql(`update amocrm.system_settings set value = 'true' where key = 'lookahead_enabled'`);
    }
  });

  it('sign-ups queue nothing when look-ahead is turned off', async () => {
    await s.t.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
    try {
      const student = await s.addStudent(email('off'));
      expect(await s.t.sql(`select 1 from amocrm.lookahead_jobs where user_id = $1`, [student.userId])).toEqual([]);
    } finally {
      await s.t.sql(`update amocrm.system_settings set value = 'true' where key = 'lookahead_enabled'`);
    }
  });
});
