// npm run bench [-- --burst 1000 --latency 100,300 --only write,calls,latency,burst,tokens,cold]
// Prints a table of figures, all measured in this run, on embedded PGlite — or on the
// PostgreSQL server in DATABASE_URL. amoCRM is the local stand-in: it enforces 7 req/s
// and answers after a random delay (100–300 ms by default). Not a test: nothing here
// passes or fails, it measures.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { startAmoStandin, type AmoStandin } from '../dev/amocrm-standin/index.ts';
import { createPostgresDatabase, openPglite } from '../dev/database.ts';
import { startPgNetWorker, type SqlRunner } from '../dev/pgnet-worker.ts';
import { startFunctionServer } from '../dev/server.ts';
import { loadConfig } from '../lib/config.ts';
import type { Db } from '../lib/db/port.ts';
import { pgliteDb, pgPoolDb, poolForRpc } from '../lib/db/sql-adapters.ts';
import { createLogger } from '../lib/log.ts';
import { buildRuntime, installRuntime, type Runtime } from '../lib/runtime.ts';
import { deliverEvent } from '../lib/sync/process-event.ts';
import { runSweep } from '../lib/sync/sweep.ts';

const { values: args } = parseArgs({
  options: {
    burst: { type: 'string', default: '1000' },
    latency: { type: 'string', default: '100,300' },
    events: { type: 'string', default: '200' },
    rows: { type: 'string', default: '3000' },
    only: { type: 'string' },
    json: { type: 'string' },
  },
});
const only = args.only ? new Set(args.only.split(',')) : undefined;
const want = (name: string) => !only || only.has(name);
const latency = args.latency!.split(',').map(Number) as [number, number];
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
// A database (PGlite or PostgreSQL) with the migrations, as superuser SQL + the Db port.
// ---------------------------------------------------------------------------------
interface BenchDb { sql: SqlRunner; db: Db; newDb(n: number): Promise<Db>; close(): Promise<void> }

async function openDb(): Promise<BenchDb> {
  if (databaseUrl) {
    const created = await createPostgresDatabase(databaseUrl, { pgNet: true });
    const pools = [await poolForRpc(created.url, 12)];
    return {
      sql: async (text, params) => (await created.admin.query(text, params as unknown[])).rows,
      db: pgPoolDb(pools[0]!),
      newDb: async (n) => { const p = await poolForRpc(created.url, n); pools.push(p); return pgPoolDb(p); },
      close: async () => {
        for (const p of [...pools, created.admin]) p.on('error', () => undefined);
        await Promise.all(pools.map((p) => p.end()));
        await created.drop();
      },
    };
  }
  const pg = await openPglite({ pgNet: true });
  return {
    sql: async (text, params) => (await pg.query<any>(text, params as unknown[])).rows,
    db: pgliteDb(pg),
    newDb: async () => pgliteDb(pg),
    close: () => pg.close(),
  };
}

const PIPELINE = 9_100_001;
const STAGES = { incoming: 9101, l1: 9111, l2: 9112, l3: 9113, paid: 9120 };

interface Sync { bdb: BenchDb; amo: AmoStandin; rt: Runtime; env: Record<string, string>; close(): Promise<void> }

async function openSync(latencyMs: [number, number]): Promise<Sync> {
  const bdb = await openDb();
  const amo = await startAmoStandin({ latencyMs, ratePerSecond: 7 });
  amo.addPipeline({ id: PIPELINE, name: 'Tripwire', statuses: [
    { id: STAGES.incoming, name: 'Новая заявка', sort: 10 }, { id: STAGES.l1, name: 'Урок 1', sort: 20 },
    { id: STAGES.l2, name: 'Урок 2', sort: 30 }, { id: STAGES.l3, name: 'Урок 3', sort: 40 }, { id: STAGES.paid, name: 'Оплата', sort: 50 }] });
  const env = {
    AMOCRM_BASE_URL: amo.url, AMOCRM_CLIENT_ID: 'standin-client-id', AMOCRM_CLIENT_SECRET: 'standin-client-secret',
    AMOCRM_REDIRECT_URI: 'https://example.test/oauth', AMOCRM_PIPELINE_ID: String(PIPELINE),
    AMOCRM_STAGE_LESSON_1: String(STAGES.l1), AMOCRM_STAGE_LESSON_2: String(STAGES.l2), AMOCRM_STAGE_LESSON_3: String(STAGES.l3),
    AMOCRM_WEBHOOK_SECRET: 'bench-webhook-secret-0123456789', AMOCRM_REPLAY_TOKEN: 'bench-replay-token-0123456789',
  };
  const rt = buildRuntime(loadConfig(env), bdb.db, { log: createLogger(() => undefined) });
  const pair = amo.issueTokens();
  await bdb.db.rpc('amocrm_store_tokens', { p_kind: 'oauth', p_access_token: pair.access_token, p_refresh_token: pair.refresh_token, p_expires_at: new Date(Date.now() + 86_400_000) });
  return { bdb, amo, rt, env, close: async () => { await amo.close(); await bdb.close(); } };
}

