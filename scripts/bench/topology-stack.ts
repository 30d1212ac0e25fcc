// The production topology the burst benchmark runs in: the real function modules served
// as Netlify runs them (background functions answer 202 and run on; every invocation's
// wall time recorded and held against Netlify's limit), a pg_net stand-in that delivers
// with pg_net's concurrency (200 requests in flight), and the scheduled run invoked only
// on its cron cadence. Nothing else kicks the queue: whatever the design wakes, it wakes
// itself (the drainer through AMOCRM_DRAIN_URL, derived from the site's URL as on Netlify).
//
// It is Stack.serve() (dev/stack/index.ts) with two differences: the pg_net worker is
// capped, and the server reports each invocation's time.
import { axiosTransport, type Transport } from '../../lib/amocrm/http.ts';
import { loadConfig } from '../../lib/config.ts';
import type { Db } from '../../lib/db/port.ts';
import { buildRuntime, installRuntime } from '../../lib/runtime.ts';
import { startPgNetWorker } from '../../dev/pgnet-worker.ts';
import { startFunctionServer, type FunctionRun } from '../../dev/server.ts';
import type { Stack } from '../../dev/stack/index.ts';
import { errorText } from '../../lib/log.ts';

/** pg_net takes pg_net.batch_size requests at a time: 200 on Supabase. */
export const PG_NET_IN_FLIGHT = 200;
/** The scheduled run's cron, `*\/2 * * * *`: every even minute of UTC wall-clock time. */
export const SCHEDULE_PERIOD_MS = 120_000;

/** A request as the sync handed it to its transport (after its rate slot), on Date.now()'s clock like the stand-in's. */
export interface Sent { at: number; method: string; path: string }

export interface Topology {
  url: string;
  /** Every amoCRM request the functions sent, when they handed it to the transport. */
  sent: Sent[];
  /** Database calls the functions made, per SQL function (running totals). */
  rpcs: Map<string, number>;
  /** Every finished invocation, in the order they ended. */
  runs: FunctionRun[];
  /** performance.now() of each scheduled tick. */
  ticks: number[];
  /** performance.now() of the next scheduled tick. */
  nextTickAt(): number;
  /** Resolves once nothing is queued for pg_net, no function runs, no event is processing and no drainer holds the lease. */
  settle(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

export interface TopologyOptions {
  pollMs?: number;
  /**
   * Added before every database call of the functions: the round trip from a Netlify
   * function to the project's PostgREST, which a local database does not have. Default 0.
   */
  dbRoundTripMs?: number;
}

export async function serveProductionTopology(s: Stack, { pollMs = 5, dbRoundTripMs = 0 }: TopologyOptions = {}): Promise<Topology> {
  const runs: FunctionRun[] = [];
  const ticks: number[] = [];
  let running = 0;
  const server = await startFunctionServer(0, '127.0.0.1', {
    onStart: () => { running++; },
    onRun: (r) => { runs.push(r); running--; },
  });
  const config = loadConfig({ ...s.env, URL: server.url });
  // The production transport, noting when each request leaves the sync: a 429 can then be
  // told apart as slots taken too close together, or requests delayed after their slot.
  const sent: Sent[] = [];
  const axios = axiosTransport(config.amocrm.baseUrl, config.amocrm.timeoutMs);
  const transport: Transport = {
    send(req, bearer) {
      sent.push({ at: Date.now(), method: req.method, path: req.path });
      return axios.send(req, bearer);
    },
  };
  const rpcs = new Map<string, number>();
  const db: Db = {
    async rpc(fn, args) {
      rpcs.set(fn, (rpcs.get(fn) ?? 0) + 1);
      if (dbRoundTripMs > 0) await new Promise((r) => setTimeout(r, dbRoundTripMs));
      return s.db.rpc(fn, args);
    },
  };
  installRuntime(buildRuntime(config, db, { log: s.log, transport }));
  await s.database.sql(`insert into amocrm.system_settings (key, value) values
      ('webhook_url', to_jsonb($1::text)), ('webhook_secret', to_jsonb($2::text))
    on conflict (key) do update set value = excluded.value`, [`${server.url}/api/amocrm/lesson-completed`, s.env.AMOCRM_WEBHOOK_SECRET]);
  const worker = startPgNetWorker((text, params) => s.database.sql(text, params), { intervalMs: pollMs, maxInFlight: PG_NET_IN_FLIGHT });

  // The scheduled run, as Netlify's cron fires it (POST, no custom payload of ours).
  const sweeps = new Set<Promise<unknown>>();
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  const msToNextTick = () => SCHEDULE_PERIOD_MS - (Date.now() % SCHEDULE_PERIOD_MS);
  const schedule = () => {
    timer = setTimeout(() => {
      if (closed) return;
      ticks.push(performance.now());
      const p = fetch(`${server.url}/.netlify/functions/amocrm-sweep`, {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ next_run: new Date(Date.now() + SCHEDULE_PERIOD_MS).toISOString() }),
      }).then((r) => r.arrayBuffer()).catch((err) => console.error(`  … scheduled run not invoked: ${errorText(err)}`))
        .finally(() => sweeps.delete(p));
      sweeps.add(p);
      schedule();
    }, msToNextTick());
  };
  schedule();

  return {
    url: server.url,
    sent,
    rpcs,
    runs,
    ticks,
    nextTickAt: () => performance.now() + msToNextTick(),
    async settle(timeoutMs) {
      const deadline = performance.now() + timeoutMs;
      while (performance.now() < deadline) {
        const [row] = await s.database.sql(`select (select count(*) from net.http_request_queue)::int
            + (select count(*) from amocrm.sync_events where status = 'processing')::int
            + (select count(*) from amocrm.drainer where holder is not null)::int as n`);
        if (row!.n === 0 && worker.inFlight() === 0 && running === 0) return true;
        await new Promise((r) => setTimeout(r, 100));
      }
      return false;
    },
    async close() {
      closed = true;
      clearTimeout(timer);
      await worker.stop();
      await Promise.allSettled([...sweeps]);
      server.server.closeAllConnections?.();
      await new Promise<void>((r) => server.server.close(() => r()));
    },
  };
}
