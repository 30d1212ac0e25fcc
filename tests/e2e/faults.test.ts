// The fault matrix: the real database (PGlite, or PostgreSQL 15 with DATABASE_URL), the
// live amoCRM stand-in with injected faults, the real handlers, sweep and replay. Each case
// asserts the final state of every event involved and of every deal, the PATCH calls the
// stand-in applied, and the moves the sync sent per deal (a batch PATCH counts once in the
// stand-in, so moves are also counted per deal on the way out): a lost event, a double
// move or a broken chain fails. Time passing is simulated by moving next_attempt_at (and by
// ending the shared 429 pause), never by sleeping.
import type { AddressInfo, Socket } from 'node:net';
import type { Server } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startFunctionServer } from '../../dev/server.ts';
import { startPgNetWorker } from '../../dev/pgnet-worker.ts';
import { axiosTransport, type Transport } from '../../lib/amocrm/http.ts';
import { loadConfig } from '../../lib/config.ts';
import type { Db } from '../../lib/db/port.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { buildRuntime, installRuntime, type Runtime } from '../../lib/runtime.ts';
import { deliverEvent } from '../../lib/sync/process-event.ts';
import { runReplay } from '../../lib/sync/replay.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { usingPostgres } from '../helpers/db.ts';
import { faultyDb, gate } from '../helpers/faulty-db.ts';
import { endRatePause, ratePause } from '../helpers/rate-pause.ts';
import { createStack, dbWebhookBody, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
let rt: Runtime;

/** Deal ids of every move the sync sent (single PATCH or one item of a batch PATCH), applied or not. */
const movesOut: number[] = [];
const recordingMoves = (inner: Transport): Transport => ({
  send(req, bearer) {
    if (req.method === 'PATCH') {
      const items = Array.isArray(req.body) ? (req.body as { id: number }[]) : [{ id: Number(req.path.split('/').pop()) }];
      for (const item of items) movesOut.push(Number(item.id));
    }
    return inner.send(req, bearer);
  },
});
/** Like s.runtimeOver, with the moves recorded (and, optionally, a transport of the test's own). */
function runtimeOver(db: Db, transport?: Transport): Runtime {
  const config = loadConfig(s.env);
  return buildRuntime(config, db, { log: s.log, transport: recordingMoves(transport ?? axiosTransport(config.amocrm.baseUrl, config.amocrm.timeoutMs)) });
}
/** { dealId: moves sent } */
const movesSent = () => movesOut.reduce<Record<number, number>>((m, id) => ({ ...m, [id]: (m[id] ?? 0) + 1 }), {});
const once = (...leadIds: number[]) => Object.fromEntries(leadIds.map((id) => [id, 1]));

// One database and stand-in for the file; every test uses its own students. 1 s amoCRM
// timeout so the timeout cases stay fast.
beforeAll(async () => {
  s = await createStack({ env: { AMOCRM_TIMEOUT_MS: '1000' } });
  rt = runtimeOver(s.t.db);
});
afterAll(async () => { await s.close(); });
beforeEach(async () => {
  // Earlier tests' open events are closed out (they were asserted there), so they cannot
  // be claimed by this test's sweeps or resumed by its token store. Fresh tokens, no faults.
  await s.t.sql(`update amocrm.sync_events set status = 'done', lease_holder = null, lease_until = null
                  where status in ('pending', 'processing', 'parked') or (status = 'failed' and retryable)`);
  await s.t.sql(`delete from amocrm.system_settings where key in ('webhook_url', 'webhook_secret')`);
  await s.storeTokens();
  await endRatePause(s.t.sql); // a 429 an earlier test provoked (and asserted) paused every caller
  s.amo.reset();
  s.amo.resetCounts();
  s.log.lines.length = 0;
  movesOut.length = 0;
});

const webhook = (on: Runtime, req: Request) => handleLessonCompleted(req, async () => on);
/** The trigger's delivery (or a dashboard webhook) of an already recorded event: one request. */
const deliverOnce = (userId: string, lesson: number, eventId: number, on: Runtime = rt) =>
  webhook(on, s.webhookRequest({ ...dbWebhookBody(userId, lesson), event_id: eventId }));
/**
 * The delivery as the cases below need it: the webhook waits at most 1 s for a rate slot, and
 * on a loaded machine may give the event back untried (202 deferred no_rate_slot: no attempt
 * counted, what it learned kept) for the drainer to take. That is delivered again here, as
 * the drainer would, so each case sees the outcome of the fault it injects.
 */
async function deliver(userId: string, lesson: number, eventId: number, on: Runtime = rt): Promise<Response> {
  for (let tries = 1; ; tries++) {
    const res = await deliverOnce(userId, lesson, eventId, on);
    const body = await res.clone().json().catch(() => ({}));
    if (body.outcome !== 'deferred' || body.code !== 'no_rate_slot' || tries === 10) return res;
  }
}
const sweep = (on: Runtime = rt) => runSweep(on, { budgetMs: 20_000, reserveMs: 2_000 });
const makeDue = (ids: number[]) =>
  s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where id = any($1::bigint[])`, [ids]);
const replayRequest = (over: Record<string, unknown>) => ({ limit: 50, dryRun: false, force: false, afterId: 0, ...over }) as Parameters<typeof runReplay>[1];

/**
 * The event as the assertions need it; waitS is the wait its last outcome set (next_attempt_at
 * and updated_at come from the same statement), so however long the test takes to look, the
 * figure does not shrink.
 */
async function ev(id: number) {
  const [e] = await s.t.sql(`select status, attempts, retryable, last_error_code,
      extract(epoch from next_attempt_at - updated_at)::float8 as wait_s from amocrm.sync_events where id = $1`, [id]);
  return { status: e!.status as string, attempts: Number(e!.attempts), retryable: e!.retryable as boolean | null, code: e!.last_error_code as string | null, waitS: Number(e!.wait_s) };
}
const stage = (leadId: number) => s.amo.lead(leadId)!.statusId;
/** PATCH requests the stand-in applied (a batch PATCH counts once). */
const patches = () => s.amo.counts().patches;
const route = (key: string) => s.amo.counts().byRoute[key] ?? 0;
const alerts = () => s.log.lines.filter((l) => /❌.*AmoCRM/.test(l));
const lines = (text: string) => s.log.lines.filter((l) => l.includes(text));

async function tokenRow() {
  const [row] = await s.t.sql(`select version, value->>'auth_state' as auth_state from amocrm.system_settings where key = 'amocrm_tokens'`);
  return { version: Number(row!.version), authState: row!.auth_state as string };
}

/** What `npm run amocrm -- exchange-code` ends with: a fresh pair stored, parked events resumed. */
async function exchangeCode(): Promise<number> {
  const pair = s.amo.issueTokens();
  const stored = await s.t.db.rpc<{ resumed_events: number }>('amocrm_store_tokens', {
    p_kind: 'oauth', p_access_token: pair.access_token, p_refresh_token: pair.refresh_token, p_expires_at: new Date(Date.now() + pair.expires_in * 1000),
  });
  return stored.resumed_events;
}

async function until(check: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The real function modules served on a port this test holds from start to end (bound as port
 * 0, so no other process can take it between "down" and "up"). While `down`, every connection
 * is cut before a byte is read: pg_net gets no answer at all, as from a function that is down.
 */
async function switchableFunctionServer() {
  installRuntime(rt);
  const { server, url } = await startFunctionServer(0);
  const state = { down: true };
  server.prependListener('connection', (socket: Socket) => { if (state.down) socket.destroy(); });
  return { server, url, port: (server.address() as AddressInfo).port, state };
}

async function closeServer(server: Server) {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

async function setWebhook(url: string) {
  await s.t.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb($1::text)), ('webhook_secret', to_jsonb($2::text))
                 on conflict (key) do update set value = excluded.value`, [url, s.env.AMOCRM_WEBHOOK_SECRET]);
}