let studentSeq = 0;
async function addStudents(s: Sync, n: number, opts: { cachedAt?: number } = {}): Promise<{ userId: string; leadId: number }[]> {
  const base = ++studentSeq * 100_000;
  const users = await s.bdb.sql(
    `insert into auth.users (email) select 'bench' || $1::int || '_' || g || '@student.kz' from generate_series(1, $2::int) g returning id, email`, [base, n]);
  return users.map((u, i) => {
    const leadId = 70_000_000 + base + i;
    s.amo.addLead({ id: leadId, name: u.email, pipelineId: PIPELINE, statusId: opts.cachedAt ?? STAGES.incoming, updatedAt: 1_700_000_000 });
    s.amo.addContact({ id: 60_000_000 + base + i, name: `Студент ${i}`, emails: [u.email], leadIds: [leadId] });
    return { userId: u.id as string, leadId };
  });
}

/** Students whose lesson 67 is already done and whose deal is remembered. */
async function addKnownStudents(s: Sync, n: number) {
  const students = await addStudents(s, n, { cachedAt: STAGES.l1 });
  await s.bdb.sql(`insert into amocrm.student_leads (user_id, lead_id) select u, l from unnest($1::uuid[], $2::bigint[]) as t(u, l)`,
    [students.map((x) => x.userId), students.map((x) => x.leadId)]);
  return students;
}

// ---------------------------------------------------------------------------------
// 1. Student write cost
// ---------------------------------------------------------------------------------
async function benchWriteCost() {
  console.log(`\n[1] Student write cost (${dbLabel}), single-row INSERTs in autocommit`);
  const bdb = await openDb();
  const n = Number(args.rows);
  try {
    await bdb.sql(`create table public.lesson_progress_plain (like public.lesson_progress including defaults)`);
    await bdb.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb('http://127.0.0.1:9/'::text)), ('webhook_secret', to_jsonb('whsec_YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=='::text))`);
    const users = (await bdb.sql(`insert into auth.users (email) select 'w' || g || '@s.kz' from generate_series(1, $1::int) g returning id`, [Math.ceil(n / 3)])).map((r) => r.id);
    const lessonsTrip = [67, 68, 69];
    async function timeInserts(table: string, lessonOf: (i: number) => number): Promise<number[]> {
      const times: number[] = [];
      for (let i = 0; i < n; i++) {
        const t = performance.now();
        await bdb.sql(`insert into public.${table} (user_id, lesson_id) values ($1, $2)`, [users[Math.floor(i / 3) % users.length], lessonOf(i)]);
        times.push(performance.now() - t);
      }
      return times;
    }
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
      await s.bdb.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [userId, lesson]);
      const [e] = await s.bdb.sql('select id from amocrm.sync_events where user_id = $1 and lesson_id = $2', [userId, lesson]);
      s.amo.resetCounts();
      const inv = s.rt.invocation(10_000);
      await deliverEvent(inv.sync, Number(e!.id), inv.holder);
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
    await s.bdb.sql(`update amocrm.system_settings set value = jsonb_set(value, '{expires_at}', to_jsonb((now() - interval '1 minute')::text)) where key = 'amocrm_tokens'`);
    const [c] = await addStudents(s, 1);
    const withRefresh = await deliver(c!.userId, 67);
    row('first event when the access token has expired', `${withRefresh} calls (1 refresh)`);
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------
// Full path helpers: trigger → pg_net worker → function server → stand-in.
// ---------------------------------------------------------------------------------
async function fullPath(s: Sync) {
  installRuntime(s.rt);
  const server = await startFunctionServer(0);
  await s.bdb.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb($1::text)), ('webhook_secret', to_jsonb($2::text)) on conflict (key) do update set value = excluded.value`,
    [`${server.url}/api/amocrm/lesson-completed`, s.env.AMOCRM_WEBHOOK_SECRET]);
  const worker = startPgNetWorker(s.bdb.sql, 5);
  return {
    async close() {
      await worker.stop();
      server.server.closeAllConnections?.();
      await new Promise<void>((r) => server.server.close(() => r()));
    },
  };
}

