// The embedded default, the real thing in miniature: PGlite with the real migrations and
// Supabase's roles, the pg_net stand-in and its worker, a local amoCRM stand-in that
// behaves like the real API, and the real function modules served on localhost.
import type { PGlite } from '@electric-sql/pglite';
import { loadConfig } from '../lib/config.ts';
import type { Db } from '../lib/db/port.ts';
import { pgliteDb } from '../lib/db/sql-adapters.ts';
import { createLogger, type Logger } from '../lib/log.ts';
import { buildRuntime, installRuntime, type Runtime } from '../lib/runtime.ts';
import { startAmoStandin, type AmoStandin } from './amocrm-standin/index.ts';
import { openPglite } from './database.ts';
import { startPgNetWorker } from './pgnet-worker.ts';
import { startFunctionServer } from './server.ts';

/** Local-only values, documented in the README; never used outside this machine. */
export const LOCAL = {
  webhookSecret: 'local-demo-webhook-secret',
  replayToken: 'local-demo-replay-token',
  pipelineId: 7_000_001,
  otherPipelineId: 7_000_002,
  stages: { incoming: 70_001, lesson1: 70_011, lesson2: 70_012, lesson3: 70_013, paid: 70_020, otherPipelineStage: 80_001 },
};

export interface Embedded {
  pg: PGlite;
  db: Db;
  amo: AmoStandin;
  runtime: Runtime;
  url: string;
  env: Record<string, string>;
  addStudent(email: string, opts?: { leadStatusId?: number; contactName?: string }): Promise<{ userId: string; leadId: number; contactId: number }>;
  completeLesson(userId: string, lessonId: number): Promise<void>;
  eventsOf(userId: string): Promise<any[]>;
  settle(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface EmbeddedOptions {
  port?: number;
  log?: Logger;
  latencyMs?: [number, number];
  /** Start with an expired access token, so the first event shows the refresh. */
  expiredToken?: boolean;
}

export async function startEmbedded(options: EmbeddedOptions = {}): Promise<Embedded> {
  const pg = await openPglite({ pgNet: true });
  const db = pgliteDb(pg);
  const amo = await startAmoStandin({ latencyMs: options.latencyMs ?? [60, 160] });
  const { stages } = LOCAL;
  amo.addPipeline({
    id: LOCAL.pipelineId, name: 'Tripwire',
    statuses: [
      { id: stages.incoming, name: 'Новая заявка', sort: 10 },
      { id: stages.lesson1, name: 'Урок 1 пройден', sort: 20 },
      { id: stages.lesson2, name: 'Урок 2 пройден', sort: 30 },
      { id: stages.lesson3, name: 'Урок 3 пройден', sort: 40 },
      { id: stages.paid, name: 'Оплата основного курса', sort: 50 },
    ],
  });
  amo.addPipeline({ id: LOCAL.otherPipelineId, name: 'Партнёры', statuses: [{ id: stages.otherPipelineStage, name: 'Новый партнёр', sort: 10 }] });

  const env: Record<string, string> = {
    AMOCRM_BASE_URL: amo.url,
    AMOCRM_CLIENT_ID: 'standin-client-id',
    AMOCRM_CLIENT_SECRET: 'standin-client-secret',
    AMOCRM_REDIRECT_URI: 'https://example.test/oauth',
    AMOCRM_PIPELINE_ID: String(LOCAL.pipelineId),
    AMOCRM_STAGE_LESSON_1: String(stages.lesson1),
    AMOCRM_STAGE_LESSON_2: String(stages.lesson2),
    AMOCRM_STAGE_LESSON_3: String(stages.lesson3),
    AMOCRM_WEBHOOK_SECRET: LOCAL.webhookSecret,
    AMOCRM_REPLAY_TOKEN: LOCAL.replayToken,
  };
  const runtime = buildRuntime(loadConfig(env), db, { log: options.log ?? createLogger() });
  installRuntime(runtime);

  const tokens = amo.issueTokens();
  const expiresAt = options.expiredToken ? new Date(Date.now() - 60_000) : new Date(Date.now() + tokens.expires_in * 1000);
  await db.rpc('amocrm_store_tokens', { p_kind: 'oauth', p_access_token: tokens.access_token, p_refresh_token: tokens.refresh_token, p_expires_at: expiresAt });

  const server = await startFunctionServer(options.port ?? 0);
  await pg.query(`insert into amocrm.system_settings (key, value) values
      ('webhook_url', to_jsonb($1::text)), ('webhook_secret', to_jsonb($2::text))
    on conflict (key) do update set value = excluded.value`, [`${server.url}/api/amocrm/lesson-completed`, LOCAL.webhookSecret]);
  const worker = startPgNetWorker(async (text, params) => (await pg.query<any>(text, params)).rows);

  let nextId = 1;
  return {
    pg, db, amo, runtime, url: server.url, env,
    async addStudent(email, opts = {}) {
      const { rows } = await pg.query<{ id: string }>('insert into auth.users (email) values ($1) returning id', [email]);
      const leadId = 31_000_000 + nextId;
      const contactId = 41_000_000 + nextId++;
      amo.addLead({ id: leadId, name: `Tripwire: ${email}`, pipelineId: LOCAL.pipelineId, statusId: opts.leadStatusId ?? stages.incoming, updatedAt: Math.floor(Date.now() / 1000) });
      amo.addContact({ id: contactId, name: opts.contactName ?? email.split('@')[0]!, emails: [email], leadIds: [leadId] });
      return { userId: rows[0]!.id, leadId, contactId };
    },
    async completeLesson(userId, lessonId) {
      // As the platform does it: the student's own INSERT through the API, under RLS.
      await pg.transaction(async (tx) => {
        await tx.query(`select set_config('request.jwt.claim.sub', $1, true)`, [userId]);
        await tx.exec('set local role authenticated');
        await tx.query('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [userId, lessonId]);
      });
    },
    async eventsOf(userId) {
      return (await pg.query('select * from amocrm.sync_events where user_id = $1 order by id', [userId])).rows;
    },
    async settle(timeoutMs = 15_000) {
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        const { rows } = await pg.query<{ n: number }>(
          `select (select count(*) from net.http_request_queue)::int + (select count(*) from amocrm.sync_events where status = 'processing')::int as n`);
        if (rows[0]!.n === 0) { await worker.idle(); return; }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    async close() {
      await worker.stop();
      await new Promise<void>((r) => server.server.close(() => r()));
      server.server.closeAllConnections?.();
      await amo.close();
      await pg.close();
    },
  };
}
