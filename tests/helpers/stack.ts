// A full sync stack for integration tests: a real database (PGlite, or PostgreSQL with
// DATABASE_URL) with the migrations, the local amoCRM stand-in, and a runtime over both.
import { loadConfig } from '../../lib/config.ts';
import type { Db } from '../../lib/db/port.ts';
import { memoryLogger } from '../../lib/log.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { sign } from '../../lib/webhook/verify.ts';
import { startAmoStandin, type AmoStandin, type StandinOptions } from '../../dev/amocrm-standin/index.ts';
import { createTestDatabase, type TestDatabase } from './db.ts';

export const PIPELINE = 5_000_001;
export const OTHER_PIPELINE = 5_000_002;
export const STAGE = { incoming: 501, lesson1: 511, lesson2: 512, lesson3: 513, paid: 520, other: 601 } as const;
export const WEBHOOK_SECRET = 'whsec_dGVzdC13ZWJob29rLXNlY3JldC0xMjM0NTY=';
export const REPLAY_TOKEN = 'test-replay-token-0123456789';

export interface Stack {
  t: TestDatabase;
  amo: AmoStandin;
  rt: Runtime;
  log: ReturnType<typeof memoryLogger>;
  env: Record<string, string>;
  /** A runtime over another Db (PostgreSQL: its own connections), sharing stand-in and log. */
  runtimeOver(db: Db): Runtime;
  addStudent(email: string, opts?: { leadStatusId?: number; emails?: string[]; contactName?: string; leads?: { statusId: number; pipelineId?: number; updatedAt?: number }[] }): Promise<{ userId: string; leadId: number; leadIds: number[]; contactId: number }>;
  complete(userId: string, lessonId: number): Promise<number>;
  event(id: number): Promise<Record<string, any>>;
  storeTokens(opts?: { expired?: boolean }): Promise<void>;
  webhookRequest(body: unknown, headers?: Record<string, string>): Request;
  signedRequest(body: unknown, opts?: { secret?: string; timestamp?: number; id?: string }): Request;
  close(): Promise<void>;
}

let seq = 0;

export async function createStack(options: { standin?: StandinOptions; pgNet?: boolean; env?: Record<string, string> } = {}): Promise<Stack> {
  const t = await createTestDatabase({ pgNet: options.pgNet ?? true });
  const amo = await startAmoStandin(options.standin);
  amo.addPipeline({ id: PIPELINE, name: 'Tripwire', statuses: [
    { id: STAGE.incoming, name: 'Новая заявка', sort: 10 }, { id: STAGE.lesson1, name: 'Урок 1', sort: 20 },
    { id: STAGE.lesson2, name: 'Урок 2', sort: 30 }, { id: STAGE.lesson3, name: 'Урок 3', sort: 40 },
    { id: STAGE.paid, name: 'Оплата', sort: 50 }] });
  amo.addPipeline({ id: OTHER_PIPELINE, name: 'Партнёры', statuses: [{ id: STAGE.other, name: 'Партнёр', sort: 10 }] });
  const env = {
    AMOCRM_BASE_URL: amo.url, AMOCRM_CLIENT_ID: 'standin-client-id', AMOCRM_CLIENT_SECRET: 'standin-client-secret',
    AMOCRM_REDIRECT_URI: 'https://example.test/oauth', AMOCRM_PIPELINE_ID: String(PIPELINE),
    AMOCRM_STAGE_LESSON_1: String(STAGE.lesson1), AMOCRM_STAGE_LESSON_2: String(STAGE.lesson2), AMOCRM_STAGE_LESSON_3: String(STAGE.lesson3),
    AMOCRM_WEBHOOK_SECRET: WEBHOOK_SECRET, AMOCRM_REPLAY_TOKEN: REPLAY_TOKEN, AMOCRM_TIMEOUT_MS: '2000',
    ...options.env,
  };
  const log = memoryLogger();
  const config = loadConfig(env);
  const runtimeOver = (db: Db) => buildRuntime(config, db, { log });
  const rt = runtimeOver(t.db);

  const stack: Stack = {
    t, amo, rt, log, env, runtimeOver,
    async addStudent(email, opts = {}) {
      const [user] = await t.sql('insert into auth.users (email) values ($1) returning id', [email]);
      const n = ++seq;
      const leads = opts.leads ?? [{ statusId: opts.leadStatusId ?? STAGE.incoming }];
      const leadIds = leads.map((l, i) => {
        const id = 90_000_000 + n * 10 + i;
        amo.addLead({ id, name: `Deal ${email}`, pipelineId: l.pipelineId ?? PIPELINE, statusId: l.statusId, updatedAt: l.updatedAt ?? 1_700_000_000 + i });
        return id;
      });
      const contactId = 80_000_000 + n;
      amo.addContact({ id: contactId, name: opts.contactName ?? `Student ${n}`, emails: opts.emails ?? [email], leadIds });
      return { userId: user!.id, leadId: leadIds[0]!, leadIds, contactId };
    },
    async complete(userId, lessonId) {
      await t.asRole('authenticated', 'insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [userId, lessonId], userId);
      const [e] = await t.sql('select id from amocrm.sync_events where user_id = $1 and lesson_id = $2', [userId, lessonId]);
      return Number(e!.id);
    },
    async event(id) {
      const [e] = await t.sql('select * from amocrm.sync_events where id = $1', [id]);
      return e!;
    },
    async storeTokens({ expired = false } = {}) {
      const pair = amo.issueTokens();
      await t.db.rpc('amocrm_store_tokens', {
        p_kind: 'oauth', p_access_token: pair.access_token, p_refresh_token: pair.refresh_token,
        p_expires_at: new Date(Date.now() + (expired ? -60_000 : pair.expires_in * 1000)),
      });
    },
    webhookRequest(body, headers = {}) {
      return new Request('http://localhost/api/amocrm/lesson-completed', {
        method: 'POST', headers: { 'content-type': 'application/json', 'x-webhook-secret': WEBHOOK_SECRET, ...headers },
        body: typeof body === 'string' ? body : JSON.stringify(body),
      });
    },
    signedRequest(body, { secret = WEBHOOK_SECRET, timestamp = Math.floor(Date.now() / 1000), id = `evt_test_${++seq}` } = {}) {
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      return new Request('http://localhost/api/amocrm/lesson-completed', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'webhook-id': id, 'webhook-timestamp': String(timestamp), 'webhook-signature': sign(secret, id, String(timestamp), text) },
        body: text,
      });
    },
    async close() {
      await amo.close();
      await t.close();
    },
  };
  await stack.storeTokens();
  return stack;
}

/** The plain Supabase Database Webhook body for a lesson_progress INSERT. */
export const dbWebhookBody = (userId: string, lessonId: number, extra: Record<string, unknown> = {}) => ({
  type: 'INSERT', table: 'lesson_progress', schema: 'public',
  record: { id: `lp-${userId.slice(0, 8)}-${lessonId}`, user_id: userId, lesson_id: lessonId, is_completed: true, ...extra },
  old_record: null,
});