/** Resolves when the lead reaches `statusId`; polls the stand-in's state every 5 ms. */
function watchLeads(s: Sync) {
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
  const path = await fullPath(s);
  const watch = watchLeads(s);
  try {
    // Half the events are students' first lesson, half a later lesson of a known student.
    const fresh = await addStudents(s, total / 2);
    const known = await addKnownStudents(s, total / 2);
    const plan = fresh.flatMap((st, i) => [{ st, lesson: 67, stage: STAGES.l1 }, { st: known[i]!, lesson: 68, stage: STAGES.l2 }]);
    const latencies: Promise<number>[] = [];
    const started = performance.now();
    for (let i = 0; i < plan.length; i++) {
      const { st, lesson, stage } = plan[i]!;
      await sleep(Math.max(0, started + i * 500 - performance.now()));
      const seen = watch.until(st.leadId, stage);
      await s.bdb.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [st.userId, lesson]);
      const committed = performance.now();
      latencies.push(seen.then((t) => t - committed));
    }
    const all = await Promise.race([Promise.all(latencies), sleep(120_000).then(() => null)]);
    if (!all) { row('latency', `did not finish: ${watch.pending()} deals not moved in 120 s`); return; }
    row('latency p50', `${median(all).toFixed(0)} ms`);
    row('latency p95', `${pct(all, 95).toFixed(0)} ms`);
    row('latency max', `${Math.max(...all).toFixed(0)} ms`);
    row('429s from amoCRM during the latency run', `${s.amo.counts().tooMany}`, '0');
  } finally {
    watch.stop();
    await path.close();
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
  const path = await fullPath(s);
  try {
    const students = await addKnownStudents(s, n);
    s.amo.resetCounts();
    const t0 = performance.now();
    // Committed within a few seconds: batches of 50 rows, each its own transaction.
    for (let i = 0; i < n; i += 50) {
      const chunk = students.slice(i, i + 50);
      await s.bdb.sql('insert into public.lesson_progress (user_id, lesson_id) select u, 68 from unnest($1::uuid[]) u', [chunk.map((x) => x.userId)]);
    }
    const committedMs = performance.now() - t0;
    // The webhooks arrive (pg_net sends them all at once); what they cannot fit under the
    // rate limit is left queued; the scheduled run drains it. Here the sweep is run back
    // to back instead of every two minutes, to measure the drain rate itself.
    await sleep(4_000);
    let sweeps = 0;
    const deadline = performance.now() + 240_000;
    while (performance.now() < deadline) {
      const moved = students.filter((x) => s.amo.lead(x.leadId)!.statusId === STAGES.l2).length;
      if (moved === n) break;
      await s.bdb.sql(`update amocrm.sync_events set next_attempt_at = now() where status in ('pending', 'failed') and retryable is not false`);
      await runSweep(s.rt, { budgetMs: 22_000 });
      sweeps++;
    }
    const elapsed = (performance.now() - t0) / 1000;
    const moved = students.filter((x) => s.amo.lead(x.leadId)!.statusId === STAGES.l2).length;
    const counts = s.amo.counts();
    const statuses = await s.bdb.sql(`select status, count(*)::int as n from amocrm.sync_events where lesson_id = 68 group by status order by status`);
    const callsPerEvent = counts.total / Math.max(1, moved);
    row('committed', `${n} INSERTs in ${(committedMs / 1000).toFixed(1)} s`);
    row('time until all moved', moved === n ? `${elapsed.toFixed(1)} s (${sweeps} sweep runs back to back)` : `not all: ${moved}/${n} after ${elapsed.toFixed(0)} s`);
    row('429s received', String(counts.tooMany), '0');
    row('events lost', `${n - statuses.reduce((a, r) => a + r.n, 0)} (statuses: ${statuses.map((r) => `${r.status}=${r.n}`).join(', ')})`, '0');
    row('amoCRM requests / PATCH calls', `${counts.total} / ${counts.patches} (${callsPerEvent.toFixed(2)} requests per event)`);
    row('achieved rate vs ceiling', `${(moved / elapsed).toFixed(1)} events/s; ceiling at 7 req/s and ${callsPerEvent.toFixed(2)} req/event = ${(7 / callsPerEvent).toFixed(1)} events/s`);
  } finally {
    await path.close();
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
    for (const st of students) {
      await s.bdb.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, 68)', [st.userId]);
      ids.push(Number((await s.bdb.sql('select id from amocrm.sync_events where user_id = $1 and lesson_id = 68', [st.userId]))[0]!.id));
    }
    await s.bdb.sql(`update amocrm.system_settings set value = jsonb_set(value, '{expires_at}', to_jsonb((now() - interval '1 minute')::text)) where key = 'amocrm_tokens'`);
    s.amo.resetCounts();
    const rt = databaseUrl ? buildRuntime(loadConfig(s.env), await s.bdb.newDb(50), { log: createLogger(() => undefined) }) : s.rt;
    const t0 = performance.now();
    const results = await Promise.all(ids.map((id) => { const inv = rt.invocation(60_000); return deliverEvent(inv.sync, id, inv.holder); }));
    const failed = results.filter((r) => !r.claimed || r.outcome.status !== 'done').length;
    row('refresh calls made', String(s.amo.counts().refreshes), '1');
    row('invocations failed', `${failed} of 50 (all done in ${((performance.now() - t0) / 1000).toFixed(1)} s, paced by the shared limit)`, '0');
    row('429s received', String(s.amo.counts().tooMany), '0');
  } finally {
    await s.close();
  }
}

