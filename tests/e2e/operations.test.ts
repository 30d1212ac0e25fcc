// Operating the sync: the scheduled run, retries with backoff, replay and status over
// HTTP, on a real database with the amoCRM stand-in. Time passing is simulated by moving
// next_attempt_at, never by sleeping.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleReplay } from '../../lib/http/replay.ts';
import { handleStatus } from '../../lib/http/status.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { usingPostgres } from '../helpers/db.ts';
import { endRatePause, ratePause } from '../helpers/rate-pause.ts';
import { createStack, REPLAY_TOKEN, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s.close(); });
beforeEach(async () => {
  s.amo.resetCounts(); s.amo.clearFaults(); s.log.lines.length = 0;
  // Each test starts from a quiet outbox: earlier tests' events are closed out.
  await s.t.sql(`update amocrm.sync_events set status = 'done', lease_holder = null where status not in ('done')`);
  await endRatePause(s.t.sql); // the 429 a test provokes on purpose pauses every caller and halves the rate
});

const makeDue = (ids: number[]) => s.t.sql('update amocrm.sync_events set next_attempt_at = now() - interval \'1 second\' where id = any($1::bigint[])', [ids]);
const sweep = () => runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 });

describe('scheduled run', () => {
  it('delivers an event whose webhook never arrived, after the grace period', async () => {
    const st = await s.addStudent('nowebhook@student.kz');
    const id = await s.complete(st.userId, 67); // pg_net has no URL configured: nothing rang
    expect((await sweep()).claimed).toBe(0); // still within the 60 s grace: left to the webhook
    await makeDue([id]);
    const report = await sweep();
    expect(report.outcomes).toEqual({ done: 1 });
    expect((await s.event(id)).status).toBe('done');
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson1);
  });

  it('retries 429 and 5xx with growing delays and succeeds when amoCRM recovers', async () => {
    const st = await s.addStudent('flaky@student.kz');
    const id = await s.complete(st.userId, 68);
    const delays: number[] = [];
    const reported = (await ratePause(s.t.sql)).reported;
    for (const fault of [{ status: 503 }, { status: 429, body: { status: 429, title: 'Too Many Requests' } }, { status: 502 }]) {
      s.amo.inject('GET /api/v4/contacts', fault);
      await makeDue([id]);
      expect((await sweep()).outcomes).toEqual({ retry: 1 });
      // The wait as the outcome set it (next_attempt_at and updated_at from one statement).
      const [e] = await s.t.sql(`select status, retryable, extract(epoch from next_attempt_at - updated_at) as wait from amocrm.sync_events where id = $1`, [id]);
      expect([e!.status, e!.retryable]).toEqual(['failed', true]);
      delays.push(Number(e!.wait));
      if (fault.status === 429) await endRatePause(s.t.sql); // (its shared pause is asserted in faults.test.ts)
    }
    expect((await ratePause(s.t.sql)).reported).toBe(reported + 1); // only the 429 paused the shared limiter
    expect(delays[1]).toBeGreaterThanOrEqual(delays[0]!);
    expect(delays[2]).toBeGreaterThan(delays[0]!);
    expect(delays[0]).toBeGreaterThan(10); // a real backoff, not a hot loop
    expect(await sweep()).toMatchObject({ claimed: 0 }); // not due yet
    await makeDue([id]);
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson2);
    expect(Number((await s.event(id)).attempts)).toBe(4);
  });

  it('after the maximum attempts an event is dead, logged once with ❌, and kept', async () => {
    const st = await s.addStudent('dead@student.kz');
    const id = await s.complete(st.userId, 67);
    await s.t.sql('update amocrm.sync_events set attempts = $2 where id = $1', [id, Number(s.env.AMOCRM_MAX_ATTEMPTS ?? 8) - 1]);
    s.amo.inject('GET /api/v4/contacts', { status: 500 });
    await makeDue([id]);
    expect((await sweep()).outcomes).toEqual({ dead: 1 });
    expect((await s.event(id)).status).toBe('dead');
    expect(s.log.lines.filter((l) => /❌.*AmoCRM/.test(l))).toHaveLength(1);
    await makeDue([id]);
    expect((await sweep()).claimed).toBe(0); // dead events wait for a replay
  });

  it('refreshes the token ahead of expiry even when no student is active', async () => {
    await s.t.sql(`update amocrm.system_settings set value = jsonb_set(value, '{expires_at}', to_jsonb((now() + interval '2 hours')::text)) where key = 'amocrm_tokens'`);
    const report = await sweep();
    expect(report.tokenRefreshed).toBe(true);
    expect(s.amo.counts().refreshes).toBe(1);
    expect(s.log.lines.some((l) => /✅.*Токены успешно обновлены/.test(l))).toBe(true);
    expect((await sweep()).tokenRefreshed).toBe(false); // a fresh 24 h token needs nothing
  });

  it('a killed invocation (lease expired after the move) is finished without a second move', async () => {
    const st = await s.addStudent('killed2@student.kz');
    const id = await s.complete(st.userId, 67);
    await s.t.db.rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'killed-instance', p_lease_seconds: 60 });
    s.amo.setLeadStatus(st.leadId, STAGE.lesson1); // it moved the deal, then died before recording
    await s.t.sql(`update amocrm.sync_events set lease_until = now() - interval '1 second' where id = $1`, [id]);
    s.amo.resetCounts();
    expect((await sweep()).outcomes).toEqual({ done: 1 });
    expect(s.amo.counts().patches).toBe(0);
  });

  it('two overlapping scheduled runs never process an event twice', async () => {
    const students = await Promise.all(Array.from({ length: 12 }, (_, i) => s.addStudent(`overlap${i}@student.kz`)));
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 67));
    await makeDue(ids);
    const other = usingPostgres ? s.runtimeOver(await s.t.newDb(6)) : s.rt;
    const [a, b] = await Promise.all([sweep(), runSweep(other, { budgetMs: 20_000, reserveMs: 2_000 })]);
    expect(a.claimed + b.claimed).toBe(12);
    // Each claimed event ends done, or (a starved machine: no rate slot within the run's
    // patience) goes back to the queue untried; later runs finish those.
    const settled = (r: typeof a) => (r.outcomes.done ?? 0) + (r.outcomes.deferred ?? 0);
    expect(settled(a) + settled(b)).toBe(12);
    let runs = 2;
    for (let pending = 12 - (a.outcomes.done ?? 0) - (b.outcomes.done ?? 0); pending > 0; runs += 1) {
      expect(runs, 'runs needed to finish what the overlapping pair deferred').toBeLessThan(8);
      await makeDue(ids);
      const more = await sweep();
      expect(more.claimed).toBe(pending);
      pending -= more.outcomes.done ?? 0;
    }
    // Moves are batched (up to 50 deals per PATCH): at most one PATCH per run, and every
    // event was attempted exactly once — no event was processed by both runs (a deferred
    // event's attempt does not count).
    expect(s.amo.counts().patches).toBeGreaterThanOrEqual(1);
    expect(s.amo.counts().patches).toBeLessThanOrEqual(runs);
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(students.map(() => STAGE.lesson1));
    expect(s.amo.counts().byRoute['GET /api/v4/contacts']).toBe(12); // one search per student: none searched twice
    const rows = await s.t.sql(`select status, attempts from amocrm.sync_events where id = any($1::bigint[])`, [ids]);
    expect(rows.map((r) => [r.status, Number(r.attempts)])).toEqual(ids.map(() => ['done', 1]));
  }, 60_000);
});

