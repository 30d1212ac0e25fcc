// npm run bench [-- --burst 1000 --latency 100,300 --only write,calls,latency,burst,tokens,cold,topology,console,start,month --console-events N --month-days N --month-seed N]
// Prints a table of figures, all measured in this run, on embedded PGlite — or on the
// PostgreSQL server in DATABASE_URL. amoCRM is the local stand-in: it enforces 7 req/s,
// blocks the account (403) after repeated 429s as amoCRM does, and answers after a random
// delay (100–300 ms by default). Not a test: nothing here passes or fails, it measures.
// The topology section (bursts in production topology, scripts/bench/topology.ts) takes
// the longest: about 20–40 minutes at --burst 1000; --burst 100 is a quick look. Its parts
// (--topology): idle, cold, warm, ahead, and notes (a warm burst without and with a note and
// a task at every funnel step, side by side: a few minutes).
// The month (a month of an academy's traffic, compressed: scripts/bench/month.ts) runs only
// when --only names it: about 10 minutes, on PGlite only (it moves the database's clock).
import { writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createSyncStack, openStackDatabase, type Stack, type Student } from '../dev/stack/index.ts';
import { createLogger } from '../lib/log.ts';
import { deliverEvent } from '../lib/sync/process-event.ts';
import { runSweep } from '../lib/sync/sweep.ts';
import type { TopologyPart } from './bench/topology.ts';
import { CliFailure, exitOnUsageError, parseCommandLine, runMain, UsageError } from './cli.ts';

const SECTIONS = ['write', 'calls', 'latency', 'burst', 'tokens', 'cold', 'topology', 'console', 'start', 'month'];
/** Sections a run without --only leaves out (they take long): name them in --only. */
const ONLY_WHEN_NAMED = new Set(['month']);
const TOPOLOGY_PARTS: readonly string[] = ['idle', 'cold', 'warm', 'ahead', 'notes'];
const USAGE = `Usage: npm run bench [-- --burst N --latency MIN,MAX --events N --rows N --only ${SECTIONS.join(',')} --topology ${TOPOLOGY_PARTS.join(',')} --db-rtt MS --console-events N --month-days N --month-seed N --json FILE]`;
const args = exitOnUsageError(() => {
  const { values } = parseCommandLine(process.argv.slice(2), {
    burst: { type: 'string', default: '1000' },
    latency: { type: 'string', default: '100,300' },
    events: { type: 'string', default: '200' },
    rows: { type: 'string', default: '3000' },
    only: { type: 'string' },
    topology: { type: 'string', default: TOPOLOGY_PARTS.join(',') },
    'db-rtt': { type: 'string', default: '0' },
    'console-events': { type: 'string', default: '1000000' },
    'month-days': { type: 'string', default: '30' },
    'month-seed': { type: 'string', default: '17' },
    json: { type: 'string' },
  });
  for (const flag of ['burst', 'events', 'rows', 'console-events', 'month-days', 'month-seed'] as const) {
    if (!/^[1-9]\d*$/.test(values[flag])) throw new UsageError(`--${flag} must be a positive whole number (got "${values[flag]}")`);
  }
  if (Number(values['month-days']) < 7) throw new UsageError(`--month-days must be at least 7, room for the incidents (got "${values['month-days']}")`);
  if (!/^\d+$/.test(values['db-rtt'])) throw new UsageError(`--db-rtt must be a whole number of ms (got "${values['db-rtt']}")`);
  if (!/^\d+,\d+$/.test(values.latency)) throw new UsageError(`--latency must be MIN,MAX in ms, e.g. 100,300 (got "${values.latency}")`);
  const unknown = values.only?.split(',').filter((s) => !SECTIONS.includes(s));
  if (unknown?.length) throw new UsageError(`--only: unknown section(s) ${unknown.join(', ')}; the sections are ${SECTIONS.join(', ')}`);
  const unknownParts = values.topology.split(',').filter((s) => !TOPOLOGY_PARTS.includes(s));
  if (unknownParts.length) throw new UsageError(`--topology: unknown part(s) ${unknownParts.join(', ')}; the parts are ${TOPOLOGY_PARTS.join(', ')}`);
  return values;
}, USAGE);
const only = args.only ? new Set(args.only.split(',')) : undefined;
const want = (name: string) => (only ? only.has(name) : !ONLY_WHEN_NAMED.has(name));
const latency = args.latency.split(',').map(Number) as [number, number];
const databaseUrl = process.env.DATABASE_URL;
const dbLabel = databaseUrl ? 'PostgreSQL (DATABASE_URL)' : 'PGlite (PostgreSQL 17, embedded)';

