// Bursts in production topology (npm run bench -- --only topology): a webinar ends and N
// students complete a Tripwire lesson within seconds. The stack runs as in production
// (scripts/bench/topology-stack.ts): the trigger queues signed webhooks, pg_net delivers
// them 200 at a time, the functions run as Netlify runs them, the scheduled run fires on
// its cron only, and the drainer runs only when the design wakes it. amoCRM is the
// stand-in at 7 req/s with its latency and account blocking; the sync's limit is 6/s.
//
// Three variants of N students each, one after the other on the same stack:
//   cold        never seen, look-ahead off: one contact search each
//   warm        deal remembered from an earlier lesson: they complete lesson 68
//   found ahead look-ahead on: signed up first, their jobs worked by the design (timed from
//               the first scheduled run against the look-ahead's floor); then lesson 67
//   notes       warm students twice, without and with a note and a task at every funnel
//               step, side by side (scripts/bench/topology-notes.ts)
// Each burst also counts its webhook invocations and pg_net requests per event: while a
// drainer holds the queue the trigger rings nothing.
// Before them, single events at idle (one every 2 s); during the cold burst, a lone event.
// Each figure is compared with the physical floor computed from the same run's counts.
import { loadavg } from 'node:os';
import { createLogger } from '../../lib/log.ts';
import type { FunctionRun } from '../../dev/server.ts';
import { createSyncStack, type Stack, type Student } from '../../dev/stack/index.ts';
import { benchNotes } from './topology-notes.ts';
import { serveProductionTopology, type Sent } from './topology-stack.ts';

export const TOPOLOGY_PARTS = ['idle', 'cold', 'warm', 'ahead', 'notes'] as const;
export type TopologyPart = (typeof TOPOLOGY_PARTS)[number];

export type RowFn = (figure: string, value: string, target?: string) => void;

export interface TopologyOptions {
  /** Students per variant. */
  n: number;
  latencyMs: [number, number];
  databaseUrl?: string;
  row: RowFn;
  /** Single events at idle, one every 2 s. */
  idleEvents?: number;
  /** How long to wait for the found-ahead students' look-ahead jobs before the burst. */
  lookaheadWaitMs?: number;
  /** Round trip added to each database call of the functions (PostgREST over the network). Default 0. */
  dbRoundTripMs?: number;
  /** Which parts to run (default all): single events at idle, the three bursts, and the burst without and with notes. */
  parts?: Set<TopologyPart>;
}

/** The sync's configured limit (AMOCRM_MAX_RPS), which the floor is computed at. */
const RATE = 6;
const DRAINER = 'amocrm-drain-background';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const secs = (ms: number, digits = 1) => `${(ms / 1000).toFixed(digits)} s`;
const pct = (xs: number[], p: number) => {
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
};
const say = (line: string) => console.log(`  … ${line}`);

/** Log lines of the sync, tallied by phrase (numbers folded), so a phase can show what it logged. */
function tallyLog() {
  let counts = new Map<string, number>();
  let drains: string[] = [];
  const logger = createLogger((line) => {
    const phrase = line.split(/ [a-z_]+=/)[0]!.replace(/\d+/g, '#');
    counts.set(phrase, (counts.get(phrase) ?? 0) + 1);
    if (line.includes('Очередь разобрана') || line.includes('Плановый запуск завершён') || line.includes('Обработчик очереди не запущен')) drains.push(line);
  });
  return {
    logger,
    /** What was logged since the last call, and starts over. */
    take() {
      const out = { counts, drains };
      counts = new Map();
      drains = [];
      return out;
    },
  };
}

/** Resolves when a deal reaches its stage, by polling the stand-in's state. */
function watchLeads(s: Stack, intervalMs: number) {
  const waiting = new Map<number, { status: number; resolve: (t: number) => void }>();
  const timer = setInterval(() => {
    const now = performance.now();
    for (const [id, w] of waiting) {
      if (s.amo.lead(id)?.statusId === w.status) { waiting.delete(id); w.resolve(now); }
    }
  }, intervalMs);
  return {
    until: (leadId: number, status: number) => new Promise<number>((resolve) => waiting.set(leadId, { status, resolve })),
    pending: () => waiting.size,
    stop: () => clearInterval(timer),
  };
}

