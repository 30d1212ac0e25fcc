// Wires the plain functions of lib/ to their dependencies. Functions build it lazily on
// the first request (nothing at import time, so a cold start pays only for what it uses)
// and reuse it while warm. The embedded server and the tests build it over their own
// database and amoCRM stand-in.
import { randomUUID } from 'node:crypto';
import { systemClock, type Clock } from './clock.ts';
import { ConfigError, envFunnelOf, loadConfig, noFunnelError, readVariable, type Config } from './config.ts';
import { currentFunnels } from './db/funnels.ts';
import type { Db } from './db/port.ts';
import { axiosTransport, createAmoHttp, type TokenSource, type Transport } from './amocrm/http.ts';
import { createOAuthClient, type OAuthClient } from './amocrm/oauth.ts';
import { databaseRateLimiter, spareCapacityLimiter } from './amocrm/rate-limit.ts';
import { amoResources, type AmoResources } from './amocrm/resources.ts';
import { TokenManager } from './amocrm/token-manager.ts';
import { createLogger, type Logger } from './log.ts';
import type { SyncDeps } from './sync/deps.ts';
import { databaseFunnels } from './funnels/source.ts';

export interface Runtime {
  config: Config;
  db: Db;
  log: Logger;
  clock: Clock;
  transport: Transport;
  /**
   * Everything one invocation needs; `maxWaitMs` is how long it may queue for an amoCRM
   * slot. `lane: 'spare'` (look-ahead jobs) takes only slots lesson events leave unused.
   */
  invocation(maxWaitMs: number, options?: { lane?: 'lesson' | 'spare' }): Invocation;
}

export interface Invocation {
  holder: string;
  tokens: TokenManager;
  oauth: OAuthClient;
  amo: AmoResources;
  sync: SyncDeps;
}

export function buildRuntime(config: Config, db: Db, parts: { transport?: Transport; log?: Logger; clock?: Clock } = {}): Runtime {
  const clock = parts.clock ?? systemClock;
  const log = parts.log ?? createLogger();
  const transport = parts.transport ?? axiosTransport(config.amocrm.baseUrl, config.amocrm.timeoutMs);
  // Kept while warm: read again when a claimed event names a newer version.
  const funnels = databaseFunnels(db, envFunnelOf(config));
  return {
    config, db, log, clock, transport,
    invocation(maxWaitMs, { lane = 'lesson' } = {}) {
      const holder = `inv-${randomUUID().slice(0, 8)}`;
      const limiter = lane === 'spare'
        ? spareCapacityLimiter(db, clock, config.amocrm.maxRps)
        : databaseRateLimiter(db, clock, config.amocrm.maxRps, maxWaitMs);
      // One sender for every amoCRM request of the invocation, the token refresh's included:
      // it asks the token manager for bearers, and the token manager refreshes through the
      // OAuth resource over this same sender.
      const bearers: TokenSource = { current: () => tokens.current(), afterUnauthorized: (used) => tokens.afterUnauthorized(used) };
      const http = createAmoHttp(transport, bearers, limiter);
      const oauth = createOAuthClient(http, clock, config.amocrm);
      const tokens = new TokenManager({ db, oauth, clock, log, holder, seed: config.amocrm.seed });
      const amo = amoResources(http);
      return {
        holder, tokens, oauth, amo,
        sync: { db, amo, log, clock, settings: { funnels, maxAttempts: config.maxAttempts, requestTimeoutMs: config.amocrm.timeoutMs } },
      };
    },
  };
}

let fromEnv: Promise<Runtime> | undefined;

/** Makes the functions use `runtime` instead of the environment (embedded server, tests). */
export function installRuntime(runtime: Runtime): void {
  fromEnv = Promise.resolve(runtime);
}

const NO_SUPABASE = { variable: 'SUPABASE_URL', message: 'set SUPABASE_URL (or SUPABASE_DATABASE_URL) and SUPABASE_SERVICE_ROLE_KEY' };
const blank = (v: string | undefined) => v === undefined || v.trim() === '';

