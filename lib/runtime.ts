// Wires the plain functions of lib/ to their dependencies. Functions build it lazily on
// the first request (nothing at import time, so a cold start pays only for what it uses)
// and reuse it while warm. The embedded server and the tests build it over their own
// database and amoCRM stand-in.
import { randomUUID } from 'node:crypto';
import { systemClock, type Clock } from './clock.ts';
import { loadConfig, type Config } from './config.ts';
import type { Db } from './db/port.ts';
import { axiosTransport, createAmoHttp, type Transport } from './amocrm/http.ts';
import { createOAuthClient, type OAuthClient } from './amocrm/oauth.ts';
import { databaseRateLimiter, spareCapacityLimiter } from './amocrm/rate-limit.ts';
import { amoResources, type AmoResources } from './amocrm/resources.ts';
import { TokenManager } from './amocrm/tokens.ts';
import { createLogger, type Logger } from './log.ts';
import type { SyncDeps } from './sync/deps.ts';

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
  return {
    config, db, log, clock, transport,
    invocation(maxWaitMs, { lane = 'lesson' } = {}) {
      const holder = `inv-${randomUUID().slice(0, 8)}`;
      const limiter = lane === 'spare'
        ? spareCapacityLimiter(db, clock, config.amocrm.maxRps)
        : databaseRateLimiter(db, clock, config.amocrm.maxRps, maxWaitMs);
      const oauth = createOAuthClient(transport, limiter, clock, config.amocrm);
      const tokens = new TokenManager({ db, oauth, clock, log, holder, seed: config.amocrm.seed });
      const amo = amoResources(createAmoHttp(transport, tokens, limiter));
      return {
        holder, tokens, oauth, amo,
        sync: { db, amo, log, clock, settings: { pipelineId: config.pipelineId, stageIds: config.stageIds, maxAttempts: config.maxAttempts, requestTimeoutMs: config.amocrm.timeoutMs } },
      };
    },
  };
}

let fromEnv: Promise<Runtime> | undefined;

/** Makes the functions use `runtime` instead of the environment (embedded server, tests). */
export function installRuntime(runtime: Runtime): void {
  fromEnv = Promise.resolve(runtime);
}

/** The production runtime: configuration from the environment, database through supabase-js. */
export function runtimeFromEnv(): Promise<Runtime> {
  fromEnv ??= (async () => {
    const config = loadConfig(process.env);
    if (!config.supabase) {
      fromEnv = undefined;
      const { ConfigError } = await import('./config.ts');
      throw new ConfigError([{ variable: 'SUPABASE_URL', message: 'set SUPABASE_URL (or SUPABASE_DATABASE_URL) and SUPABASE_SERVICE_ROLE_KEY' }]);
    }
    const { supabaseDb } = await import('./db/supabase.ts');
    return buildRuntime(config, supabaseDb(config.supabase.url, config.supabase.serviceRoleKey));
  })().catch((err) => {
    fromEnv = undefined; // a fixed env is picked up by the next request
    throw err;
  });
  return fromEnv;
}