const setLookahead = (s: Stack, on: boolean) =>
  s.database.sql(`insert into amocrm.system_settings (key, value) values ('lookahead_enabled', $1::jsonb)
    on conflict (key) do update set value = excluded.value`, [JSON.stringify(on)]);

const commit = (s: Stack, userId: string, lesson: number) =>
  s.database.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [userId, lesson]);

/** Function time of the runs that started in [from, to), per function name. */
function functionTime(runs: FunctionRun[], from: number, to = Infinity) {
  const by = new Map<string, { ms: number; runs: number; longest: number; over: number; kind: string }>();
  for (const r of runs) {
    if (r.startedAt < from || r.startedAt >= to) continue;
    const f = by.get(r.name) ?? { ms: 0, runs: 0, longest: 0, over: 0, kind: r.kind };
    f.ms += r.ms;
    f.runs++;
    f.longest = Math.max(f.longest, r.ms);
    if (r.overLimit) f.over++;
    by.set(r.name, f);
  }
  return by;
}

/** How pg_net's deliveries were answered (status and outcome), ids above `afterId`. */
export async function webhookAnswers(s: Stack, afterId: number) {
  const rows = await s.database.sql('select status_code, content, timed_out from net._http_response where id > $1', [afterId]);
  const tally = new Map<string, number>();
  for (const r of rows) {
    let outcome = r.timed_out ? 'timed out' : r.status_code === null ? 'no answer' : String(r.status_code);
    try { outcome = `${r.status_code} ${JSON.parse(r.content).outcome ?? ''}`.trim(); } catch { /* not JSON: keep the status */ }
    tally.set(outcome, (tally.get(outcome) ?? 0) + 1);
  }
  return [...tally].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ×${v}`).join(', ') || 'none';
}

/**
 * What amoCRM had let through in the second before the first 429 (the stand-in's sliding
 * 1 s window), with the time each of those requests left the sync (after its rate slot):
 * sends spaced at the limit but arrivals bunched means the delay came after the slot.
 * `sent` and the stand-in's requests start at the same reset, on a settled stack.
 */
function tooManyEvidence(s: Stack, sent: Sent[]): string {
  const first = s.amo.requests.find((r) => r.status === 429)!;
  const admitted = s.amo.requests.filter((r) => r.at > first.at - 1000 && r.at <= first.at && r !== first && r.status !== 429);
  // Each arrival is matched with the earliest unmatched send of the same request (first in, first out).
  const queues = new Map<string, number[]>();
  for (const x of sent) {
    const key = `${x.method} ${x.path}`;
    if (!queues.has(key)) queues.set(key, []);
    queues.get(key)!.push(x.at);
  }
  const matched = new Map<object, number | undefined>();
  for (const r of s.amo.requests) {
    const q = queues.get(`${r.method} ${r.path}`);
    matched.set(r, q?.length && q[0]! <= r.at ? q.shift() : undefined);
  }
  const sentAt = (r: object) => matched.get(r);
  const rows = [...admitted, first].map((r) => ({ r, sentAt: sentAt(r) }));
  const gaps = (xs: (number | undefined)[]) => xs.slice(1).map((x, i) => (x === undefined || xs[i] === undefined ? '?' : (x - xs[i]!).toFixed(0))).join('/');
  return `first 429 on ${first.method} ${first.path}: amoCRM had admitted ${admitted.length} requests in the 1 s before it ` +
    `(${admitted.map((r) => `${r.method} ${r.path.replace('/api/v4', '')}`).join(', ')}); ` +
    `gaps between arrivals ${gaps(rows.map((x) => x.r.at))} ms, between sends ${gaps(rows.map((x) => x.sentAt))} ms, ` +
    `send → arrival ${rows.map((x) => (x.sentAt === undefined ? '?' : (x.r.at - x.sentAt).toFixed(0))).join('/')} ms`;
}

/** Called on a settled stack: every request queued so far has its answer recorded. */
export const lastResponseId = async (s: Stack) =>
  Number((await s.database.sql('select coalesce(max(id), 0)::bigint as id from net._http_response'))[0]!.id);

export async function benchTopology(o: TopologyOptions): Promise<void> {
  const { n, row } = o;
  const idleEvents = o.idleEvents ?? 50;
  const log = tallyLog();
  const loadAtStart = loadavg();
  const s = await createSyncStack({
    databaseUrl: o.databaseUrl, connections: 12,
    standin: { latencyMs: o.latencyMs, ratePerSecond: 7 },
    env: { AMOCRM_MAX_RPS: String(RATE) },
    log: log.logger,
  });
  const t = await serveProductionTopology(s, { dbRoundTripMs: o.dbRoundTripMs });
  const watch = watchLeads(s, 5);
  const { lesson1, lesson2 } = s.layout.stages;
  let seq = 0;
  const students = (count: number, opts: { leadStatusId?: number } = {}) => {
    const batch = ++seq;
    return s.addStudents(Array.from({ length: count }, (_, i) => `topo${batch}_${i + 1}@student.kz`), opts);
  };
  const known = async (count: number) => {
    const list = await students(count, { leadStatusId: lesson1 });
    await s.database.sql(`insert into amocrm.student_leads (user_id, lead_id) select u, l from unnest($1::uuid[], $2::bigint[]) as t(u, l)`,
      [list.map((x) => x.userId), list.map((x) => x.leadId)]);
    return list;
  };

  try {
    say(`topology: functions at ${t.url}, pg_net ≤ 200 in flight, scheduled run at every even UTC minute (next in ${secs(t.nextTickAt() - performance.now(), 0)})`);
    // Cold and idle students sign up with look-ahead off (their jobs would otherwise find the deals first).
    await setLookahead(s, false);
    const part = (name: TopologyPart) => !o.parts || o.parts.has(name);
    if (part('idle')) await idle(await students(Math.ceil(idleEvents / 2)), await known(Math.floor(idleEvents / 2)));
    if (part('cold')) await burst('cold', await students(n), 67, lesson1, { lone: (await known(1))[0]! });
    if (part('warm')) await burst('warm', await known(n), 68, lesson2);
    if (part('ahead')) {
      await setLookahead(s, true);
      await burst('found ahead', await signUpAhead(), 67, lesson1);
    }
    if (part('notes')) {
      await setLookahead(s, false);
      await benchNotes({
        s, t, n, rate: RATE, row, say, until: watch.until, known,
        clearLog: () => void log.take(), reportLog: () => report(log.take()),
      });
    }
  } finally {
    watch.stop();
    await t.close();
    await s.close();
    const loadAtEnd = loadavg();
    row('topology: load average (1/5/15 min) at start → end', `${loadAtStart.map((x) => x.toFixed(2)).join('/')} → ${loadAtEnd.map((x) => x.toFixed(2)).join('/')}`);
  }

  // ---------------------------------------------------------------------------------
  async function idle(coldOnes: Student[], warmOnes: Student[]) {
    await t.settle(60_000);
    log.take();
    const plan = coldOnes.flatMap((st, i) => [{ st, lesson: 67, stage: lesson1 }, ...(warmOnes[i] ? [{ st: warmOnes[i]!, lesson: 68, stage: lesson2 }] : [])]);
    say(`idle: ${plan.length} single events, one every 2 s (first lessons of new students and later lessons of known ones, alternating)`);
    const from = performance.now();
    const latencies: Promise<number>[] = [];
    for (let i = 0; i < plan.length; i++) {
      const { st, lesson, stage } = plan[i]!;
      await sleep(Math.max(0, from + i * 2000 - performance.now()));
      const seen = watch.until(st.leadId, stage);
      await commit(s, st.userId, lesson);
      const committed = performance.now();
      latencies.push(seen.then((at) => at - committed));
    }
    const all = await Promise.race([Promise.all(latencies), sleep(60_000).then(() => null)]);
    await t.settle(60_000);
    const ft = functionTime(t.runs, from);
    const other = [...ft].filter(([name]) => name !== DRAINER).reduce((a, [, f]) => a + f.ms, 0);
    if (!all) row('idle: commit → moved', `did not finish: ${watch.pending()} deals not moved 60 s after the last commit`, 'p95 ≤ 1.5 s');
    else row('idle: commit → moved, p50 / p95 / max', `${pct(all, 50).toFixed(0)} / ${pct(all, 95).toFixed(0)} / ${Math.max(...all).toFixed(0)} ms (${plan.length} events, one every 2 s)`, 'p95 ≤ 1.5 s');
    row('idle: function time per event', `${(other / plan.length / 1000).toFixed(3)} s (${describeTime(ft)})`);
    report(log.take());
  }

  // ---------------------------------------------------------------------------------
  async function signUpAhead(): Promise<Student[]> {
    await t.settle(60_000);
    log.take();
    const from = performance.now();
    const ticksBefore = t.ticks.length;
    const list = await students(n);
    const ids = list.map((x) => x.userId);
    const waitMs = o.lookaheadWaitMs ?? Math.max(10 * 60_000, n * 3_000);
    say(`found ahead: ${n} students signed up (look-ahead on); waiting up to ${secs(waitMs, 0)} for the design to work their jobs (scheduled runs, or a drainer if one is woken)`);
    let open = n;
    let lastSaid = 0;
    s.amo.resetCounts();
    while (performance.now() - from < waitMs) {
      const [r] = await s.database.sql(`select count(*) filter (where status in ('pending', 'processing'))::int as open from amocrm.lookahead_jobs where user_id = any($1::uuid[])`, [ids]);
      open = r!.open;
      if (open === 0) break;
      if (performance.now() - lastSaid > 60_000) {
        lastSaid = performance.now();
        say(`found ahead: ${n - open}/${n} look-ahead jobs finished after ${secs(performance.now() - from, 0)} (${t.ticks.length - ticksBefore} scheduled runs)`);
      }
      await sleep(250);
    }
    const waited = performance.now() - from;
    // The look-ahead's own pace: from the first scheduled run after the sign-ups (nothing
    // works the jobs before it) to the last job, against one search each and a read per
    // batch of 20 at the shared rate.
    const firstTick = t.ticks.slice(ticksBefore).find((x) => x >= from);
    const lookCalls = s.amo.counts();
    const floorCalls = n + Math.ceil(n / 20);
    const floorMs = (floorCalls / RATE) * 1000;
    if (open === 0 && firstTick !== undefined) {
      const took = from + waited - firstTick;
      row(`look-ahead ×${n}: first scheduled run → all looked ahead`,
        `${secs(took)} = ${(took / floorMs).toFixed(2)}× the floor of ${secs(floorMs)} (${n} searches + ${Math.ceil(n / 20)} reads = ${floorCalls} calls at ${RATE}/s); ` +
        `${lookCalls.total} amoCRM calls (${Object.entries(lookCalls.byRoute).map(([k, v]) => `${k.replace('/api/v4', '')} ${v}`).join(', ')})`, '≤ 1.2× floor');
    } else {
      row(`look-ahead ×${n}: first scheduled run → all looked ahead`, `NOT ALL LOOKED AHEAD: ${open} of ${n} open after ${secs(waited, 0)}`, '≤ 1.2× floor');
    }
    await t.settle(60_000);
    const jobs = await s.database.sql(`select status, count(*)::int as n from amocrm.lookahead_jobs where user_id = any($1::uuid[]) group by status order by status`, [ids]);
    const ft = functionTime(t.runs, from);
    const drainers = ft.get(DRAINER)?.runs ?? 0;
    row('found ahead: look-ahead before the burst',
      `${open === 0 ? 'all jobs finished' : `${open} of ${n} jobs NOT finished`} ${secs(waited, 0)} after sign-up (${jobs.map((j) => `${j.status}=${j.n}`).join(', ')}); ` +
      `worked by ${t.ticks.length - ticksBefore} scheduled runs and ${drainers} drainer run(s): ${((n - open) / (waited / 60_000)).toFixed(0)} jobs/min; function time ${describeTime(ft)}`);
    report(log.take());
    return list;
  }

  // ---------------------------------------------------------------------------------
  async function burst(label: string, list: Student[], lesson: number, stage: number, opts: { lone?: Student } = {}) {
    const settled = await t.settle(120_000);
    if (!settled) say(`${label}: the stack was not quiet after 120 s; measuring anyway`);
    log.take();
    const ids = list.map((x) => x.userId);
    const [known] = await s.database.sql('select count(*)::int as n from amocrm.student_leads where user_id = any($1::uuid[])', [ids]);
    const unknown = list.length - known!.n;
    const floorCalls = unknown + Math.ceil(list.length / 250) + Math.ceil(list.length / 50);
    const floorMs = (floorCalls / RATE) * 1000;
    const responsesAfter = await lastResponseId(s);
    s.amo.resetCounts();
    const sentFrom = t.sent.length;
    const rpcsBefore = new Map(t.rpcs);
    const moved = list.map((st) => watch.until(st.leadId, stage));

    const from = performance.now();
    for (const st of list) await commit(s, st.userId, lesson);
    const lastCommit = performance.now();
    const tickPhase = t.nextTickAt() - lastCommit;
    say(`${label}: ${list.length} INSERTs committed in ${secs(lastCommit - from)} (one transaction each); next scheduled run ${secs(tickPhase, 0)} after the last commit; floor ${secs(floorMs)}`);

    let loneLatency: Promise<number> | undefined;
    let loneAt = 0;
    if (opts.lone) {
      // Halfway through the floor: the drain is in full swing.
      await sleep(Math.max(0, lastCommit + floorMs / 2 - performance.now()));
      const seen = watch.until(opts.lone.leadId, lesson2);
      await commit(s, opts.lone.userId, 68);
      loneAt = performance.now();
      loneLatency = seen.then((at) => at - loneAt);
      say(`${label}: lone event (a known student's lesson 68) committed ${secs(loneAt - lastCommit, 0)} after the burst's last commit`);
    }

    const limitMs = Math.max(300_000, 3 * floorMs + 240_000);
    let progress: NodeJS.Timeout | undefined;
    const all = await Promise.race([
      Promise.all(moved),
      new Promise<null>((resolve) => {
        const started = performance.now();
        progress = setInterval(() => {
          if (performance.now() - started > limitMs) resolve(null);
          else say(`${label}: ${list.filter((st) => s.amo.lead(st.leadId)?.statusId === stage).length} of ${list.length} deals moved ${secs(performance.now() - lastCommit, 0)} after the last commit`);
        }, 30_000);
      }),
    ]);
    clearInterval(progress);
    const lastMoved = all ? Math.max(...all) : undefined;
    const loneMs = loneLatency ? await Promise.race([loneLatency, sleep(60_000).then(() => null)]) : undefined;
    const quiet = await t.settle(180_000);
    const end = performance.now();
    const counts = s.amo.counts();
    const forbidden = s.amo.requests.filter((r) => r.status === 403).length;
    const statuses = await s.database.sql(`select status, count(*)::int as n from amocrm.sync_events
        where user_id = any($1::uuid[]) and lesson_id = $2 group by status order by status`, [ids, lesson]);
    const done = statuses.find((r) => r.status === 'done')?.n ?? 0;
    const ft = functionTime(t.runs, from, end);
    const drainer = ft.get(DRAINER);
    const otherMs = [...ft].filter(([name]) => name !== DRAINER).reduce((a, [, f]) => a + f.ms, 0);
    const events = list.length + (opts.lone ? 1 : 0);
    const over = [...ft].reduce((a, [, f]) => a + f.over, 0);
    const routes = Object.entries(counts.byRoute).map(([k, v]) => `${k.replace('/api/v4', '')} ${v}`).join(', ');

    const target = label === 'cold' ? '≤ 1.2× floor' : '≤ 10 s';
    if (lastMoved === undefined) {
      const movedCount = list.filter((st) => s.amo.lead(st.leadId)?.statusId === stage).length;
      row(`${label} ×${list.length}: last commit → last deal moved`, `NOT ALL MOVED: ${movedCount} of ${list.length} after ${secs(limitMs, 0)} (floor ${secs(floorMs)})`, target);
    } else {
      const took = lastMoved - lastCommit;
      row(`${label} ×${list.length}: last commit → last deal moved`,
        `${secs(took)} = ${(took / floorMs).toFixed(2)}× the floor of ${secs(floorMs)} (${unknown} searches + ${Math.ceil(list.length / 250)} reads + ${Math.ceil(list.length / 50)} PATCHes = ${floorCalls} calls at ${RATE}/s)`, target);
    }
    row(`${label}: amoCRM calls per event`, `${(counts.total / events).toFixed(3)} (${counts.total} calls: ${routes})`);
    const reqs = s.amo.requests;
    const spanMs = reqs.length > 1 ? reqs[reqs.length - 1]!.at - reqs[0]!.at : 0;
    row(`${label}: amoCRM rate while the burst was worked`, spanMs ? `${(reqs.length / (spanMs / 1000)).toFixed(2)} req/s (${reqs.length} requests from the first to the last in ${secs(spanMs)}; limit ${RATE}/s)` : 'no requests');
    const rpcDelta = [...t.rpcs].map(([fn, k]) => [fn, k - (rpcsBefore.get(fn) ?? 0)] as const).filter(([, k]) => k > 0).sort((a, b) => b[1] - a[1]);
    const rpcTotal = rpcDelta.reduce((a, [, k]) => a + k, 0);
    row(`${label}: database calls per event (functions' RPCs${o.dbRoundTripMs ? `, each +${o.dbRoundTripMs} ms` : ''})`,
      `${(rpcTotal / events).toFixed(2)} (${rpcDelta.slice(0, 6).map(([fn, k]) => `${fn.replace('amocrm_', '')} ${k}`).join(', ')})`);
    row(`${label}: function time per event, drainer`, drainer ? `${(drainer.ms / events / 1000).toFixed(3)} s (${drainer.runs} run(s), ${secs(drainer.ms)} in all)` : '0 (no drainer ran)');
    row(`${label}: function time per event, everything else`, `${(otherMs / events / 1000).toFixed(3)} s (${describeTime(new Map([...ft].filter(([name]) => name !== DRAINER)))})`, '≤ 0.05 s');
    // While a drainer holds the queue the trigger stays quiet: a completion is its outbox row only.
    const webhookRuns = ft.get('amocrm-lesson-completed')?.runs ?? 0;
    const [rung] = await s.database.sql('select count(*)::int as n from net._http_response where id > $1', [responsesAfter]);
    row(`${label}: webhook invocations / pg_net requests per event`,
      `${(webhookRuns / events).toFixed(3)} / ${(rung!.n / events).toFixed(3)} (${webhookRuns} invocations, ${rung!.n} pg_net requests for ${events} events)`);
    row(`${label}: 429s / 403s from amoCRM`, `${counts.tooMany} / ${forbidden}`, '0 / 0');
    row(`${label}: events lost (not done at the end)`, `${list.length - done} (${statuses.map((r) => `${r.status}=${r.n}`).join(', ') || 'no events'})${quiet ? '' : '; the stack was still busy 180 s after'}`, '0');
    row(`${label}: Netlify time limits`, `${over ? `${over} run(s) OVER the limit` : 'none over'}; longest: ${[...ft].map(([name, f]) => `${name} ${secs(f.longest)}`).join(', ')}`);
    row(`${label}: webhook answers`, await webhookAnswers(s, responsesAfter));
    const timeline = t.runs.filter((r) => r.name !== 'amocrm-lesson-completed' && r.startedAt >= from && r.startedAt < end)
      .map((r) => `${r.name.replace('amocrm-', '')} at ${secs(r.startedAt - lastCommit)} for ${secs(r.ms)}`);
    say(`${label}: drainer and scheduled runs (start after the last commit, duration): ${timeline.join('; ') || 'none'}`);
    if (counts.tooMany) say(`${label}: ${tooManyEvidence(s, t.sent.slice(sentFrom))}`);
    if (opts.lone) {
      row(`${label}: lone event arriving ${secs(loneAt - lastCommit, 0)} into the drain, commit → moved`, loneMs == null ? 'not moved within 60 s of the burst' : `${secs(loneMs)}`);
    }
    report(log.take());
  }

  function describeTime(ft: Map<string, { ms: number; runs: number }>) {
    return [...ft].map(([name, f]) => `${name.replace('amocrm-', '')} ${secs(f.ms)} in ${f.runs} run(s)`).join(', ') || 'no runs';
  }

  function report({ counts, drains }: ReturnType<typeof log.take>) {
    const top = [...counts].filter(([phrase]) => !phrase.startsWith('✅')).sort((a, b) => b[1] - a[1]).slice(0, 6);
    for (const [phrase, k] of top) say(`log ×${k}: ${phrase}`);
    for (const line of drains.slice(0, 12)) say(`log: ${line}`);
    if (drains.length > 12) say(`log: … ${drains.length - 12} more drain/scheduled-run lines`);
  }
}