/** The production runtime: configuration from the environment, database through supabase-js. */
export function runtimeFromEnv(): Promise<Runtime> {
  fromEnv ??= (async () => {
    let config: Config;
    try {
      config = loadConfig(process.env);
    } catch (err) {
      // Every problem at once: Supabase's variables too, not only after the rest is fixed.
      const env = process.env;
      const noSupabase = (blank(env.SUPABASE_URL) && blank(env.SUPABASE_DATABASE_URL)) || blank(env.SUPABASE_SERVICE_ROLE_KEY);
      if (err instanceof ConfigError && noSupabase && !err.problems.some((p) => p.variable.startsWith('SUPABASE_'))) {
        throw new ConfigError([...err.problems, NO_SUPABASE]);
      }
      throw err;
    }
    if (!config.supabase) throw new ConfigError([NO_SUPABASE]);
    const { supabaseDb } = await import('./db/supabase.ts');
    return requireFunnels(buildRuntime(config, supabaseDb(config.supabase.url, config.supabase.serviceRoleKey)));
  })().catch((err) => {
    fromEnv = undefined; // a fixed env is picked up by the next request
    throw err;
  });
  return fromEnv;
}

/**
 * Without the funnel variables the funnels must be saved: otherwise the deploy is not
 * configured, and says so as for a missing variable (the caller checked first). A database
 * that does not answer is not a configuration problem: the runtime is kept, and its own
 * calls report the database.
 */
export async function requireFunnels(rt: Runtime): Promise<Runtime> {
  if (envFunnelOf(rt.config)) return rt;
  const saved = await currentFunnels(rt.db).catch((err: unknown) => (err instanceof ConfigError ? Promise.reject(err) : 'unknown'));
  if (saved === null) throw noFunnelError();
  return rt;
}

/**
 * The endpoint's own secret is missing or malformed, so it cannot tell who is calling: the
 * caller gets a bare 503, the log the whole list (`problems`).
 */
export class CallerCheckUnavailable extends Error {
  override readonly name = 'CallerCheckUnavailable';
  constructor(readonly variable: string, readonly problems: ConfigError) {
    super(`${variable} is missing or malformed: the caller cannot be checked`);
  }
}

/**
 * What an endpoint may use while the environment is incomplete (`problem`): each
 * endpoint's own secret, read alone from `source`, the clock and a log. So it checks its
 * caller exactly as a configured deploy does, and answers a caller that fails the check
 * exactly as one would (401, 404). Anything else it touches (the database, amoCRM, the rest
 * of the configuration) throws `problem`, which only a caller that passed the check can
 * reach. A secret the check needs that is missing or malformed throws CallerCheckUnavailable.
 * AMOCRM_HOOK_SECRET unset is not a problem: the reverse direction is off, as configured.
 */
export function callerRuntime(problem: ConfigError, source: Record<string, string | undefined> = process.env): Runtime {
  const secret = <K extends 'AMOCRM_WEBHOOK_SECRET' | 'AMOCRM_REPLAY_TOKEN'>(key: K) => {
    const read = readVariable(source, key);
    if (read.problem) throw new CallerCheckUnavailable(key, problem);
    return read.value;
  };
  const hookSecret = readVariable(source, 'AMOCRM_HOOK_SECRET');
  const hooks = {
    get secret() {
      if (hookSecret.problem === 'malformed') throw new CallerCheckUnavailable('AMOCRM_HOOK_SECRET', problem);
      return hookSecret.value;
    },
    // Read with the secret (one destructuring); a malformed one counts as unset here, since
    // nothing is recorded without the database anyway.
    subdomain: readVariable(source, 'AMOCRM_SUBDOMAIN').value?.toLowerCase(),
    accountId: readVariable(source, 'AMOCRM_ACCOUNT_ID').value,
  };
  const config = onlyThese<Config>(problem, {
    get webhookSecret() { return secret('AMOCRM_WEBHOOK_SECRET'); },
    get replayToken() { return secret('AMOCRM_REPLAY_TOKEN'); },
    hooks,
  });
  return onlyThese<Runtime>(problem, { config, clock: systemClock, log: createLogger() });
}

/** `known`'s properties; any other property access throws `problem`. */
function onlyThese<T extends object>(problem: Error, known: Partial<T>): T {
  return new Proxy(known, {
    get(target, key, receiver) {
      if (key in target) return Reflect.get(target, key, receiver);
      if (typeof key === 'symbol' || key === 'then' || key === 'toJSON') return undefined;
      throw problem;
    },
  }) as T;
}
