// One builder for "database + amoCRM stand-in + runtime + students", used by the embedded
// default (`npm start`, `--embedded`), the tests (tests/helpers/stack.ts) and the benchmark.
// Optionally it also serves the real function modules with the pg_net worker in front, so
// a student's INSERT travels trigger → pg_net → webhook function → amoCRM as in production.
import type { Clock } from '../../lib/clock.ts';
import { loadConfig } from '../../lib/config.ts';
import type { Db } from '../../lib/db/port.ts';
import { storeTokens as storeTokenPair } from '../../lib/db/token-store.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { buildRuntime, installRuntime, type Runtime } from '../../lib/runtime.ts';
import { startAmoStandin, type AmoStandin, type StandinOptions } from '../amocrm-standin/index.ts';
import { startPgNetWorker } from '../pgnet-worker.ts';
import { startFunctionServer } from '../server.ts';
import { openStackDatabase, type Row, type StackDatabase } from './database.ts';
import { addPipelines, LOCAL_LAYOUT, stackEnv, type StackLayout } from './layout.ts';

export { LOCAL_LAYOUT, LOCAL_SECRETS, type StackLayout } from './layout.ts';
export { openStackDatabase, type Row, type StackDatabase } from './database.ts';

/**
 * amoCRM blocks an account that keeps going over its rate limit (403 to everything). The
 * stack's stand-in does the same after this many 429s within 60 s, so a sync that sends too
 * fast shows up as the block it would cause in production. Opt out with blockAfterViolations: 0.
 */
export const BLOCK_AFTER_VIOLATIONS = 3;

export interface StackOptions {
  /** A PostgreSQL server URL: the stack creates (and drops) its own database there. Absent: embedded PGlite. */
  databaseUrl?: string;
  /** Connections of the service_role pool behind `db` (PostgreSQL). Default 10. */
  connections?: number;
  /** Install the pg_net stand-in (net.http_post queues in net.http_request_queue). Default true; serve() needs it. */
  pgNet?: boolean;
  /** Stand-in options; blockAfterViolations defaults to BLOCK_AFTER_VIOLATIONS here. */
  standin?: StandinOptions;
  layout?: StackLayout;
  /** Overrides on top of the stack's environment (secrets, AMOCRM_TIMEOUT_MS, …). */
  env?: Record<string, string>;
  log?: Logger;
  clock?: Clock;
  /** The token pair stored at start: valid (default), already expired (the first call refreshes), or none. */
  tokens?: 'valid' | 'expired' | 'none';
}

export interface StudentOptions {
  /** Stage of the one deal (default: the pipeline's incoming stage). */
  leadStatusId?: number;
  /** The contact's e-mails (default: just the student's). */
  emails?: string[];
  /** The contact's name (default: the e-mail's local part). */
  contactName?: string;
  /** Several deals instead of one; updatedAt defaults to now + index (later ones newer). */
  leads?: { statusId: number; pipelineId?: number; updatedAt?: number }[];
}

export interface Student { userId: string; email: string; leadId: number; leadIds: number[]; contactId: number }

