// The embedded default, the real thing in miniature: PGlite with the real migrations and
// Supabase's roles, the pg_net stand-in and its worker, a local amoCRM stand-in that
// behaves like the real API, and the real function modules served on localhost.
// Built by the one stack builder (dev/stack/), with the account the README describes.
import type { PGlite } from '@electric-sql/pglite';
import type { Db } from '../lib/db/port.ts';
import type { Logger } from '../lib/log.ts';
import type { Runtime } from '../lib/runtime.ts';
import { STANDIN_ACCOUNT, type AmoStandin } from './amocrm-standin/index.ts';
import { createSyncStack, LOCAL_LAYOUT, LOCAL_SECRETS, type Row, type Student, type StudentOptions } from './stack/index.ts';
import { startTelegramStandin, type TelegramStandin } from './telegram-standin.ts';

/** Local-only values, documented in the README; never used outside this machine. */
export const LOCAL = {
  webhookSecret: LOCAL_SECRETS.webhookSecret,
  replayToken: LOCAL_SECRETS.replayToken,
  pipelineId: LOCAL_LAYOUT.pipelineId,
  otherPipelineId: LOCAL_LAYOUT.otherPipelineId,
  stages: LOCAL_LAYOUT.stages,
};

export interface Embedded {
  pg: PGlite;
  db: Db;
  amo: AmoStandin;
  runtime: Runtime;
  url: string;
  env: Record<string, string>;
  /** The local Telegram Bot API the alerts go to (lib/alerts/), with `alerts: true`. */
  telegram?: TelegramStandin;
  addStudent(email: string, opts?: StudentOptions): Promise<Student>;
  completeLesson(userId: string, lessonId: number): Promise<void>;
  eventsOf(userId: string): Promise<Row[]>;
  settle(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface EmbeddedOptions {
  port?: number;
  log?: Logger;
  latencyMs?: [number, number];
  /** Start with an expired access token, so the first event shows the refresh. */
  expiredToken?: boolean;
  /** Alerts on, sent to a local Telegram Bot API stand-in (npm start). */
  alerts?: boolean;
}

export async function startEmbedded(options: EmbeddedOptions = {}): Promise<Embedded> {
  const telegram = options.alerts ? await startTelegramStandin() : undefined;
  const alertEnv: Record<string, string> = telegram
    ? { AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: telegram.token, AMOCRM_ALERT_TELEGRAM_CHAT_ID: '-1000000000001', AMOCRM_ALERT_TELEGRAM_API: telegram.url }
    : {};
  const stack = await createSyncStack({
    standin: { latencyMs: options.latencyMs ?? [60, 160] },
    log: options.log,
    tokens: options.expiredToken ? 'expired' : 'valid',
    // The reverse direction on, as a deployment that set AMOCRM_HOOK_SECRET has it.
    env: { AMOCRM_HOOK_SECRET: LOCAL_SECRETS.hookSecret, AMOCRM_SUBDOMAIN: STANDIN_ACCOUNT.subdomain, AMOCRM_ACCOUNT_ID: String(STANDIN_ACCOUNT.id), ...alertEnv },
  }).catch(async (err) => { await telegram?.close(); throw err; });
  const close = async () => { await stack.close(); await telegram?.close(); };
  try {
    const served = await stack.serve({ port: options.port ?? 0 });
    // amoCRM's account hook for this deployment, as `npm run amocrm -- webhooks subscribe` makes it.
    stack.amo.subscribe(`${served.url}/api/amocrm/crm-events/${LOCAL_SECRETS.hookSecret}`, ['status_lead', 'update_lead', 'delete_lead', 'restore_lead']);
    return {
      pg: stack.database.pglite!, db: stack.db, amo: stack.amo, runtime: stack.runtime, url: served.url, env: stack.env, telegram,
      addStudent: (email, opts) => stack.addStudent(email, opts),
      completeLesson: async (userId, lessonId) => void (await stack.complete(userId, lessonId)),
      eventsOf: stack.eventsOf,
      // As before the builder: the demo goes on after the wait and shows where the deal is.
      settle: (timeoutMs) => served.settle(timeoutMs).catch(() => undefined),
      close,
    };
  } catch (err) {
    await close(); // e.g. the port is taken: leave nothing running behind the error
    throw err;
  }
}
