// A full sync stack for integration tests, from the one builder (dev/stack/): a real database
// (PGlite, or PostgreSQL with DATABASE_URL) with the migrations, the local amoCRM stand-in
// with account blocking on (repeated 429s → 403, as amoCRM does), and a runtime over both.
// This file only adds the test-facing names and the request builders for the webhook.
import { memoryLogger } from '../../lib/log.ts';
import type { Runtime } from '../../lib/runtime.ts';
import { sign } from '../../lib/lesson-webhook/verify.ts';
import type { AmoStandin, StandinOptions } from '../../dev/amocrm-standin/index.ts';
import { createSyncStack, type StackDatabase, type StackLayout, type StudentOptions } from '../../dev/stack/index.ts';
import type { Db } from '../../lib/db/port.ts';

export const PIPELINE = 5_000_001;
export const OTHER_PIPELINE = 5_000_002;
export const STAGE = { incoming: 501, lesson1: 511, lesson2: 512, lesson3: 513, paid: 520, other: 601 } as const;
export const WEBHOOK_SECRET = 'whsec_dGVzdC13ZWJob29rLXNlY3JldC0xMjM0NTY=';
export const REPLAY_TOKEN = 'test-replay-token-0123456789';

const TEST_LAYOUT: StackLayout = {
  pipelineId: PIPELINE,
  otherPipelineId: OTHER_PIPELINE,
  stages: { incoming: STAGE.incoming, lesson1: STAGE.lesson1, lesson2: STAGE.lesson2, lesson3: STAGE.lesson3, paid: STAGE.paid, otherPipelineStage: STAGE.other },
  firstLeadId: 90_000_001,
  firstContactId: 80_000_001,
};

export interface Stack {
  t: StackDatabase;
  amo: AmoStandin;
  rt: Runtime;
  log: ReturnType<typeof memoryLogger>;
  env: Record<string, string>;
  /** A runtime over another Db (PostgreSQL: its own connections), sharing stand-in and log. */
  runtimeOver(db: Db): Runtime;
  addStudent(email: string, opts?: StudentOptions): Promise<{ userId: string; leadId: number; leadIds: number[]; contactId: number }>;
  complete(userId: string, lessonId: number): Promise<number>;
  event(id: number): Promise<Record<string, any>>;
  storeTokens(opts?: { expired?: boolean }): Promise<void>;
  webhookRequest(body: unknown, headers?: Record<string, string>): Request;
  signedRequest(body: unknown, opts?: { secret?: string; timestamp?: number; id?: string }): Request;
  close(): Promise<void>;
}

let seq = 0;

/**
 * `standin` options go to the stand-in; account blocking is on unless a test that provokes
 * real 429s on purpose passes `standin: { blockAfterViolations: 0 }`.
 */
export async function createStack(options: { standin?: StandinOptions; pgNet?: boolean; env?: Record<string, string>; lookahead?: boolean } = {}): Promise<Stack> {
  const log = memoryLogger();
  const stack = await createSyncStack({
    databaseUrl: process.env.DATABASE_URL || undefined,
    pgNet: options.pgNet ?? true,
    standin: options.standin,
    layout: TEST_LAYOUT,
    env: { AMOCRM_WEBHOOK_SECRET: WEBHOOK_SECRET, AMOCRM_REPLAY_TOKEN: REPLAY_TOKEN, AMOCRM_TIMEOUT_MS: '2000', ...options.env },
    log,
  });
  // Sign-up look-ahead is on in production; tests that count amoCRM requests keep it off
  // unless they are about it, so students they add are not searched behind their back.
  if (!options.lookahead) await stack.database.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
  return {
    t: stack.database, amo: stack.amo, rt: stack.runtime, log, env: stack.env,
    runtimeOver: stack.runtimeOver,
    addStudent: stack.addStudent,
    complete: stack.complete,
    event: stack.event,
    storeTokens: stack.storeTokens,
    close: stack.close,
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
  };
}

/** The plain Supabase Database Webhook body for a lesson_progress INSERT. */
export const dbWebhookBody = (userId: string, lessonId: number, extra: Record<string, unknown> = {}) => ({
  type: 'INSERT', table: 'lesson_progress', schema: 'public',
  record: { id: `lp-${userId.slice(0, 8)}-${lessonId}`, user_id: userId, lesson_id: lessonId, is_completed: true, ...extra },
  old_record: null,
});
