// The explorer's world, built once per property and reused by every schedule: the project's
// one stack (a real database — PGlite, or PostgreSQL with DATABASE_URL — the amoCRM stand-in,
// the real migrations), amoCRM's hook subscribed to a local receiver, and the runtimes the
// actors run on. Each schedule gets new students, which is all the isolation it needs.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { axiosTransport } from '../../lib/amocrm/http.ts';
import type { Clock } from '../../lib/clock.ts';
import { loadConfig, type Config } from '../../lib/config.ts';
import { DbError, type Db } from '../../lib/db/port.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { STANDIN_ACCOUNT, type HookAttempt } from '../../dev/amocrm-standin/index.ts';
import { storeTokens } from '../../lib/db/token-store.ts';
import { createStack, type Stack } from '../helpers/stack.ts';
import { realSleep, VirtualClock } from './clock.ts';
import { Gates, type Actor } from './gates.ts';
import { exploredTransport, FaultPlan, type AmoSide } from './transport.ts';

export const HOOK_SECRET = 'explorer-hook-secret-0123456789abcdef';
/**
 * The explorer's time runs 10× faster than the sync's limits assume: the sync takes 60
 * slots a second and amoCRM answers 429 above 70 (in production 6 and 7). A 429 that
 * nobody injected still means the shared limiter let too much through.
 */
export const EXPLORER_RPS = 60;
export const STANDIN_RPS = 70;
/** Sleeps at least this long are time passing (a step); shorter ones (rate slots) are real. */
const LONG_SLEEP_MS = 100;

/** A hook delivery amoCRM made, waiting for the schedule to decide its fate. */
export interface Captured { index: number; attempt: HookAttempt }

export interface World {
  s: Stack;
  g: Gates;
  clock: VirtualClock;
  config: Config;
  plan: FaultPlan;
  /** Whether the database answers at all (an outage fault turns it off for a while). */
  dbUp: boolean;
  /** Late applies and hook deliveries started during a schedule (their results). */
  spawned: Promise<unknown>[];
  /** Called with every hook delivery amoCRM makes, in amoCRM's order. */
  onHook: (c: Captured) => void;
  runtime(actor: Actor | undefined): Runtime;
  passTime(ms: number, why: string): Promise<void>;
  collectHooks(): Promise<void>;
  /** A schedule starts from the same state as any other: hook numbering, tokens, the feed's cursor, Math.random. */
  resetForSchedule(): Promise<void>;
  sql(text: string, params?: unknown[]): Promise<any[]>;
  close(): Promise<void>;
}

/** Every timestamp the sync keeps in amocrm.*, except amoCRM's own times in the mirror. */
const SHIFT_SQL = (seconds: number) => `do $$
declare r record;
begin
  perform set_config('session_replication_role', 'replica', true);
  for r in
    select c.table_name, c.column_name
      from information_schema.columns c
      join information_schema.tables t on t.table_schema = c.table_schema and t.table_name = c.table_name
     where c.table_schema = 'amocrm' and t.table_type = 'BASE TABLE'
       and c.data_type = 'timestamp with time zone'
       and c.table_name not in ('deals', 'deal_stage_history', 'deal_changes')
       and c.table_name not like '%rollup%'
  loop
    execute format('update amocrm.%I set %I = %I - make_interval(secs => ${seconds}) where %I is not null',
                   r.table_name, r.column_name, r.column_name, r.column_name);
  end loop;
end $$`;

export async function openWorld(): Promise<World> {
  const clock = new VirtualClock();
  const receiver: Server = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200).end('ok'));
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  const s = await createStack({
    standin: { now: clock.now, ratePerSecond: STANDIN_RPS },
    env: { AMOCRM_HOOK_SECRET: HOOK_SECRET, AMOCRM_SUBDOMAIN: STANDIN_ACCOUNT.subdomain, AMOCRM_TIMEOUT_MS: '10000' },
  });
  s.amo.subscribe(`http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`, ['status_lead', 'update_lead', 'delete_lead', 'restore_lead']);
  const config = loadConfig(s.env);
  (config.amocrm as { maxRps: number }).maxRps = EXPLORER_RPS;
  const real = axiosTransport(config.amocrm.baseUrl, config.amocrm.timeoutMs);
  const g = new Gates();
  let hooksSeen = s.amo.hookAttempts.length;
  let hookIndex = 0;
  const resetHooks = () => { hooksSeen = s.amo.hookAttempts.length; hookIndex = 0; };

  const world: World = {
    s, g, clock, config, plan: new FaultPlan([]), dbUp: true, spawned: [], onHook: () => undefined,

    async passTime(ms, why) {
      await world.plan.settleLates(clock.passed, ms);
      g.trace.push(`  ⏱ ${Math.round(ms / 100) / 10} s pass (${why})`);
      clock.advance(ms);
      await s.t.sql(SHIFT_SQL(ms / 1000));
    },

    async collectHooks() {
      await s.amo.hooksSettled();
      const fresh = s.amo.hookAttempts.slice(hooksSeen).filter((a) => !a.dropped && a.attempt === 1);
      hooksSeen = s.amo.hookAttempts.length;
      for (const attempt of fresh.sort((a, b) => a.deliveryId - b.deliveryId)) world.onHook({ index: hookIndex++, attempt });
    },

    async resetForSchedule() {
      resetHooks();
      const pair = s.amo.issueTokens();
      await storeTokens(s.t.db, { kind: 'oauth', accessToken: pair.access_token, refreshToken: pair.refresh_token, expiresAt: new Date(clock.now() + pair.expires_in * 1000) });
      await s.t.sql(`delete from amocrm.system_settings where key = 'events_feed_window'`);
      await s.t.sql(`insert into amocrm.system_settings (key, value) values ('events_feed_cursor', to_jsonb($1::bigint))
                     on conflict (key) do update set value = excluded.value`, [Math.floor(clock.now() / 1000) - 60]);
      seedRandom(0x5eed);
    },

    sql: (text, params) => g.track(s.t.sql(text, params)),

    runtime(actor) {
      const db: Db = {
        rpc: (fn, args) => g.step(actor, `db ${fn}`, async () => {
          if (!world.dbUp) throw new DbError(fn, 'explorer: the database is unreachable', '08006');
          return s.t.db.rpc(fn, args);
        }),
      };
      const amo: AmoSide = {
        send: (req, bearer) => real.send(req, bearer),
        beforeChange: () => clock.step(),
        afterwards: () => world.collectHooks(),
        passTime: (ms, why) => world.passTime(ms, why),
        passed: () => clock.passed,
      };
      const rtClock: Clock = {
        now: clock.now,
        sleep: (ms) => ms < LONG_SLEEP_MS
          ? g.track(realSleep(ms))
          // The rate limiter re-bases on a clock step of over a second (a shorter jump would void its
          // slots); 1.3 s keeps deadlines (5 s busy wait, 1 s slot wait) well clear of real elapsed time.
          : g.step(actor, `sleep ${Math.round(ms)} ms`, () => world.passTime(Math.max(ms, 1_300), 'a sleep')),
      };
      return buildRuntime(config, db, { log: s.log, clock: rtClock, transport: exploredTransport(g, actor, amo, world.plan, world.spawned) });
    },

    async close() {
      await new Promise((r) => receiver.close(r));
      await s.close();
    },
  };
  return world;
}

/** Math.random, seeded: backoff jitter (and so the order of due events) is the same on every replay. */
function seedRandom(seed: number): void {
  let a = seed >>> 0;
  Math.random = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