const responses = async () => (await s.t.sql('select count(*)::int as n from net._http_response'))[0]!.n as number;

describe('1. the webhook function unreachable for a while', () => {
  it('deliveries fail, events stay pending; when it comes back the scheduled run moves every deal exactly once', async () => {
    const fn = await switchableFunctionServer();
    try {
      await setWebhook(`http://127.0.0.1:${fn.port}/api/amocrm/lesson-completed`);
      const students = await Promise.all([0, 1, 2].map((i) => s.addStudent(`down${i}@student.kz`)));
      const lessons = [67, 68, 69];
      const ids: number[] = [];
      for (const [i, st] of students.entries()) ids.push(await s.complete(st.userId, lessons[i]!));
      const before = await responses();

      const down = startPgNetWorker((text, params) => s.t.sql(text, params));
      try {
        await until(async () => (await responses()) >= before + 3, 'pg_net to give up on 3 deliveries');
      } finally {
        await down.stop();
      }
      const failedDeliveries = await s.t.sql('select status_code, error_msg from net._http_response order by id desc limit 3');
      expect(failedDeliveries).toHaveLength(3);
      for (const r of failedDeliveries) expect([r.status_code, typeof r.error_msg === 'string' && r.error_msg.length > 0]).toEqual([null, true]);
      expect(await responses()).toBe(before + 3); // pg_net never retries
      for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'pending', attempts: 0, code: null });
      expect(s.amo.counts().total).toBe(0);
      expect(students.map((st) => stage(st.leadId))).toEqual([STAGE.incoming, STAGE.incoming, STAGE.incoming]);

      // It comes back: the real function modules answer on the same port.
      fn.state.down = false;
      const up = startPgNetWorker((text, params) => s.t.sql(text, params));
      try {
        const scheduled = async () => (await fetch(`${fn.url}/.netlify/functions/amocrm-sweep`, { method: 'POST' })).json();
        // Their webhook is not coming again: the scheduled function (served on the restored
        // port) delivers them, at the latest when they fall due (makeDue stands for that;
        // once the webhook's timeout has passed a drain may take them sooner: lost-ring.test.ts).
        await makeDue(ids);
        expect(await scheduled()).toMatchObject({ ok: true, claimed: 3, outcomes: { done: 3 } });
        expect(await scheduled()).toMatchObject({ ok: true, claimed: 0 });

        // A completion after the recovery is delivered by the webhook itself.
        const late = await s.addStudent('down-late@student.kz');
        const lateId = await s.complete(late.userId, 67);
        await until(async () => (await ev(lateId)).status === 'done', 'the restored webhook to deliver');
        await until(async () => (await responses()) >= before + 4, 'pg_net to record the answer');
        const [okDelivery] = await s.t.sql('select status_code, content from net._http_response order by id desc limit 1');
        expect(okDelivery!.status_code).toBe(200);
        expect(JSON.parse(okDelivery!.content)).toMatchObject({ event_id: lateId, outcome: 'done', moved: true });

        for (const id of [...ids, lateId]) expect(await ev(id)).toMatchObject({ status: 'done', attempts: 1, code: null });
        expect(students.map((st) => stage(st.leadId))).toEqual([STAGE.lesson1, STAGE.lesson2, STAGE.lesson3]);
        expect(stage(late.leadId)).toBe(STAGE.lesson1);
        expect(movesSent()).toEqual(once(...students.map((st) => st.leadId), late.leadId));
        expect(patches()).toBeGreaterThanOrEqual(2); // the webhook's own PATCH + the scheduled run's (batched)
        expect(patches()).toBeLessThanOrEqual(4);
      } finally {
        await up.stop();
      }
    } finally {
      await closeServer(fn.server);
    }
  });
});

