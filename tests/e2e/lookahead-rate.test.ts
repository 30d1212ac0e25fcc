// Look-ahead at the rate the spare capacity allows (issue 17, item 3). A job that is only
// waiting for a spare slot is work left, not an empty queue: a drain goes on (or, out of
// time, wakes the background drainer) instead of ending as `empty` and leaving the jobs to
// the next scheduled run two minutes later. With nothing else going on, sign-ups are looked
// ahead at about the shared rate: one search each, plus one read per batch of 20.
// The figure is 1,000 sign-ups within 1.2× their floor (the benchmark's, npm run
// bench -- --only topology --topology lookahead); here 30, with amoCRM's latency of
// 100–300 ms, at the same 6 requests/s.
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../lib/config.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { createStack, type Stack } from '../helpers/stack.ts';

const N = 30;
const RATE = 6;

let s: Stack;
let wakeServer: Server;
let wakes = 0;
let rt: Runtime;

beforeAll(async () => {
  s = await createStack({ lookahead: true, standin: { latencyMs: [100, 300] } });
  wakeServer = createServer((_req, res) => {
    wakes++;
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
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0; wakes = 0;
  await s.t.sql(`update amocrm.lookahead_jobs set status = 'failed' where status in ('pending', 'processing')`);
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null, last_woken_at = null, started_at = null, ring_failed_at = null`);
});

let seq = 0;
async function signUp(n: number, tag: string): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await s.addStudent(`${tag}.${++seq}@ahead.kz`)).userId);
  return ids;
}
const jobsOf = async (ids: string[]) =>
  Object.fromEntries((await s.t.sql(`select status, count(*)::int as n from amocrm.lookahead_jobs where user_id = any($1::uuid[]) group by status`, [ids]))
    .map((r) => [r.status, r.n]));
/** Another instance's reservation: the shared limiter's next slot is `ms` away, so no slot is spare until then. */
const reserveAhead = (ms: number) =>
  s.t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + make_interval(secs => $1::numeric / 1000)`, [ms]);

describe('look-ahead jobs waiting for a spare slot', () => {
  it('are work left: a scheduled run out of time wakes the background drainer instead of ending as empty', async () => {
    const ids = await signUp(N, 'wait');
    await reserveAhead(1_500);
    s.amo.resetCounts();
    // The scheduled run's drain: no linger, a short budget.
    const report = await runDrain(rt, { budgetMs: 3_000, reserveMs: 1_000, batchSize: 25 });
    expect(report.stoppedBy).toBe('budget');
    expect(wakes).toBe(1);
    // It used the spare slots once they came: some deals already found, the rest left due.
    expect(report.lookaheadFound).toBeGreaterThan(0);
    const jobs = await jobsOf(ids);
    expect(jobs.found).toBe(report.lookaheadFound);
    expect((jobs.pending ?? 0) + (jobs.processing ?? 0)).toBe(N - report.lookaheadFound);
    const [due] = await s.t.sql(`select count(*)::int as n from amocrm.lookahead_jobs where user_id = any($1::uuid[]) and status = 'pending' and next_attempt_at <= now()`, [ids]);
    expect(due!.n).toBe(N - report.lookaheadFound);
  });

  it('a drain goes on once the slot is spare, and works every job (it never ends as empty while they wait)', async () => {
    const ids = await signUp(N, 'goon');
    await reserveAhead(1_000);
    const report = await runDrain(rt, { budgetMs: 60_000, reserveMs: 1_000 });
    expect(report).toMatchObject({ ran: true, stoppedBy: 'empty', lookaheadFound: N });
    expect(await jobsOf(ids)).toEqual({ found: N });
    expect(wakes).toBe(0);
  });
});

describe('the look-ahead rate', () => {
  it(`${N} sign-ups with nothing else going on are looked ahead within 1.2× their floor`, async () => {
    const ids = await signUp(N, 'rate');
    s.amo.resetCounts();
    const started = performance.now();
    const report = await runDrain(rt, { budgetMs: 60_000, reserveMs: 1_000 });
    const elapsedMs = performance.now() - started;
    expect(report).toMatchObject({ stoppedBy: 'empty', lookaheadFound: N });
    expect(await jobsOf(ids)).toEqual({ found: N });
    const calls = s.amo.counts().total;
    // One search each, and a read per batch of 20: nothing more.
    expect(s.amo.counts().byRoute['GET /api/v4/contacts']).toBe(N);
    expect(calls).toBeLessThanOrEqual(N + Math.ceil(N / 20));
    // The floor: every call at the shared rate (the first leaves at once), plus the last one's answer.
    const floorMs = ((calls - 1) / RATE) * 1000 + 300;
    expect(elapsedMs).toBeLessThanOrEqual(1.2 * floorMs);
  });
});
