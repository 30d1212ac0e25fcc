// The month's stack, in production topology as the topology section runs it: the real
// function modules served as Netlify runs them (background functions answer 202 and run
// on), the pg_net stand-in delivering the trigger's webhooks 200 at a time, amoCRM's
// account hook subscribed to the crm-events function, alerts sent to the local Telegram
// Bot API stand-in. The scheduled run is not on a timer: the month invokes it (POST, as
// Netlify's cron does) at the virtual times it chooses. Everything reads the month's clock
// (month-clock.ts), which must be installed before this is built.
import { loadConfig } from '../../lib/config.ts';
import { buildRuntime, installRuntime } from '../../lib/runtime.ts';
import { createLogger } from '../../lib/log.ts';
import { startPgNetWorker } from '../../dev/pgnet-worker.ts';
import { startFunctionServer } from '../../dev/server.ts';
import { createSyncStack, LOCAL_SECRETS, type Stack } from '../../dev/stack/index.ts';
import { STANDIN_ACCOUNT } from '../../dev/amocrm-standin/index.ts';
import { startTelegramStandin, type TelegramStandin } from '../../dev/telegram-standin.ts';
import { PG_NET_IN_FLIGHT } from './topology-stack.ts';

export interface MonthStack {
  s: Stack;
  url: string;
  telegram: TelegramStandin;
  /** One scheduled run, as Netlify's cron invokes it; answers its JSON report. */
  sweep(): Promise<Record<string, any>>;
  /** POST /api/amocrm/replay with the operator's token; answers the JSON. */
  replay(body: Record<string, unknown>): Promise<Record<string, any>>;
  /** Resolves true once nothing moves: no webhook queued or in flight, no function running, no claim, no drain lease, no hook in flight or being applied. */
  quiet(timeoutMs: number): Promise<boolean>;
  close(): Promise<void>;
}

export interface MonthStackOptions {
  latencyMs: [number, number];
  /** Every log line of the sync (functions, scheduled runs, operator commands). */
  onLine: (line: string) => void;
}

const CHAT_ID = '-1000000000017';

export async function startMonthStack(o: MonthStackOptions): Promise<MonthStack> {
  const telegram = await startTelegramStandin();
  const log = createLogger(o.onLine);
  const s = await createSyncStack({
    connections: 12,
    // The stand-in reads the month's clock: token expiry, updated_at, the events feed, hook retries.
    standin: { latencyMs: o.latencyMs, ratePerSecond: 7, now: () => Date.now() },
    env: {
      AMOCRM_MAX_RPS: '6',
      AMOCRM_HOOK_SECRET: LOCAL_SECRETS.hookSecret, AMOCRM_SUBDOMAIN: STANDIN_ACCOUNT.subdomain, AMOCRM_ACCOUNT_ID: String(STANDIN_ACCOUNT.id),
      AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: telegram.token, AMOCRM_ALERT_TELEGRAM_CHAT_ID: CHAT_ID, AMOCRM_ALERT_TELEGRAM_API: telegram.url,
    },
    log,
  }).catch(async (err) => { await telegram.close(); throw err; });
  let running = 0;
  let started = 0;
  const server = await startFunctionServer(0, '127.0.0.1', { onStart: () => { running++; started++; }, onRun: () => { running--; } });
  installRuntime(buildRuntime(loadConfig({ ...s.env, URL: server.url }), s.db, { log }));
  await s.database.sql(`insert into amocrm.system_settings (key, value) values
      ('webhook_url', to_jsonb($1::text)), ('webhook_secret', to_jsonb($2::text))
    on conflict (key) do update set value = excluded.value`, [`${server.url}/api/amocrm/lesson-completed`, s.env.AMOCRM_WEBHOOK_SECRET]);
  const worker = startPgNetWorker((text, params) => s.database.sql(text, params), { intervalMs: 5, maxInFlight: PG_NET_IN_FLIGHT });
  // amoCRM's account hook for this deployment, as `npm run amocrm -- webhooks subscribe` makes it.
  s.amo.subscribe(`${server.url}/api/amocrm/crm-events/${LOCAL_SECRETS.hookSecret}`, ['status_lead', 'update_lead', 'delete_lead', 'restore_lead']);

  const post = async (path: string, body: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    const text = await res.text();
    try {
      return JSON.parse(text) as Record<string, any>;
    } catch {
      return { ok: false, status: res.status, text: text.slice(0, 200) };
    }
  };

  const stillMoving = async () => {
    await s.amo.hooksSettled(); // runs the hook retries that came due with a jump
    const [row] = await s.database.sql(`select (select count(*) from net.http_request_queue)::int
        + (select count(*) from amocrm.sync_events where status = 'processing')::int
        + (select count(*) from amocrm.drainer where holder is not null and lease_until > now())::int
        -- a hook the crm-events function answered and is applying after its answer (waitUntil)
        + (select count(*) from amocrm.crm_deliveries where status = 'pending' and received_at > now() - interval '10 seconds')::int as n`);
    return row!.n + worker.inFlight() + running;
  };

  return {
    s, url: server.url, telegram,
    sweep: () => post('/.netlify/functions/amocrm-sweep', { next_run: new Date(Date.now() + 120_000).toISOString() }),
    replay: (body) => post('/api/amocrm/replay', body, { authorization: `Bearer ${s.env.AMOCRM_REPLAY_TOKEN}` }),
    async quiet(timeoutMs) {
      const deadline = performance.now() + timeoutMs;
      let calmSince: number | undefined;
      while (performance.now() < deadline) {
        // Calm twice in a row with no function started in between: a ring or a webhook on
        // its way between two looks is not missed.
        const calm = (await stillMoving()) === 0;
        if (calm && calmSince === started) return true;
        calmSince = calm ? started : undefined;
        await new Promise((r) => setTimeout(r, calm ? 10 : 30));
      }
      return false;
    },
    async close() {
      await worker.stop();
      server.server.closeAllConnections?.();
      await new Promise<void>((r) => server.server.close(() => r()));
      await s.close();
      await telegram.close();
    },
  };
}