describe('2. amoCRM timing out', () => {
  it('a timeout on the contact search is retryable `timeout`; the scheduled run finishes it', async () => {
    const st = await s.addStudent('slow-search@student.kz');
    const id = await s.complete(st.userId, 67);
    s.amo.inject('GET /api/v4/contacts', { kind: 'timeout' });
    const res = await deliver(st.userId, 67, id);
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ outcome: 'retry', code: 'timeout' });
    const failed = await ev(id);
    expect(failed).toMatchObject({ status: 'failed', retryable: true, attempts: 1, code: 'timeout' });
    expect(failed.waitS).toBeGreaterThan(10);
    expect(stage(st.leadId)).toBe(STAGE.incoming);

    await makeDue([id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson1);
    expect([patches(), movesSent()]).toEqual([1, once(st.leadId)]);
  });

  it('a timeout on the PATCH (not applied) is retried and the deal moves once', async () => {
    const st = await s.addStudent('slow-patch@student.kz');
    const id = await s.complete(st.userId, 68);
    s.amo.inject('PATCH /api/v4/leads/:id', { kind: 'timeout' });
    const res = await deliver(st.userId, 68, id);
    expect(await res.json()).toMatchObject({ outcome: 'retry', code: 'timeout' });
    expect(await ev(id)).toMatchObject({ status: 'failed', retryable: true, attempts: 1, code: 'timeout' });
    expect(stage(st.leadId)).toBe(STAGE.incoming);
    expect(patches()).toBe(0);

    await makeDue([id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson2);
    expect([patches(), movesSent()]).toEqual([1, { [st.leadId]: 2 }]); // sent twice, applied once
  });

  it('a PATCH applied whose answer is lost (504): the retry finds the deal in the stage and records done, no second PATCH', async () => {
    const st = await s.addStudent('lost-answer@student.kz');
    const id = await s.complete(st.userId, 67);
    s.amo.inject('PATCH /api/v4/leads/:id', { kind: 'after', status: 504 });
    const res = await deliver(st.userId, 67, id);
    expect(await res.json()).toMatchObject({ outcome: 'retry', code: 'server_error' });
    expect(await ev(id)).toMatchObject({ status: 'failed', retryable: true, attempts: 1, code: 'server_error' });
    expect(stage(st.leadId)).toBe(STAGE.lesson1); // amoCRM did it
    expect(patches()).toBe(1);

    await makeDue([id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson1);
    expect([patches(), movesSent()]).toEqual([1, once(st.leadId)]);
    expect(lines('уже на этапе')).toHaveLength(1);
  });
  it('the scheduled run\'s batch PATCH applied but its answer lost (504): every event retried, found in the stage, none moved twice', async () => {
    const students = await Promise.all([0, 1, 2].map((i) => s.addStudent(`lost-batch${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 67));
    // Whichever way the run sends the moves (one batch PATCH or one per deal), the first is applied and its answer lost.
    s.amo.inject('PATCH /api/v4/leads', { kind: 'after', status: 504 });
    s.amo.inject('PATCH /api/v4/leads/:id', { kind: 'after', status: 504 });
    await makeDue(ids);
    const first = await sweep();
    expect(first.outcomes.retry ?? 0).toBeGreaterThanOrEqual(1);
    const moved = students.filter((st) => stage(st.leadId) === STAGE.lesson1).length;
    expect(moved).toBeGreaterThanOrEqual(1); // amoCRM applied what the lost answer was about
    for (const id of ids) expect(['failed', 'done']).toContain((await ev(id)).status);
    s.amo.clearFaults();
    await makeDue(ids);
    await sweep();
    for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'done', code: null });
    expect(students.map((st) => stage(st.leadId))).toEqual(students.map(() => STAGE.lesson1));
    expect(movesSent()).toEqual(once(...students.map((st) => st.leadId)));
  });
});

describe('3. amoCRM 5xx', () => {
  it.each([500, 502, 503])('%i three times: retryable with growing next_attempt_at, then done', async (status) => {
    const st = await s.addStudent(`http${status}@student.kz`);
    const id = await s.complete(st.userId, 69);
    const waits: number[] = [];
    for (let attempt = 1; attempt <= 3; attempt++) {
      s.amo.inject('GET /api/v4/contacts', { status });
      await makeDue([id]);
      expect((await sweep()).outcomes).toEqual({ retry: 1 });
      const e = await ev(id);
      expect(e).toMatchObject({ status: 'failed', retryable: true, attempts: attempt, code: 'server_error' });
      waits.push(e.waitS);
    }
    // Backoff 30 s · 2^(n-1) with 50–100 % jitter: 15–30 s, 30–60 s, 60–120 s.
    expect(waits[0]).toBeGreaterThanOrEqual(14);
    expect(waits[1]).toBeGreaterThanOrEqual(waits[0]!);
    expect(waits[2]).toBeGreaterThan(waits[0]!);
    expect(waits[2]).toBeGreaterThanOrEqual(59);
    expect((await sweep()).claimed).toBe(0); // not due yet: no hot loop
    expect(route('GET /api/v4/contacts')).toBe(3);

    await makeDue([id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 4, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson3);
    expect([patches(), movesSent()]).toEqual([1, once(st.leadId)]);
    expect(lines('Повтор запланирован')).toHaveLength(3);
  });
});

describe('4. amoCRM 429', () => {
  it('Retry-After header and retry_after body (90 s) are honoured by the event and by the shared pause; without either, a real backoff; all done after recovery', async () => {
    const cases = [
      { name: 'none', fault: { status: 429, body: { title: 'Too Many Requests', status: 429 } } },
      { name: 'header', fault: { status: 429, headers: { 'retry-after': '90' } } },
      { name: 'body', fault: { status: 429, body: { title: 'Too Many Requests', status: 429, retry_after: 90 } } },
    ];
    const students = await Promise.all(cases.map((c) => s.addStudent(`busy-${c.name}@student.kz`)));
    const ids: number[] = [];
    const reportedBefore = (await ratePause(s.t.sql)).reported;
    for (const [i, c] of cases.entries()) {
      await endRatePause(s.t.sql); // each case meets an unpaused limiter (the previous case's pause has "passed")
      const id = await s.complete(students[i]!.userId, 67);
      ids.push(id);
      s.amo.inject('GET /api/v4/contacts', c.fault);
      const res = await deliver(students[i]!.userId, 67, id);
      expect(res.status).toBe(202);
      expect(await ev(id)).toMatchObject({ status: 'failed', retryable: true, attempts: 1, code: 'rate_limited' });
      const pause = await ratePause(s.t.sql);
      expect(pause.reported).toBe(reportedBefore + i + 1); // every 429 reaches the shared limiter
      expect(pause.rateFactor).toBeLessThan(1);
      // Every instance paused for the 90 s amoCRM asked, or for at least a second when it did not say.
      if (c.name === 'none') {
        expect(pause.setMs).toBeGreaterThanOrEqual(1000);
        expect(pause.setMs).toBeLessThan(90_000);
      } else {
        expect(pause.setMs).toBeGreaterThanOrEqual(90_000);
        expect(pause.leftMs).toBeGreaterThan(0);
      }
    }
    const [none, header, body] = await Promise.all(ids.map(ev));
    expect(header!.waitS).toBeGreaterThanOrEqual(90);
    expect(body!.waitS).toBeGreaterThanOrEqual(90);
    expect(none!.waitS).toBeGreaterThanOrEqual(10);
    expect(none!.waitS).toBeLessThan(90);
    expect(route('GET /api/v4/contacts')).toBe(3); // one request each, no retry inside the function
    expect(students.map((st) => stage(st.leadId))).toEqual([STAGE.incoming, STAGE.incoming, STAGE.incoming]);
    expect((await sweep()).claimed).toBe(0); // nobody is due before amoCRM's time

    // While the pause lasts, another instance sends nothing: a new completion is deferred untried.
    const other = await s.addStudent('busy-other@student.kz');
    const otherId = await s.complete(other.userId, 67);
    const deferred = await deliverOnce(other.userId, 67, otherId);
    expect(deferred.status).toBe(202);
    expect(await deferred.json()).toMatchObject({ outcome: 'deferred', code: 'no_rate_slot' });
    expect(await ev(otherId)).toMatchObject({ status: 'pending', attempts: 0 });
    expect(s.amo.counts().total).toBe(3);

    // amoCRM's time has passed: everything is delivered.
    await endRatePause(s.t.sql);
    await makeDue([...ids, otherId]);
    expect((await sweep()).outcomes).toEqual({ done: 4 });
    for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(await ev(otherId)).toMatchObject({ status: 'done', attempts: 1, code: null });
    expect([...students, other].map((st) => stage(st.leadId))).toEqual([STAGE.lesson1, STAGE.lesson1, STAGE.lesson1, STAGE.lesson1]);
    expect(movesSent()).toEqual(once(...[...students, other].map((st) => st.leadId)));
    expect(patches()).toBeGreaterThanOrEqual(1);
    expect(patches()).toBeLessThanOrEqual(4);
    expect(s.amo.counts().tooMany).toBe(3); // only the injected ones: the recovery stayed within amoCRM's limit
  });

  it('a burst answered with 429 is not hammered: the first 429 pauses every instance, at most one request per event per attempt', async () => {
    const students = await Promise.all(Array.from({ length: 6 }, (_, i) => s.addStudent(`burst${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 68));
    s.amo.inject('GET /api/v4/contacts', { status: 429, headers: { 'retry-after': '1' }, body: { status: 429, title: 'Too Many Requests', retry_after: 1 } }, 1000);
    const reportedBefore = (await ratePause(s.t.sql)).reported;

    // The burst arrives as six webhooks at once. Those that got their request out before the
    // first 429 was reported each asked once; the others meet the shared pause: within their
    // patience they wait it out and ask once, beyond it they defer without asking.
    const answers = await Promise.all(students.map((st, i) => deliverOnce(st.userId, 68, ids[i]!)));
    expect(answers.map((r) => r.status)).toEqual(ids.map(() => 202));
    const first = s.amo.counts();
    expect(first.total).toBeGreaterThanOrEqual(1);
    expect(first.total).toBeLessThanOrEqual(6);
    expect(first).toMatchObject({ tooMany: first.total, patches: 0 });
    expect(route('GET /api/v4/contacts')).toBe(first.total);
    const afterBurst = await Promise.all(ids.map(ev));
    const limited = afterBurst.filter((e) => e.code === 'rate_limited');
    const untried = afterBurst.filter((e) => e.status === 'pending');
    expect(limited.length + untried.length).toBe(6);
    expect(limited).toHaveLength(first.total); // one request per event that asked
    for (const e of limited) {
      expect(e).toMatchObject({ status: 'failed', retryable: true, attempts: 1 });
      expect(e.waitS).toBeGreaterThanOrEqual(10); // a real backoff, not the 1 s amoCRM asked for
    }
    for (const e of untried) expect(e.attempts).toBe(0);
    expect((await ratePause(s.t.sql)).reported).toBe(reportedBefore + first.total);

    // A scheduled run while a (longer) pause is in force sends nothing at all.
    await s.t.sql(`update amocrm.rate_limiter set paused_until = clock_timestamp() + interval '60 seconds',
                                              next_free_at = greatest(next_free_at, clock_timestamp() + interval '60 seconds')`);
    await makeDue(ids);
    const paused = await sweep();
    // No event tried; each given back untried at most once (or left unclaimed): a run that
    // re-claimed them through the pause would spin on the database until its budget ran out.
    expect(paused.outcomes.deferred ?? 0, 'deferrals in one run while paused').toBeLessThanOrEqual(6);
    expect(Object.keys(paused.outcomes).filter((k) => k !== 'deferred')).toEqual([]);
    expect(s.amo.counts().total).toBe(first.total);
    expect((await Promise.all(ids.map(ev))).map((e) => e.attempts)).toEqual(afterBurst.map((e) => e.attempts)); // no attempt spent

    // Due once the pause is over, while amoCRM still answers 429: the run asks once, is
    // refused, and stops calling; the rest go back to the queue untried.
    await endRatePause(s.t.sql);
    await makeDue(ids);
    const second = await sweep();
    const sent = s.amo.counts().total - first.total;
    expect(sent).toBe(1);
    expect(second.outcomes).toEqual({ retry: 1, deferred: 5 });
    expect(s.amo.counts().tooMany).toBe(s.amo.counts().total);

    s.amo.clearFaults();
    await endRatePause(s.t.sql);
    await makeDue(ids);
    expect((await sweep()).outcomes).toEqual({ done: 6 });
    for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'done', code: null });
    expect(students.map((st) => stage(st.leadId))).toEqual(students.map(() => STAGE.lesson2));
    expect(movesSent()).toEqual(once(...students.map((st) => st.leadId)));
    expect(s.amo.counts().tooMany).toBe(first.total + 1); // recovery did not trip amoCRM's own limit
  }, 60_000);
});

describe('5. 204 on the contact search', () => {
  it('fails permanently (contact_not_found), the sweep does not retry it, a replay completes it once the contact exists', async () => {
    // a: amoCRM answers 204 although the contact exists (injected); b: the contact really is missing.
    const a = await s.addStudent('nocontact-a@student.kz');
    const bEmail = 'nocontact-b@student.kz';
    const [bUser] = await s.t.sql('insert into auth.users (email) values ($1) returning id', [bEmail]);
    const bLead = 97_000_001;
    s.amo.addLead({ id: bLead, name: 'Deal b', pipelineId: PIPELINE, statusId: STAGE.incoming, updatedAt: 1_700_000_000 });
    const idA = await s.complete(a.userId, 67);
    const idB = await s.complete(bUser!.id, 68);

    s.amo.inject('GET /api/v4/contacts', { status: 204 });
    for (const [userId, lesson, id] of [[a.userId, 67, idA], [bUser!.id, 68, idB]] as const) {
      const res = await deliver(userId, lesson, id);
      expect(res.status).toBe(422);
      expect(await res.json()).toMatchObject({ outcome: 'failed', code: 'contact_not_found' });
      expect(await ev(id)).toMatchObject({ status: 'failed', retryable: false, attempts: 1, code: 'contact_not_found' });
    }
    expect(alerts()).toHaveLength(2);
    expect([stage(a.leadId), stage(bLead), patches()]).toEqual([STAGE.incoming, STAGE.incoming, 0]);

    // Even when "due", a permanent failure is not retried by the scheduled run.
    s.amo.resetCounts();
    await makeDue([idA, idB]);
    expect((await sweep()).claimed).toBe(0);
    expect(s.amo.counts().total).toBe(0);
    expect(await ev(idA)).toMatchObject({ status: 'failed', attempts: 1, code: 'contact_not_found' });
    expect(await ev(idB)).toMatchObject({ status: 'failed', attempts: 1, code: 'contact_not_found' });

    s.amo.addContact({ id: 87_000_001, name: 'Student b', emails: [bEmail], leadIds: [bLead] });
    const replay = await runReplay(rt, replayRequest({ ids: [idA, idB] }));
    expect(replay.results.map((r) => [r.id, r.before, r.outcome])).toEqual([[idA, 'failed', 'done'], [idB, 'failed', 'done']]);
    expect(await ev(idA)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(await ev(idB)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect([stage(a.leadId), stage(bLead), patches()]).toEqual([STAGE.lesson1, STAGE.lesson2, 2]);
    expect(movesSent()).toEqual(once(a.leadId, bLead));
  });
});

describe('6. 401 on a valid-looking token', () => {
  it('one refresh, one retry, done; the refresh is logged once', async () => {
    const st = await s.addStudent('revoked-at@student.kz');
    const id = await s.complete(st.userId, 67);
    const before = await tokenRow();
    s.amo.expireAccessTokens();
    const res = await deliver(st.userId, 67, id);
    expect(await res.json()).toMatchObject({ outcome: 'done', moved: true });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 1, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson1);
    expect(s.amo.counts()).toMatchObject({ refreshes: 1, unauthorized: 1, patches: 1 });
    expect(route('GET /api/v4/contacts')).toBe(2); // the 401 and its one retry
    expect(movesSent()).toEqual(once(st.leadId));
    expect(lines('Токены успешно обновлены')).toHaveLength(1);
    expect(alerts()).toHaveLength(0);
    const after = await tokenRow();
    expect([after.version, after.authState]).toEqual([before.version + 1, 'ok']);
  });
});

describe('7. the refresh answer lost after amoCRM rotated the token', () => {
  // What the design does: a 502 from the token endpoint looks exactly like an outage before
  // the rotation, so the first attempt leaves the event retryable (failed, retryable) and
  // keeps the chain as it is. The next refresh sends the stored refresh token; amoCRM treats
  // it as used (single use) and answers 401, so the refresher re-reads the row (no one else
  // stored a newer pair), marks the chain needs_reauth and logs ONE ❌ line with the
  // exchange-code action; every event then parks instead of failing or burning attempts,
  // and no one calls the token endpoint again. Storing a new pair resumes the parked events.
  // Why this is the best possible outcome: the new pair existed only in the lost response,
  // so nothing we hold can authenticate any more; only a person with a new authorization code
  // can restore access. The design loses no event, does not hammer amoCRM, does not count
  // attempts towards `dead`, tells the operator once, precisely, and resumes by itself.
  // (If amoCRM honours the documented "old token valid until the new pair is first used",
  // the retry simply completes the rotation and nothing parks.)
  it('leaves the event retryable, then parks everything with one ❌ line; new tokens resume and complete them', async () => {
    const students = await Promise.all([0, 1, 2].map((i) => s.addStudent(`rotated${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 68));
    await s.storeTokens({ expired: true });
    s.amo.inject('POST /oauth2/access_token', { kind: 'after', status: 502 });

    const res = await deliver(students[0]!.userId, 68, ids[0]!);
    expect(res.status).toBe(202);
    expect(await res.json()).toMatchObject({ outcome: 'retry', code: 'server_error' });
    expect(await ev(ids[0]!)).toMatchObject({ status: 'failed', retryable: true, attempts: 1, code: 'server_error' });
    expect(s.amo.counts()).toMatchObject({ refreshes: 1, patches: 0 }); // rotated at amoCRM, answer lost
    expect((await tokenRow()).authState).toBe('ok');
    expect(alerts()).toHaveLength(0);

    await makeDue(ids);
    const report = await sweep();
    expect(report.outcomes).toEqual({ parked: 3 });
    expect(await ev(ids[0]!)).toMatchObject({ status: 'parked', attempts: 2, code: 'needs_reauth' });
    expect(await ev(ids[1]!)).toMatchObject({ status: 'parked', attempts: 1, code: 'needs_reauth' });
    expect(await ev(ids[2]!)).toMatchObject({ status: 'parked', attempts: 1, code: 'needs_reauth' });
    expect(alerts()).toHaveLength(1);
    expect(alerts()[0]).toMatch(/what_to_do=.*exchange-code/);
    expect((await tokenRow()).authState).toBe('needs_reauth');
    expect(route('POST /oauth2/access_token')).toBe(2); // the lost one and the rejected one: no retry storm
    expect(route('GET /api/v4/contacts')).toBe(0);
    expect(students.map((st) => stage(st.leadId))).toEqual(students.map(() => STAGE.incoming));

    // More scheduled runs while nobody has re-authorized: still parked, nothing sent, no new alert.
    expect((await sweep()).claimed).toBe(0);
    expect([alerts().length, s.amo.counts().total]).toEqual([1, 2]);

    expect(await exchangeCode()).toBe(3);
    for (const id of ids) expect((await ev(id)).status).toBe('pending');
    expect((await sweep()).outcomes).toEqual({ done: 3 });
    for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'done', code: null });
    expect(students.map((st) => stage(st.leadId))).toEqual(students.map(() => STAGE.lesson2));
    expect(movesSent()).toEqual(once(...students.map((st) => st.leadId)));
    expect(patches()).toBeGreaterThanOrEqual(1);
    expect((await tokenRow()).authState).toBe('ok');
  });
});

describe('8. the database write of new tokens failing', () => {
  it('the invocation finishes with the new token, one ❌ token_store_failed, chain marked; later events park; new tokens resume them', async () => {
    const [first, later1, later2] = await Promise.all(['storefail-a', 'storefail-b', 'storefail-c'].map((n) => s.addStudent(`${n}@student.kz`)));
    const id = await s.complete(first!.userId, 67);
    const laterIds = [await s.complete(later1!.userId, 67), await s.complete(later2!.userId, 68)];
    await s.storeTokens({ expired: true });
    const faulty = faultyDb(s.t.db, { fail: (fn) => fn === 'amocrm_finish_refresh' });

    const res = await deliver(first!.userId, 67, id, runtimeOver(faulty));
    const body = await res.json();
    expect(faulty.failures('amocrm_finish_refresh')).toBe(4);
    expect(s.amo.counts().refreshes).toBe(1);
    const storeFailed = alerts().filter((l) => l.includes('code=token_store_failed'));
    expect(storeFailed).toHaveLength(1);
    expect(storeFailed[0]).toMatch(/what_to_do=.*exchange-code/);
    expect(alerts()).toHaveLength(1);
    expect((await s.t.db.rpc<{ auth_state: string }>('amocrm_get_tokens')).auth_state).toBe('needs_reauth');
    // The invocation that holds the only copy of the new pair finishes its own event.
    expect(body).toMatchObject({ outcome: 'done', moved: true });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 1, code: null });
    expect(stage(first!.leadId)).toBe(STAGE.lesson1);
    expect(patches()).toBe(1);

    // Later events (a healthy database again) park instead of failing.
    for (const [i, st] of [later1!, later2!].entries()) {
      const r = await deliver(st.userId, i === 0 ? 67 : 68, laterIds[i]!);
      expect(await r.json()).toMatchObject({ outcome: 'parked', code: 'needs_reauth' });
      expect(await ev(laterIds[i]!)).toMatchObject({ status: 'parked', attempts: 1, code: 'needs_reauth' });
    }
    expect(alerts()).toHaveLength(1);
    expect([stage(later1!.leadId), stage(later2!.leadId), patches()]).toEqual([STAGE.incoming, STAGE.incoming, 1]);

    expect(await exchangeCode()).toBe(2);
    expect((await sweep()).outcomes).toEqual({ done: 2 });
    for (const lid of laterIds) expect(await ev(lid)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect([stage(first!.leadId), stage(later1!.leadId), stage(later2!.leadId)]).toEqual([STAGE.lesson1, STAGE.lesson1, STAGE.lesson2]);
    expect(movesSent()).toEqual(once(first!.leadId, later1!.leadId, later2!.leadId));
    expect((await tokenRow()).authState).toBe('ok');
  }, 30_000);

  it('after a failed token store, no ✅ "Токены успешно обновлены" line contradicts the ❌ token_store_failed', async () => {
    const st = await s.addStudent('storefail-log@student.kz');
    const id = await s.complete(st.userId, 69);
    await s.storeTokens({ expired: true });
    const faulty = faultyDb(s.t.db, { fail: (fn) => fn === 'amocrm_finish_refresh' });
    await deliver(st.userId, 69, id, runtimeOver(faulty));
    expect(lines('token_store_failed')).toHaveLength(1);
    expect(lines('Токены успешно обновлены')).toEqual([]);
    // (the event itself is covered above; close it out whatever happened to it)
    expect(['done', 'parked']).toContain((await ev(id)).status);
  }, 30_000);
});

describe('9. the function killed between moving the deal and recording the outcome', () => {
  it('after the move: the lease expires, the sweep records done with zero PATCH calls', async () => {
    const st = await s.addStudent('killed-after@student.kz');
    const id = await s.complete(st.userId, 68);
    const claim = await s.t.db.rpc<{ claimed: boolean }>('amocrm_claim_event', { p_event_id: id, p_holder: 'killed-instance', p_lease_seconds: 5 });
    expect(claim.claimed).toBe(true);
    s.amo.setLeadStatus(st.leadId, STAGE.lesson2); // its PATCH landed, then the process died
    await makeDue([id]);
    expect((await sweep()).claimed).toBe(0); // the lease still holds: nobody steals it
    await s.t.sql(`update amocrm.sync_events set lease_until = now() - interval '1 second' where id = $1`, [id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson2);
    expect([patches(), movesSent()]).toEqual([0, {}]);
    // The dead instance's late write is refused (it no longer holds the lease).
    const late = await s.t.db.rpc<{ recorded: boolean }>('amocrm_finish_event', { p_event_id: id, p_holder: 'killed-instance', p_outcome: 'failed', p_error_code: 'late' });
    expect(late.recorded).toBe(false);
    expect(await ev(id)).toMatchObject({ status: 'done', code: null });
  });

  it('before the move: the sweep moves the deal exactly once', async () => {
    const st = await s.addStudent('killed-before@student.kz');
    const id = await s.complete(st.userId, 67);
    await s.t.db.rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'killed-early', p_lease_seconds: 5 });
    await s.t.sql(`update amocrm.sync_events set lease_until = now() - interval '1 second' where id = $1`, [id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(stage(st.leadId)).toBe(STAGE.lesson1);
    expect([patches(), movesSent()]).toEqual([1, once(st.leadId)]);
  });
});

describe('10. races', () => {
  it('two deliveries of one event in parallel (dashboard webhook + trigger webhook with event_id): exactly one PATCH', async () => {
    const students = await Promise.all([0, 1, 2].map((i) => s.addStudent(`dup${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 67));
    const other = usingPostgres ? runtimeOver(await s.t.newDb(4)) : rt;
    const answers = await Promise.all(students.flatMap((st, i) => [
      webhook(rt, s.webhookRequest(dbWebhookBody(st.userId, 67))), // records the event itself: the same id
      webhook(other, s.webhookRequest({ ...dbWebhookBody(st.userId, 67), event_id: ids[i] })),
    ]));
    const bodies = await Promise.all(answers.map((r) => r.json()));
    // One of each pair does it, the other is told it is a duplicate. On a loaded machine the
    // one that claimed it may find no rate slot within the webhook's 1 s and give it back
    // untried (202 deferred); it is then delivered again, as the drainer would.
    expect(answers.map((r) => r.status)).toEqual(bodies.map((b) => (b.outcome === 'deferred' ? 202 : 200)));
    for (let i = 0; i < students.length; i++) {
      const pair: string[] = [bodies[2 * i].outcome, bodies[2 * i + 1].outcome];
      expect(pair.filter((o) => !['done', 'duplicate', 'deferred'].includes(o))).toEqual([]);
      expect(pair.filter((o) => o === 'done').length).toBeLessThanOrEqual(1);
      if (!pair.includes('deferred')) expect(pair.sort()).toEqual(['done', 'duplicate']);
      if (!pair.includes('done')) expect(await (await deliver(students[i]!.userId, 67, ids[i]!)).json()).toMatchObject({ outcome: 'done' });
      expect(await ev(ids[i]!)).toMatchObject({ status: 'done', attempts: 1, code: null });
    }
    expect(students.map((st) => stage(st.leadId))).toEqual(students.map(() => STAGE.lesson1));
    expect([patches(), movesSent()]).toEqual([3, once(...students.map((st) => st.leadId))]);
  });

  it('replay and the scheduled run racing over the same failed-retryable due events: each done exactly once', async () => {
    const n = 8;
    const students = await Promise.all(Array.from({ length: n }, (_, i) => s.addStudent(`replayrace${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 69));
    // Each delivery meets a 503 (one invocation each: a scheduled run would stop at the first).
    s.amo.inject('GET /api/v4/contacts', { status: 503 }, n);
    for (const [i, st] of students.entries()) expect(await (await deliver(st.userId, 69, ids[i]!)).json()).toMatchObject({ outcome: 'retry' });
    s.amo.clearFaults();
    for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'failed', retryable: true, attempts: 1, code: 'server_error' });
    await makeDue(ids);
    s.amo.resetCounts();

    const other = usingPostgres ? runtimeOver(await s.t.newDb(8)) : rt;
    const [replay, report] = await Promise.all([
      runReplay(other, replayRequest({ status: 'failed' })),
      sweep(),
    ]);
    // Each event is done by one of the two, or (on a loaded machine: no rate slot within the
    // replay's 3 s or the run's patience) given back untried; nothing fails, nothing twice.
    // (The scheduled run may have taken all of them first: then the replay has nothing to list.)
    expect(replay.results.filter((r) => !['done', 'not_replayed', 'deferred'].includes(r.outcome))).toEqual([]);
    expect(Object.keys(report.outcomes).filter((k) => k !== 'done' && k !== 'deferred')).toEqual([]);
    const replayed = replay.results.filter((r) => r.outcome === 'done').length;
    const untried = async () => (await Promise.all(ids.map(ev))).filter((e) => e.status !== 'done').length;
    expect(replayed + (report.outcomes.done ?? 0) + (await untried())).toBe(n);
    // What was given back untried, later runs finish (as the drainer would).
    for (let run = 1; (await untried()) > 0; run++) {
      expect(run, 'runs needed to finish what the race gave back').toBeLessThanOrEqual(5);
      await makeDue(ids);
      expect(Object.keys((await sweep()).outcomes).filter((k) => k !== 'done' && k !== 'deferred')).toEqual([]);
    }
    for (const id of ids) expect(await ev(id)).toMatchObject({ status: 'done', attempts: 2, code: null });
    expect(students.map((st) => stage(st.leadId))).toEqual(students.map(() => STAGE.lesson3));
    expect(movesSent()).toEqual(once(...students.map((st) => st.leadId)));
    expect(patches()).toBeLessThanOrEqual(n);
    expect(lines('успешно перемещена')).toHaveLength(n);
  }, 60_000);

  // Two lessons of ONE student in flight at once (a student finishing 67 and 68 seconds
  // apart: two webhooks, two instances). The forward-only decision is made on a read of the
  // deal, so if both ran side by side a slow PATCH of the older event could land after the
  // newer one and pull the deal back; the claim refuses an event while the same student's
  // other event is in flight, and the delivery waits for it.
  it('two lessons of one student in flight at once: the deal ends on the later lesson\'s stage (forward only)', async () => {
    const st = await s.addStudent('two-at-once@student.kz');
    const id67 = await s.complete(st.userId, 67);
    const id68 = await s.complete(st.userId, 68);
    // Instance A (lesson 67) has a slow network: its PATCH is held until B has finished or is seen waiting.
    const patchHeld = gate();
    const release = gate();
    const config = loadConfig(s.env);
    const real = axiosTransport(config.amocrm.baseUrl, config.amocrm.timeoutMs);
    const slow: Transport = {
      async send(req, bearer) {
        if (req.method === 'PATCH') { patchHeld.open(); await release.promise; }
        return real.send(req, bearer);
      },
    };
    const rtA = runtimeOver(usingPostgres ? await s.t.newDb(2) : s.t.db, slow);
    const invA = rtA.invocation(3_000);
    const a = deliverEvent(invA.sync, id67, invA.holder);
    await patchHeld.promise; // A has read the deal (incoming) and decided to move it to stage 1
    // B, meanwhile, is delivered. Either it runs beside A, or it is refused while A's event is
    // in flight (and then waits for A): A is let go as soon as one of the two is seen.
    const bRefused = gate();
    const dbB: Db = {
      async rpc<T>(fn: string, args?: Record<string, unknown>): Promise<T> {
        const answer = await s.t.db.rpc<T>(fn, args);
        if (fn === 'amocrm_claim_event' && (answer as { reason?: string }).reason === 'student_busy') bRefused.open();
        return answer;
      },
    };
    const b = webhook(runtimeOver(dbB), s.webhookRequest({ ...dbWebhookBody(st.userId, 68), event_id: id68 }));
    await Promise.race([b, bRefused.promise]);
    release.open();
    await Promise.all([a, b]);
    // What the deliveries leave for later (B, if it gave up waiting), the scheduled run finishes.
    await makeDue([id67, id68]);
    await sweep();

    expect(await ev(id68)).toMatchObject({ status: 'done', code: null });
    expect(['done', 'skipped']).toContain((await ev(id67)).status);
    expect(stage(st.leadId)).toBe(STAGE.lesson2); // forward only: never back to stage 1
  });
});