describe('replay over HTTP', () => {
  const replay = (body: unknown, token = REPLAY_TOKEN) => handleReplay(new Request('http://localhost/api/amocrm/replay', {
    method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  }), async () => s.rt);

  async function failedEvents(n: number, prefix: string) {
    const out = [];
    for (let i = 0; i < n; i++) {
      const st = await s.addStudent(`${prefix}${i}@student.kz`);
      const id = await s.complete(st.userId, 67);
      await s.t.sql(`update amocrm.sync_events set status = 'failed', retryable = false, last_error_code = 'contact_not_found' where id = $1`, [id]);
      out.push({ id, st });
    }
    return out;
  }

  it('a wrong or missing token gets 401 and changes nothing', async () => {
    const [ev] = await failedEvents(1, 'unauth');
    expect((await replay({ ids: [ev!.id] }, 'wrong-token-000000000000')).status).toBe(401);
    const none = await handleReplay(new Request('http://localhost/api/amocrm/replay', { method: 'POST', body: '{}' }), async () => s.rt);
    expect(none.status).toBe(401);
    expect((await s.event(ev!.id)).status).toBe('failed');
  });

  it('bad bodies get 400 with a message naming the problem', async () => {
    for (const [body, message] of [
      ['not json', /JSON/], [{}, /"ids".*"status": one of failed, dead, parked, skipped/], [{ ids: [1], status: 'failed' }, /ids or status/],
      [{ ids: ['1'] }, /^ids/], [{ ids: [-3] }, /^ids/], [{ status: 'exploded' }, /^status/], [{ status: 'done' }, /force/],
      [{ status: 'failed', limit: 0 }, /^limit/], [{ status: 'failed', from: 'yesterday' }, /^from/], [{ status: 'failed', bogus: 1 }, /bogus|Unrecognized/],
    ] as const) {
      const res = await replay(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect((await res.json()).error).toMatch(message);
    }
  });

  it('dryRun lists what would be replayed and changes nothing', async () => {
    const evs = await failedEvents(2, 'dry');
    const res = await replay({ status: 'failed', dryRun: true });
    const body = await res.json();
    expect(body.results.map((r: any) => [r.id, r.outcome])).toEqual(evs.map((e) => [e.id, 'would_replay']));
    expect(s.amo.counts().total).toBe(0);
    for (const e of evs) expect((await s.event(e.id)).status).toBe('failed');
  });

  it('replays by ids and by status, idempotently', async () => {
    const [a, b, c] = await failedEvents(3, 'replay');
    const byId = await (await replay({ ids: [a!.id] })).json();
    expect(byId.results).toEqual([expect.objectContaining({ id: a!.id, before: 'failed', outcome: 'done' })]);
    const byStatus = await (await replay({ status: 'failed' })).json();
    expect(byStatus.results.map((r: any) => [r.id, r.outcome])).toEqual([[b!.id, 'done'], [c!.id, 'done']]);
    for (const e of [a, b, c]) expect(s.amo.lead(e!.st.leadId)!.statusId).toBe(STAGE.lesson1);
    const again = await (await replay({ ids: [a!.id] })).json();
    expect(again.results[0]).toMatchObject({ outcome: 'not_replayed', message: expect.stringMatching(/force/) });
    const forced = await (await replay({ ids: [a!.id], force: true })).json();
    expect(forced.results[0]).toMatchObject({ outcome: 'done' });
    expect(s.amo.counts().patches).toBe(3); // forced redo found the deal already there: no 4th move
  });

  it('a replay larger than one call returns how to continue', async () => {
    await failedEvents(3, 'paged');
    const first = await (await replay({ status: 'failed', limit: 2 })).json();
    expect(first.results).toHaveLength(2);
    expect(first.complete).toBe(false);
    expect(first.continue_with).toMatchObject({ status: 'failed', limit: 2, afterId: first.results[1].id });
    const second = await (await replay(first.continue_with)).json();
    expect(second.results).toHaveLength(1);
    expect(second.complete).toBe(true);
  });
});

describe('status', () => {
  const status = (headers: Record<string, string>) => handleStatus(new Request('http://localhost/api/amocrm/status', { headers }), async () => s.rt);

  it('answers counts, ages, token expiry and recent failures as JSON; a browser is pointed at the console', async () => {
    const st = await s.addStudent('status@student.kz');
    const id = await s.complete(st.userId, 69);
    await s.t.sql(`update amocrm.sync_events set status = 'failed', retryable = false, last_error_code = 'no_deal_in_pipeline', last_error = 'нет сделки' where id = $1`, [id]);
    expect((await status({})).status).toBe(401);
    const res = await status({ authorization: `Bearer ${REPLAY_TOKEN}` });
    expect(res.status).toBe(200);
    const body = await res.json();
    expect(body.counts.failed).toBe(1);
    expect(body.token).toMatchObject({ kind: 'oauth', auth_state: 'ok' });
    expect(body.recent_failures[0]).toMatchObject({ id: Number(id), code: 'no_deal_in_pipeline', reason: 'нет сделки' });
    expect(JSON.stringify(body)).not.toMatch(/standin-(at|rt)-/);
    const page = await status({ accept: 'text/html', authorization: `Basic ${Buffer.from(`ops:${REPLAY_TOKEN}`).toString('base64')}` });
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(await page.text()).toMatch(/href="\/api\/amocrm\/console\/health"/);
    const challenge = await status({ accept: 'text/html' });
    expect([challenge.status, challenge.headers.get('www-authenticate')]).toEqual([401, expect.stringMatching(/^Basic/)]);
  });
});
