// Where an operator CLI (doctor, amocrm, replay) connects, chosen here and only here:
//   --embedded             a fresh local stack (PGlite + amoCRM stand-in), its own env;
//                          AMOCRM_* variables set in the environment override it
//   --database-url <url>   a plain PostgreSQL, env from the environment and .env
//   otherwise              Supabase from SUPABASE_URL (or SUPABASE_DATABASE_URL) and
//                          SUPABASE_SERVICE_ROLE_KEY, else DATABASE_URL
// lib/ gets the chosen `{ db, env }`; this is the one module outside dev/ and tests/ that
// imports dev/ (production code never loads the stand-in).
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseEnv } from 'node:util';
import type { Embedded } from '../dev/embedded.ts';
import { readConfig } from '../lib/config.ts';
import type { Db } from '../lib/db/port.ts';
import type { EnvSource } from '../lib/ops/command.ts';
import { memoryLogger } from '../lib/log.ts';
import { CliFailure, UsageError } from './cli.ts';

/** The flags every operator CLI takes, for parseCommandLine. */
export const TARGET_OPTIONS = {
  embedded: { type: 'boolean' },
  'database-url': { type: 'string' },
} as const;

export const TARGET_USAGE = [
  '  --embedded                run against a fresh local stack (PGlite + amoCRM stand-in), not the running demo',
  '  --database-url <url>      a plain PostgreSQL instead of Supabase (default: DATABASE_URL when SUPABASE_URL is absent)',
].join('\n');

export interface TargetChoice {
  embedded?: boolean;
  'database-url'?: string;
}

export interface DotEnv {
  path: string;
  found: boolean;
}

export interface Target {
  mode: 'embedded' | 'supabase' | 'postgres' | 'none';
  env: EnvSource;
  db?: Db;
  /** How the database is reached, without credentials. */
  label: string;
  /** Embedded mode: the variables taken from the environment instead of the stack's defaults. */
  overrides: string[];
  /** Whether the deployed functions' Supabase variables must be present (the doctor checks them). */
  requireSupabase: boolean;
  /** Set when the database did not answer (then `db` is absent): what happened, in words. */
  unreachable?: string;
  /** The .env file read (not in embedded mode). */
  dotEnv?: DotEnv;
  /** Embedded mode: the running stack (tests reach its stand-in through it). */
  embedded?: Embedded;
  close(): Promise<void>;
}

/** The environment with `.env` under it: variables already set in the process win. */
export function readEnvironment(processEnv: EnvSource = process.env, path = '.env'): { env: EnvSource; dotEnv: DotEnv } {
  const dotEnv = { path: resolve(path), found: existsSync(path) };
  const fromFile = dotEnv.found ? parseEnv(readFileSync(path, 'utf8')) : {};
  return { env: { ...fromFile, ...processEnv }, dotEnv };
}

function describePostgres(url: string): string {
  try {
    const u = new URL(url);
    return `PostgreSQL ${u.hostname}${u.port ? `:${u.port}` : ''}${u.pathname}`;
  } catch {
    return 'PostgreSQL';
  }
}

/** Opens a pool and makes one round trip, so an unreachable server is said so now, in words. */
async function openPostgres(url: string, env: EnvSource, dotEnv: DotEnv, requireSupabase: boolean): Promise<Target> {
  if (!/^postgres(ql)?:\/\/\S+$/i.test(url)) {
    throw new UsageError(`the database URL must be a postgres:// URL (got "${url.replace(/:[^:@/]*@/, ':***@')}")`);
  }
  const label = describePostgres(url);
  const { pgPoolDb, poolForRpc } = await import('../lib/db/sql-adapters.ts');
  const pool = await poolForRpc(url, 2);
  pool.on('error', () => undefined); // an idle client's broken connection: the next query reports it
  try {
    await pool.query('select 1');
  } catch (err) {
    await pool.end().catch(() => undefined);
    const e = err as { code?: string; message?: string };
    const why = (e.message && e.code && !e.message.includes(e.code) ? `${e.code} ${e.message}` : e.message || e.code) || String(err);
    return {
      mode: 'postgres', env, label, overrides: [], requireSupabase, dotEnv, unreachable: `cannot reach ${label}: ${why}`,
      close: async () => undefined,
    };
  }
  return { mode: 'postgres', env, db: pgPoolDb(pool), label, overrides: [], requireSupabase, dotEnv, close: () => pool.end() };
}