// ---------------------------------------------------------------------------------
// 6. Cold start
// ---------------------------------------------------------------------------------
async function benchColdStart() {
  console.log('\n[6] Cold start: each function bundled with esbuild as Netlify does, imported in a fresh Node process (median of 10)');
  const dir = mkdtempSync(join(tmpdir(), 'amocrm-bench-'));
  const functionsDir = join(import.meta.dirname, '..', 'functions');
  for (const file of readdirSync(functionsDir).filter((f) => f.endsWith('.ts'))) {
    const out = join(dir, file.replace(/\.ts$/, '.mjs'));
    await build({
      entryPoints: [join(functionsDir, file)], outfile: out, bundle: true, platform: 'node', format: 'esm', target: 'node22',
      minify: false, logLevel: 'silent',
      // CommonJS dependencies (axios, ws) call require(): give the ESM bundle one, as Netlify's bundler does.
      banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
    });
    const probe = join(dir, `probe-${file}.mjs`);
    writeFileSync(probe, `const t = performance.now(); await import(${JSON.stringify(out)}); console.log(performance.now() - t);`);
    const times = Array.from({ length: 10 }, () => Number(execFileSync(process.execPath, [probe], { encoding: 'utf8' }).trim()));
    row(`${file.replace(/\.ts$/, '')}: bundle / import`, `${(statSync(out).size / 1024).toFixed(0)} KB / ${median(times).toFixed(1)} ms`);
  }
}

console.log(`amocrm-lesson-sync benchmark — ${new Date().toISOString()}`);
console.log(`machine: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; database: ${dbLabel}`);
const t0 = performance.now();
if (want('write')) await benchWriteCost();
if (want('calls')) await benchCallsPerEvent();
if (want('latency')) await benchLatency();
if (want('burst')) await benchBurst();
if (want('tokens')) await benchTokens();
if (want('cold')) await benchColdStart();

console.log(`\n| figure | value | target |\n|---|---|---|`);
for (const r of rows) console.log(`| ${r.figure} | ${r.value} | ${r.target} |`);
console.log(`\ntotal bench time: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
if (args.json) writeFileSync(args.json, JSON.stringify(rows, null, 2));
process.exit(0);