export interface Served {
  url: string;
  /** Resolves once pg_net has nothing queued and no event is being processed. */
  settle(timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export interface Stack {
  database: StackDatabase;
  db: Db;
  amo: AmoStandin;
  runtime: Runtime;
  env: Record<string, string>;
  layout: StackLayout;
  log: Logger;
  /** A runtime over another Db (PostgreSQL: its own connections), sharing config, stand-in and log. */
  runtimeOver(db: Db): Runtime;
  /** A user in auth.users, and in amoCRM a contact with their e-mail and their deal(s) in the pipeline. */
  addStudent(email: string, opts?: StudentOptions): Promise<Student>;
  /** Many students in one INSERT, each with one deal (bulk set-ups for the benchmark). */
  addStudents(emails: string[], opts?: { leadStatusId?: number }): Promise<Student[]>;
  /** The student's own INSERT into lesson_progress, as `authenticated` under RLS; returns the recorded event's id. */
  complete(userId: string, lessonId: number): Promise<number>;
  event(id: number): Promise<Row>;
  eventsOf(userId: string): Promise<Row[]>;
  /** Stores a fresh token pair from the stand-in (expired: its expiry already passed). */
  storeTokens(opts?: { expired?: boolean }): Promise<void>;
  /** Serves the function modules on `port` (0 = any) and starts the pg_net worker; closed with the stack. */
  serve(opts?: { port?: number; pollMs?: number }): Promise<Served>;
  close(): Promise<void>;
}

export async function createSyncStack(options: StackOptions = {}): Promise<Stack> {
  const layout = options.layout ?? LOCAL_LAYOUT;
  const database = await openStackDatabase({ serverUrl: options.databaseUrl, connections: options.connections, pgNet: options.pgNet ?? true });
  const amo = await startAmoStandin({ blockAfterViolations: BLOCK_AFTER_VIOLATIONS, ...options.standin });
  addPipelines(amo, layout);
  const env = { ...stackEnv(amo.url, layout), ...options.env };
  const log = options.log ?? createLogger();
  const config = loadConfig(env);
  const runtimeOver = (db: Db) => buildRuntime(config, db, { log, clock: options.clock });
  const runtime = runtimeOver(database.db);
  // amoCRM's clock (the stand-in's, which a test may move by hand): a deal's updated_at is amoCRM's.
  const nowSec = () => Math.floor((options.standin?.now?.() ?? Date.now()) / 1000);

  let nextLeadId = layout.firstLeadId;
  let nextContactId = layout.firstContactId;
  function addDeals(userId: string, email: string, opts: StudentOptions): Student {
    const leads = opts.leads ?? [{ statusId: opts.leadStatusId ?? layout.stages.incoming }];
    const at = nowSec();
    const leadIds = leads.map((l, i) => {
      const id = nextLeadId++;
      amo.addLead({ id, name: `Tripwire: ${email}`, pipelineId: l.pipelineId ?? layout.pipelineId, statusId: l.statusId, updatedAt: l.updatedAt ?? at + i });
      return id;
    });
    const contactId = nextContactId++;
    amo.addContact({ id: contactId, name: opts.contactName ?? email.split('@')[0]!, emails: opts.emails ?? [email], leadIds });
    return { userId, email, leadId: leadIds[0]!, leadIds, contactId };
  }

  const served: Served[] = [];

  const stack: Stack = {
    database, db: database.db, amo, runtime, env, layout, log, runtimeOver,

    async addStudent(email, opts = {}) {
      const [user] = await database.sql('insert into auth.users (email) values ($1) returning id', [email]);
      return addDeals(user!.id, email, opts);
    },

    async addStudents(emails, opts = {}) {
      const users = await database.sql(
        'insert into auth.users (email) select unnest($1::text[]) returning id, email', [emails]);
      return users.map((u) => addDeals(u.id, u.email, opts));
    },

    async complete(userId, lessonId) {
      await database.asRole('authenticated', 'insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [userId, lessonId], userId);
      const [e] = await database.sql('select id from amocrm.sync_events where user_id = $1 and lesson_id = $2', [userId, lessonId]);
      if (!e) throw new Error(`no sync event was recorded for user ${userId}, lesson ${lessonId} (not a Tripwire lesson?)`);
      return Number(e.id);
    },

    async event(id) {
      const [e] = await database.sql('select * from amocrm.sync_events where id = $1', [id]);
      if (!e) throw new Error(`no sync event ${id}`);
      return e;
    },

    eventsOf: (userId) => database.sql('select * from amocrm.sync_events where user_id = $1 order by id', [userId]),

    async storeTokens({ expired = false } = {}) {
      const pair = amo.issueTokens();
      await storeTokenPair(database.db, {
        kind: 'oauth', accessToken: pair.access_token, refreshToken: pair.refresh_token,
        expiresAt: new Date(Date.now() + (expired ? -60_000 : pair.expires_in * 1000)),
      });
    },

    async serve({ port = 0, pollMs } = {}) {
      const server = await startFunctionServer(port);
      // As on Netlify, where the site's URL tells the functions where the drainer is.
      installRuntime(buildRuntime(loadConfig({ ...env, URL: server.url }), database.db, { log, clock: options.clock }));
      await database.sql(`insert into amocrm.system_settings (key, value) values
          ('webhook_url', to_jsonb($1::text)), ('webhook_secret', to_jsonb($2::text))
        on conflict (key) do update set value = excluded.value`, [`${server.url}/api/amocrm/lesson-completed`, env.AMOCRM_WEBHOOK_SECRET]);
      const worker = startPgNetWorker((text, params) => database.sql(text, params), pollMs);
      let closed = false;
      const handle: Served = {
        url: server.url,
        async settle(timeoutMs = 15_000) {
          const deadline = Date.now() + timeoutMs;
          while (Date.now() < deadline) {
            const [row] = await database.sql(`select (select count(*) from net.http_request_queue)::int
              + (select count(*) from amocrm.sync_events where status = 'processing')::int as n`);
            if (row!.n === 0) return worker.idle();
            await new Promise((r) => setTimeout(r, 20));
          }
          throw new Error(`not settled within ${timeoutMs} ms: webhooks still queued or events still processing`);
        },
        async close() {
          if (closed) return;
          closed = true;
          await worker.stop();
          server.server.closeAllConnections?.();
          await new Promise<void>((r) => server.server.close(() => r()));
        },
      };
      served.push(handle);
      return handle;
    },

    async close() {
      for (const s of served.splice(0)) await s.close();
      await amo.close();
      await database.close();
    },
  };

  if ((options.tokens ?? 'valid') !== 'none') await stack.storeTokens({ expired: options.tokens === 'expired' });
  return stack;
}