/**
 * Opens what a CLI run checks or changes (see the header). Mode `none` when nothing says
 * where the database is: the doctor still checks the variables; requireDatabase() says
 * what to do.
 */
export async function openTarget(choice: TargetChoice, processEnv: EnvSource = process.env): Promise<Target> {
  if (choice.embedded) {
    if (choice['database-url']) throw new UsageError('--embedded and --database-url exclude each other');
    const { startEmbedded } = await import('../dev/embedded.ts');
    const app = await startEmbedded({ log: memoryLogger(), latencyMs: [0, 0] });
    const overrides = Object.keys(processEnv).filter((k) => k.startsWith('AMOCRM_') && processEnv[k] !== undefined).sort();
    const env: EnvSource = { ...app.env };
    for (const k of overrides) env[k] = processEnv[k];
    return {
      mode: 'embedded', env, db: app.db, label: 'embedded PGlite (PostgreSQL 17) with the migrations, fresh for this run',
      overrides, requireSupabase: false, embedded: app, close: () => app.close(),
    };
  }

  const { env, dotEnv } = readEnvironment(processEnv);
  if (choice['database-url'] !== undefined) return openPostgres(choice['database-url'], env, dotEnv, false);
  // SUPABASE_URL (or SUPABASE_DATABASE_URL) and the key, as lib/config.ts reads them.
  const { derived, values } = readConfig(env);
  const supabaseUrl = derived.supabaseUrl;
  const key = values.SUPABASE_SERVICE_ROLE_KEY;
  if (supabaseUrl && /^https?:\/\//i.test(supabaseUrl) && key) {
    const { supabaseDb } = await import('../lib/db/supabase.ts');
    return {
      mode: 'supabase', env, db: supabaseDb(supabaseUrl, key), label: `Supabase ${new URL(supabaseUrl).origin}`,
      overrides: [], requireSupabase: true, dotEnv, close: async () => undefined,
    };
  }
  // DATABASE_URL is the CLIs' own (no function reads it): a plain PostgreSQL when SUPABASE_URL is absent.
  const databaseUrl = env.DATABASE_URL?.trim();
  if (derived.supabaseUrlFrom !== 'SUPABASE_URL' && databaseUrl) return openPostgres(databaseUrl, env, dotEnv, false);
  if (supabaseUrl && /^postgres(ql)?:\/\//i.test(supabaseUrl)) return openPostgres(supabaseUrl, env, dotEnv, true);
  return { mode: 'none', env, label: 'no database', overrides: [], requireSupabase: true, dotEnv, close: async () => undefined };
}

/** The target's database, or a CliFailure that says how to give one (`embeddedRun`: the same command with --embedded). */
export function requireDatabase(target: Target, embeddedRun: string): Db {
  if (target.db) return target.db;
  if (target.unreachable) throw new CliFailure(`${target.unreachable} → check --database-url / DATABASE_URL and that the server is running`);
  if (target.dotEnv && !target.dotEnv.found) {
    throw new CliFailure(`no .env here (${target.dotEnv.path}) and no database in the environment → cp .env.example .env and fill it in, or try a fresh local stack: ${embeddedRun}`);
  }
  const url = readConfig(target.env).derived.supabaseUrl;
  const what = !url ? 'SUPABASE_URL is not set'
    : !/^(https?|postgres(ql)?):\/\//i.test(url) ? 'SUPABASE_URL is neither an https:// API URL nor a postgres:// URL'
      : 'SUPABASE_SERVICE_ROLE_KEY is not set';
  throw new CliFailure(`no database: ${what} → set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY in .env (or DATABASE_URL), or pass --database-url postgres://…, or try a fresh local stack: ${embeddedRun}`);
}