const rows: { figure: string; value: string; target: string }[] = [];
const row = (figure: string, value: string, target = '') => {
  rows.push({ figure, value, target });
  console.log(`  ${figure}: ${value}${target ? `   (target: ${target})` : ''}`);
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const median = (xs: number[]) => pct(xs, 50);

// ---------------------------------------------------------------------------------
// The sync under measurement: the one stack builder (dev/stack/), on PGlite or on the
// PostgreSQL server in DATABASE_URL, with a stand-in at amoCRM's 7 req/s that blocks the
// account after repeated 429s, as amoCRM does.
// ---------------------------------------------------------------------------------
const openSync = (latencyMs: [number, number]) =>
  createSyncStack({ databaseUrl, connections: 12, standin: { latencyMs, ratePerSecond: 7 }, log: createLogger(() => undefined) });

let studentSeq = 0;
function addStudents(s: Stack, n: number, opts: { leadStatusId?: number } = {}): Promise<Student[]> {
  const batch = ++studentSeq;
  return s.addStudents(Array.from({ length: n }, (_, i) => `bench${batch}_${i + 1}@student.kz`), opts);
}

/** Students whose lesson 67 is already done and whose deal is remembered. */
async function addKnownStudents(s: Stack, n: number) {
  const students = await addStudents(s, n, { leadStatusId: s.layout.stages.lesson1 });
  await s.database.sql(`insert into amocrm.student_leads (user_id, lead_id) select u, l from unnest($1::uuid[], $2::bigint[]) as t(u, l)`,
    [students.map((x) => x.userId), students.map((x) => x.leadId)]);
  return students;
}

const expireStoredToken = (s: Stack) => s.database.sql(
  `update amocrm.system_settings set value = jsonb_set(value, '{expires_at}', to_jsonb((now() - interval '1 minute')::text)) where key = 'amocrm_tokens'`);
const blockedRow = (s: Stack) =>
  row('account blocked by amoCRM (403 after repeated 429s)', s.amo.requests.some((r) => r.status === 403) ? 'YES' : 'no', 'no');

// ---------------------------------------------------------------------------------
// 1. Student write cost
// ---------------------------------------------------------------------------------
async function benchWriteCost() {
  console.log(`\n[1] Student write cost (${dbLabel}), single-row INSERTs in autocommit`);
  const bdb = await openStackDatabase({ serverUrl: databaseUrl, pgNet: true });
  const n = Number(args.rows);
  try {
    // The baseline is lesson_progress without the trigger, and nothing else missing: the same
    // columns, defaults, primary key, indexes and checks (INCLUDING ALL), and the same foreign
    // keys (which LIKE never copies), so each INSERT pays the same lookups on both sides.
    await bdb.sql(`create table public.lesson_progress_plain (like public.lesson_progress including all)`);
    await bdb.sql(`do $$ declare c record; begin
        for c in select conname, pg_get_constraintdef(oid) as def from pg_constraint
                 where conrelid = 'public.lesson_progress'::regclass and contype = 'f' loop
          execute format('alter table public.lesson_progress_plain add constraint %I %s', c.conname || '_plain', c.def);
        end loop;
      end $$`);
    const [shape] = await bdb.sql(`select
        (select count(*) from pg_constraint where conrelid = 'public.lesson_progress'::regclass and contype = 'f')::int as fk,
        (select count(*) from pg_constraint where conrelid = 'public.lesson_progress_plain'::regclass and contype = 'f')::int as fk_plain,
        (select count(*) from pg_index where indrelid = 'public.lesson_progress'::regclass)::int as idx,
        (select count(*) from pg_index where indrelid = 'public.lesson_progress_plain'::regclass)::int as idx_plain,
        (select count(*) from pg_trigger where tgrelid = 'public.lesson_progress_plain'::regclass and not tgisinternal)::int as trig_plain`);
    if (shape!.fk !== shape!.fk_plain || shape!.idx !== shape!.idx_plain || shape!.trig_plain !== 0) {
      throw new Error(`baseline table differs from lesson_progress: ${JSON.stringify(shape)}`);
    }
    await bdb.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb('http://127.0.0.1:9/'::text)), ('webhook_secret', to_jsonb('whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=='::text))`);
    const users = (await bdb.sql(`insert into auth.users (email) select 'w' || g || '@s.kz' from generate_series(1, $1::int) g returning id`, [Math.ceil(n / 3)])).map((r) => r.id);
    const lessonsTrip = [67, 68, 69];
    // Interleaved row by row (A, B, A, B, …) so drift — fsync, cache, autovacuum — hits
    // both sides alike; medians, because commit times on a real disk have long tails.
    async function pair(lessonOf: (i: number) => number): Promise<{ plain: number[]; trig: number[] }> {
      const plain: number[] = [];
      const trig: number[] = [];
      for (let i = 0; i < n; i++) {
        const user = users[Math.floor(i / 3) % users.length];
        for (const [table, out] of (i % 2 ? [['lesson_progress', trig], ['lesson_progress_plain', plain]] : [['lesson_progress_plain', plain], ['lesson_progress', trig]]) as [string, number[]][]) {
          const t = performance.now();
          await bdb.sql(`insert into public.${table} (user_id, lesson_id) values ($1, $2)`, [user, lessonOf(i)]);
          out.push(performance.now() - t);
        }
      }
      return { plain, trig };
    }
    await pair(() => 66); // warm-up
    const trip = await pair((i) => lessonsTrip[i % 3]!);
    const events = (await bdb.sql('select count(*)::int as n from amocrm.sync_events'))[0]!.n;
    const other = await pair(() => 70);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    const fmt = (xs: number[]) => `${median(xs).toFixed(3)} / ${mean(xs).toFixed(3)} ms`;
    row('baseline table', `lesson_progress without its trigger: same ${shape!.idx} index(es) incl. primary key, same ${shape!.fk} foreign keys`);
    row('INSERT without trigger (median / mean)', fmt(trip.plain));
    row('INSERT, Tripwire lesson: event recorded + signed webhook queued (median / mean)', fmt(trip.trig));
    row('INSERT, other lesson (median / mean)', fmt(other.trig));
    row('write cost ratio, Tripwire lesson (median with / without)', `${(median(trip.trig) / median(trip.plain)).toFixed(2)}×`, '≤ 1.3×');
    row('write cost ratio, other lesson (median with / without)', `${(median(other.trig) / median(other.plain)).toFixed(2)}×`, '≤ 1.3×');
    row('network waits inside the INSERT', `none: pg_net only queues (${(await bdb.sql('select count(*)::int as n from net.http_request_queue'))[0]!.n} requests queued for ${events} events)`, 'none');
  } finally {
    await bdb.close();
  }
}

// ---------------------------------------------------------------------------------
// 2. amoCRM calls per event
// ---------------------------------------------------------------------------------
async function benchCallsPerEvent() {
  console.log('\n[2] amoCRM calls per event (every request the stand-in received, token calls included)');
  const s = await openSync([0, 0]);
  try {
    const deliver = async (userId: string, lesson: number) => {
      const id = await s.complete(userId, lesson);
      s.amo.resetCounts();
      const inv = s.runtime.invocation(10_000);
      await deliverEvent(inv.sync, id, inv.holder);
      return s.amo.counts().total;
    };
    const [a, b] = await addStudents(s, 2);
    const firstCold = await deliver(a!.userId, 67);
    const firstWarm = await deliver(b!.userId, 67);
    const later = await deliver(b!.userId, 68);
    const last = await deliver(b!.userId, 69);
    row('first event of a student (pipeline order not cached yet)', `${firstCold} calls`);
    row('first event of a student', `${firstWarm} calls`, '≤ 2');
    row('later event of the same student (lesson 68, 69)', `${later}, ${last} calls`, '1');
    await expireStoredToken(s);
    const [c] = await addStudents(s, 1);
    const withRefresh = await deliver(c!.userId, 67);
    row('first event when the access token has expired', `${withRefresh} calls (1 refresh)`);
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------
// Full path: trigger → pg_net worker → function server → stand-in (Stack.serve).
// ---------------------------------------------------------------------------------
/** Resolves when the lead reaches `statusId`; polls the stand-in's state every 5 ms. */
function watchLeads(s: Stack) {
  const waiting = new Map<number, { status: number; resolve: (t: number) => void }>();
  const timer = setInterval(() => {
    for (const [id, w] of waiting) {
      if (s.amo.lead(id)?.statusId === w.status) { waiting.delete(id); w.resolve(performance.now()); }
    }
  }, 5);
  return {
    until: (leadId: number, status: number) => new Promise<number>((resolve) => waiting.set(leadId, { status, resolve })),
    stop: () => clearInterval(timer),
    pending: () => waiting.size,
  };
}

// ---------------------------------------------------------------------------------
// 3. Latency
// ---------------------------------------------------------------------------------
async function benchLatency() {
  const total = Number(args.events);
  console.log(`\n[3] Latency: INSERT commit → deal in the new stage, ${total} events at 2/s, amoCRM latency ${latency.join('–')} ms`);
  const s = await openSync(latency);
  await s.serve({ pollMs: 5 });
  const watch = watchLeads(s);
  try {
    // Half the events are students' first lesson, half a later lesson of a known student.
    const fresh = await addStudents(s, total / 2);
    const known = await addKnownStudents(s, total / 2);
    const { lesson1, lesson2 } = s.layout.stages;
    const plan = fresh.flatMap((st, i) => [{ st, lesson: 67, stage: lesson1 }, { st: known[i]!, lesson: 68, stage: lesson2 }]);
    const latencies: Promise<number>[] = [];
    const started = performance.now();
    for (let i = 0; i < plan.length; i++) {
      const { st, lesson, stage } = plan[i]!;
      await sleep(Math.max(0, started + i * 500 - performance.now()));
      const seen = watch.until(st.leadId, stage);
      await s.database.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [st.userId, lesson]);
      const committed = performance.now();
      latencies.push(seen.then((t) => t - committed));
    }
    const all = await Promise.race([Promise.all(latencies), sleep(120_000).then(() => null)]);
    if (!all) { row('latency', `did not finish: ${watch.pending()} deals not moved in 120 s`); return; }
    row('latency p50', `${median(all).toFixed(0)} ms`);
    row('latency p95', `${pct(all, 95).toFixed(0)} ms`);
    row('latency max', `${Math.max(...all).toFixed(0)} ms`);
    row('429s from amoCRM during the latency run', `${s.amo.counts().tooMany}`, '0');
    blockedRow(s);
  } finally {
    watch.stop();
    await s.close();
  }
}

// ---------------------------------------------------------------------------------
// 4. Burst
// ---------------------------------------------------------------------------------
async function benchBurst() {
  const n = Number(args.burst);
  console.log(`\n[4] Burst: ${n} completions of lesson 68 committed at once (a webinar ending), amoCRM latency ${latency.join('–')} ms`);
  const s = await openSync(latency);
  await s.serve({ pollMs: 5 });
  const lesson2 = s.layout.stages.lesson2;
  try {
    const students = await addKnownStudents(s, n);
    s.amo.resetCounts();
    const t0 = performance.now();
    // Committed within a few seconds: batches of 50 rows, each its own transaction.
    for (let i = 0; i < n; i += 50) {
      const chunk = students.slice(i, i + 50);
      await s.database.sql('insert into public.lesson_progress (user_id, lesson_id) select u, 68 from unnest($1::uuid[]) u', [chunk.map((x) => x.userId)]);
    }
    const committedMs = performance.now() - t0;
    // The webhooks arrive (pg_net sends them all at once); what they cannot fit under the
    // rate limit is left queued; the scheduled run drains it. Here the sweep is run back
    // to back instead of every two minutes, to measure the drain rate itself.
    await sleep(4_000);
    let sweeps = 0;
    const deadline = performance.now() + 240_000;
    while (performance.now() < deadline) {
      const moved = students.filter((x) => s.amo.lead(x.leadId)!.statusId === lesson2).length;
      if (moved === n) break;
      await s.database.sql(`update amocrm.sync_events set next_attempt_at = now() where status in ('pending', 'failed') and retryable is not false`);
      await runSweep(s.runtime, { budgetMs: 22_000 });
      sweeps++;
    }
    const elapsed = (performance.now() - t0) / 1000;
    const moved = students.filter((x) => s.amo.lead(x.leadId)!.statusId === lesson2).length;
    const counts = s.amo.counts();
    const statuses = await s.database.sql(`select status, count(*)::int as n from amocrm.sync_events where lesson_id = 68 group by status order by status`);
    const callsPerEvent = counts.total / Math.max(1, moved);
    row('committed', `${n} INSERTs in ${(committedMs / 1000).toFixed(1)} s`);
    row('time until all moved', moved === n ? `${elapsed.toFixed(1)} s (${sweeps} sweep runs back to back)` : `not all: ${moved}/${n} after ${elapsed.toFixed(0)} s`);
    row('429s received', String(counts.tooMany), '0');
    blockedRow(s);
    row('events lost', `${n - statuses.reduce((a, r) => a + r.n, 0)} (statuses: ${statuses.map((r) => `${r.status}=${r.n}`).join(', ')})`, '0');
    row('amoCRM requests / PATCH calls', `${counts.total} / ${counts.patches} (${callsPerEvent.toFixed(2)} requests per event)`);
    row('achieved rate vs ceiling', `${(moved / elapsed).toFixed(1)} events/s; ceiling at 7 req/s and ${callsPerEvent.toFixed(2)} req/event = ${(7 / callsPerEvent).toFixed(1)} events/s`);
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------
// 5. Token chain
// ---------------------------------------------------------------------------------
async function benchTokens() {
  console.log('\n[5] Token chain: 50 concurrent invocations on an expired token');
  const s = await openSync([20, 60]);
  try {
    const students = await addKnownStudents(s, 50);
    const ids: number[] = [];
    for (const st of students) ids.push(await s.complete(st.userId, 68));
    await expireStoredToken(s);
    s.amo.resetCounts();
    const rt = databaseUrl ? s.runtimeOver(await s.database.newDb(50)) : s.runtime;
    const t0 = performance.now();
    const results = await Promise.all(ids.map((id) => { const inv = rt.invocation(60_000); return deliverEvent(inv.sync, id, inv.holder); }));
    const failed = results.filter((r) => !r.claimed || r.outcome.status !== 'done').length;
    row('refresh calls made', String(s.amo.counts().refreshes), '1');
    row('invocations failed', `${failed} of 50 (all done in ${((performance.now() - t0) / 1000).toFixed(1)} s, paced by the shared limit)`, '0');
    row('429s received', String(s.amo.counts().tooMany), '0');
    blockedRow(s);
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------
// 7. Bursts in production topology
// ---------------------------------------------------------------------------------
async function benchProductionTopology() {
  const n = Number(args.burst);
  console.log(`\n[7] Bursts in production topology (${dbLabel}): ${n} students per variant; pg_net ≤ 200 in flight, functions held to Netlify's limits, the scheduled run on its cron only; amoCRM at 7 req/s, ${latency.join('–')} ms, blocking on; AMOCRM_MAX_RPS 6`);
  const { benchTopology } = await import('./bench/topology.ts');
  const parts = new Set(args.topology.split(',') as TopologyPart[]);
  const dbRoundTripMs = Number(args['db-rtt']);
  if (dbRoundTripMs) console.log(`  … each database call of the functions takes ${dbRoundTripMs} ms more (--db-rtt: the round trip to PostgREST)`);
  await benchTopology({ n, latencyMs: latency, databaseUrl, row, parts, dbRoundTripMs });
}

// ---------------------------------------------------------------------------------
// 6. Cold start
// ---------------------------------------------------------------------------------
// The figure comes from the functions packaged as Netlify packages them, imported on the
// deploy's Node beside a one-dependency function packaged in the same run
// (scripts/bench/cold-start.ts). Loaded only for this section: packaging is heavy.
async function benchColdStart() {
  console.log('\n[6] Cold start: the functions as Netlify packages them, each imported in a fresh process on the deploy\'s Node, against a one-dependency function');
  const { measureColdStart, formatColdStart, ONE_DEPENDENCY } = await import('./bench/cold-start.ts');
  const figures = await measureColdStart({ log: (line) => console.log(`  … ${line}`) });
  console.log(formatColdStart(figures).replace(/^/gm, '  '));
  for (const f of figures) {
    if (f.name === ONE_DEPENDENCY) row(`${f.name} (yardstick): cold import`, `${f.medianMs} ms median`);
    else row(`${f.name}: cold import`, `${f.medianMs} ms median = ${f.ratio}× the one-dependency function`, '≤ 2×');
  }
}

// ---------------------------------------------------------------------------------
// 8. The operator console with a million events in the outbox (scripts/bench/console.ts):
// every view timed, median of five after a warm-up. Target ≤ 300 ms on PostgreSQL 15.
async function benchConsole() {
  const events = Number(args['console-events']);
  console.log(`\n[8] Operator console (${dbLabel}): ${events} events over 30 days, every view timed`);
  const { measureConsole } = await import('./bench/console.ts');
  const result = await measureConsole({ databaseUrl, events, log: (line) => console.log(`  … ${line}`) });
  for (const f of result.figures) {
    row(`console, ${f.view} (${result.events} events)`, `${f.medianMs.toFixed(1)} ms median, worst of 5 ${f.worstMs.toFixed(1)} ms`, '≤ 300 ms');
  }
}

// ---------------------------------------------------------------------------------
// 9. `npm start` to its first line: PGlite with the migrations, the stand-in, the functions.
// Three fresh processes (PORT=0: any free port), each stopped once it has said it is up.
async function benchStart() {
  console.log('\n[9] npm start: from the command to "Встроенный режим запущен"');
  const { spawn } = await import('node:child_process');
  const times: number[] = [];
  for (let i = 0; i < 3; i++) {
    const t = performance.now();
    const child = spawn(process.execPath, ['--import', 'tsx', 'dev/start.ts'], { env: { ...process.env, PORT: '0' }, stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve, reject) => {
      let seen = '';
      child.stdout!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('Встроенный режим запущен')) resolve();
      });
      child.once('exit', (code) => reject(new Error(`npm start exited (${code}) before it was up`)));
    });
    times.push(performance.now() - t);
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
    console.log(`  … run ${i + 1}: ${(times.at(-1)! / 1000).toFixed(1)} s`);
  }
  row('npm start: up (first line), median of 3', `${(median(times) / 1000).toFixed(1)} s (runs: ${times.map((x) => (x / 1000).toFixed(1)).join(', ')} s)`);
}

// ---------------------------------------------------------------------------------
// 10. A month of an academy's traffic, compressed (scripts/bench/month.ts).
async function benchMonthSection() {
  const { benchMonth, MONTH_DEFAULTS, MONTH_LATENCY_MS } = await import('./bench/month.ts');
  const days = Number(args['month-days']);
  console.log(`\n[10] A month, compressed (${dbLabel}): ${days} days of an academy's traffic and incidents, quiet time skipped; amoCRM latency ${MONTH_LATENCY_MS.join('–')} ms`);
  await benchMonth({ scale: { ...MONTH_DEFAULTS, days, seed: Number(args['month-seed']) }, row });
}

await runMain(async () => {
  // The month moves the database's clock with JavaScript's: PGlite's now() follows it, a server's does not.
  if (want('month') && databaseUrl) throw new CliFailure('the month section runs on PGlite only (it moves the database\'s clock with JavaScript\'s, which a PostgreSQL server\'s now() does not follow) → run it without DATABASE_URL');
  console.log(`amocrm-lesson-sync benchmark — ${new Date().toISOString()}`);
  console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; database: ${dbLabel}`);
  const t0 = performance.now();
  if (want('write')) await benchWriteCost();
  if (want('calls')) await benchCallsPerEvent();
  if (want('latency')) await benchLatency();
  if (want('burst')) await benchBurst();
  if (want('tokens')) await benchTokens();
  if (want('cold')) await benchColdStart();
  if (want('topology')) await benchProductionTopology();
  if (want('console')) await benchConsole();
  if (want('start')) await benchStart();
  if (want('month')) await benchMonthSection();

  console.log(`\n| figure | value | target |\n|---|---|---|`);
  for (const r of rows) console.log(`| ${r.figure} | ${r.value} | ${r.target} |`);
  if (args.json) writeFileSync(args.json, JSON.stringify(rows, null, 2));
  console.log(`\n✅ benchmark done in ${((performance.now() - t0) / 1000).toFixed(0)} s: ${rows.length} figure(s)${args.json ? `, written to ${args.json}` : ''}`);
  return 0;
}, USAGE);
