// Configuration from the environment, validated once with zod. Every variable is
// documented in .env.example. Secrets are read here and passed on, never logged.
import { z } from 'zod';
import { envSchema, fixFor, FUNNEL_VARS, OAUTH_VARS, STAGE_VARS, type Env } from './config-variables.ts';
import { jwtClaims } from './jwt.ts';

export { envSchema, fixFor, FUNNEL_VARS, NETLIFY_ENV, OAUTH_VARS, PLACEHOLDER_STAGE_IDS, STAGE_VARS, type Env } from './config-variables.ts';

export interface Config {
  amocrm: {
    baseUrl: string;
    clientId?: string;
    clientSecret?: string;
    redirectUri?: string;
    seed: { accessToken?: string; refreshToken?: string; longLivedToken?: string };
    timeoutMs: number;
    maxRps: number;
  };
  /**
   * AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3 (index 0 = lesson 1): the first funnel,
   * saved as version 1 while none is saved. Absent when unset; unused once a funnel is saved.
   */
  pipelineId?: number;
  stageIds?: [number, number, number];
  webhookSecret: string;
  replayToken?: string;
  maxAttempts: number;
  /** amoCRM's account webhooks (the reverse direction); absent secret: off. */
  hooks: { secret?: string; subdomain?: string; accountId?: number };
  /** The background drainer's address (absent: nobody is woken; the scheduled run drains). */
  drainUrl?: string;
  supabase?: { url: string; serviceRoleKey: string };
  /** Where alerts go (lib/alerts/); absent: no alerts. */
  alerts?: { telegram?: { botToken: string; chatId: string; apiBase?: string }; webhookUrl?: string };
}

/** Thrown for a missing or malformed variable; lists every problem, never a value. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: { variable: string; message: string }[]) {
    super(`configuration invalid: ${problems.map((p) => `${p.variable}: ${p.message}`).join('; ')}`);
  }
}

/** One thing wrong with the environment: the variable, what is wrong, and what to do. */
export interface ConfigProblem {
  variable: string;
  message: string;
  fix: string;
  /** Blank or absent (rather than set to something wrong). */
  missing: boolean;
  /** Found only for the deployed functions (requireSupabase): how they reach the database. */
  deployed?: true;
}

/** Values computed from more than one variable (or with a fallback), computed only here. */
export interface Derived {
  /** SUPABASE_URL, else SUPABASE_DATABASE_URL (trimmed, as given: https:// or postgres://). */
  supabaseUrl?: string;
  supabaseUrlFrom?: 'SUPABASE_URL' | 'SUPABASE_DATABASE_URL';
  /** AMOCRM_BASE_URL, else https://<AMOCRM_SUBDOMAIN>.<AMOCRM_BASE_DOMAIN>; no trailing slash. */
  amocrmBaseUrl?: string;
  /** Netlify's URL when it is an http(s) address, no trailing slash. */
  siteUrl?: string;
  /** AMOCRM_DRAIN_URL, else the background drainer on the site. */
  drainUrl?: string;
}

export interface ConfigReading {
  /** Present when every AMOCRM_* rule holds (Supabase's problems, when asked for, do not withhold it). */
  config?: Config;
  /** Every variable that parsed, under its own rule, whatever the others do. */
  values: Partial<Env>;
  /** Every problem at once: each variable's own rule, the rules across variables, Supabase's if asked. */
  problems: ConfigProblem[];
  derived: Derived;
}

type EnvShape = typeof envSchema.shape;
type Key = keyof EnvShape;
type Source = Record<string, string | undefined>;
const KEYS = Object.keys(envSchema.shape) as Key[];
const isBlank = (v: string | undefined) => v === undefined || v.trim() === '';

/**
 * The configuration from the raw environment, read once: the config, every problem with
 * its fix, and the derived values. Blank counts as missing. `requireSupabase`: the
 * deployed functions' view, where SUPABASE_URL and the service-role key are needed too.
 */
export function readConfig(source: Source, options: { requireSupabase?: boolean } = {}): ConfigReading {
  const { values, problems } = readFields(source);
  problems.push(...crossProblems(source, values, problems));
  const derived = derive(source, values);
  const config = problems.length === 0 ? buildConfig(values as Env, derived) : undefined;
  if (options.requireSupabase) {
    for (const p of supabaseProblems(source, derived)) {
      if (!problems.some((q) => q.variable === p.variable)) problems.push({ ...p, deployed: true });
    }
  }
  return { config, values, problems, derived };
}

const problem = (variable: string, message: string, missing: boolean): ConfigProblem => ({ variable, message, missing, fix: fixFor(variable) });

function readFields(source: Source): { values: Partial<Env>; problems: ConfigProblem[] } {
  const values: Record<string, unknown> = {};
  const problems: ConfigProblem[] = [];
  for (const key of KEYS) {
    const blank = isBlank(source[key]);
    const result = envSchema.shape[key].safeParse(blank ? undefined : source[key]);
    if (result.success) {
      if (result.data !== undefined) values[key] = result.data;
      continue;
    }
    const messages = [...new Set(result.error.issues.map((i) => i.message))];
    for (const message of messages) problems.push(problem(key, message, blank));
  }
  return { values: values as Partial<Env>, problems };
}

/** The rules across variables, checked whatever else is wrong (a variable already wrong is not reported twice). */
function crossProblems(source: Source, v: Partial<Env>, known: ConfigProblem[]): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const open = (variable: string) => !known.some((p) => p.variable === variable);
  if (!v.AMOCRM_BASE_URL && !v.AMOCRM_SUBDOMAIN && open('AMOCRM_SUBDOMAIN') && open('AMOCRM_BASE_URL')) {
    out.push(problem('AMOCRM_SUBDOMAIN', 'set AMOCRM_SUBDOMAIN (the part before .amocrm.ru / .kommo.com)', true));
  }
  if (!v.AMOCRM_LONG_LIVED_TOKEN) {
    for (const key of OAUTH_VARS) {
      if (!v[key] && open(key)) out.push(problem(key, 'required for OAuth (or set AMOCRM_LONG_LIVED_TOKEN for a private integration)', isBlank(source[key])));
    }
  }
  // All four or none: a funnel saved in the database makes them unnecessary, half of them is a mistake.
  const given = FUNNEL_VARS.filter((k) => v[k] !== undefined || !open(k));
  if (given.length) {
    for (const key of FUNNEL_VARS) {
      if (v[key] === undefined && open(key)) out.push(problem(key, `required with ${given.join(', ')}: the first funnel needs the pipeline and all three stages (or unset all four once a funnel is saved: npm run amocrm -- funnels set)`, isBlank(source[key])));
    }
  }
  const stages = STAGE_VARS.map((k) => v[k]);
  if (stages.every((s) => s !== undefined) && new Set(stages).size !== stages.length) {
    out.push(problem('AMOCRM_STAGE_LESSON_1', 'the three lesson stages must be different stage ids', false));
  }
  const alertPair = ['AMOCRM_ALERT_TELEGRAM_BOT_TOKEN', 'AMOCRM_ALERT_TELEGRAM_CHAT_ID'] as const;
  for (const [have, need] of [alertPair, [alertPair[1], alertPair[0]]] as const) {
    if (v[have] && !v[need] && open(need)) out.push(problem(need, `required with ${have} (Telegram alerts need both)`, isBlank(source[need])));
  }
  return out;
}

function derive(source: Source, v: Partial<Env>): Derived {
  const supabaseUrlFrom = (['SUPABASE_URL', 'SUPABASE_DATABASE_URL'] as const).find((k) => !isBlank(source[k]));
  const base = v.AMOCRM_BASE_URL ?? (v.AMOCRM_SUBDOMAIN ? `https://${v.AMOCRM_SUBDOMAIN}.${v.AMOCRM_BASE_DOMAIN ?? 'amocrm.ru'}` : undefined);
  const site = v.URL?.trim();
  const siteUrl = site && /^https?:\/\/\S+$/i.test(site) ? site.replace(/\/+$/, '') : undefined;
  return {
    supabaseUrl: supabaseUrlFrom ? source[supabaseUrlFrom]!.trim() : undefined,
    supabaseUrlFrom,
    amocrmBaseUrl: base?.replace(/\/+$/, ''),
    siteUrl,
    drainUrl: v.AMOCRM_DRAIN_URL ?? (siteUrl ? `${siteUrl}/.netlify/functions/amocrm-drain-background` : undefined),
  };
}

function buildConfig(env: Env, derived: Derived): Config {
  const serviceRoleKey = env.SUPABASE_SERVICE_ROLE_KEY;
  return {
    amocrm: {
      baseUrl: derived.amocrmBaseUrl!,
      clientId: env.AMOCRM_CLIENT_ID,
      clientSecret: env.AMOCRM_CLIENT_SECRET,
      redirectUri: env.AMOCRM_REDIRECT_URI,
      seed: { accessToken: env.AMOCRM_ACCESS_TOKEN, refreshToken: env.AMOCRM_REFRESH_TOKEN, longLivedToken: env.AMOCRM_LONG_LIVED_TOKEN },
      timeoutMs: env.AMOCRM_TIMEOUT_MS,
      maxRps: env.AMOCRM_MAX_RPS,
    },
    ...(env.AMOCRM_PIPELINE_ID !== undefined && env.AMOCRM_STAGE_LESSON_1 !== undefined && env.AMOCRM_STAGE_LESSON_2 !== undefined && env.AMOCRM_STAGE_LESSON_3 !== undefined
      ? { pipelineId: env.AMOCRM_PIPELINE_ID, stageIds: [env.AMOCRM_STAGE_LESSON_1, env.AMOCRM_STAGE_LESSON_2, env.AMOCRM_STAGE_LESSON_3] as [number, number, number] }
      : {}),
    webhookSecret: env.AMOCRM_WEBHOOK_SECRET,
    replayToken: env.AMOCRM_REPLAY_TOKEN,
    maxAttempts: env.AMOCRM_MAX_ATTEMPTS,
    drainUrl: derived.drainUrl,
    hooks: { secret: env.AMOCRM_HOOK_SECRET, subdomain: env.AMOCRM_SUBDOMAIN?.toLowerCase(), accountId: env.AMOCRM_ACCOUNT_ID },
    supabase: derived.supabaseUrl && serviceRoleKey ? { url: derived.supabaseUrl, serviceRoleKey } : undefined,
    alerts: alertsConfig(env),
  };
}

function alertsConfig(env: Env): Config['alerts'] {
  const telegram = env.AMOCRM_ALERT_TELEGRAM_BOT_TOKEN && env.AMOCRM_ALERT_TELEGRAM_CHAT_ID
    ? { botToken: env.AMOCRM_ALERT_TELEGRAM_BOT_TOKEN, chatId: env.AMOCRM_ALERT_TELEGRAM_CHAT_ID, apiBase: env.AMOCRM_ALERT_TELEGRAM_API }
    : undefined;
  return telegram || env.AMOCRM_ALERT_WEBHOOK_URL ? { telegram, webhookUrl: env.AMOCRM_ALERT_WEBHOOK_URL } : undefined;
}

/** How the deployed functions reach the database: the Data API URL and the service-role key. */
function supabaseProblems(source: Source, derived: Derived): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  const { supabaseUrl: url, supabaseUrlFrom: from } = derived;
  const key = source.SUPABASE_SERVICE_ROLE_KEY?.trim();
  if (!url) out.push(problem('SUPABASE_URL', 'missing (nor SUPABASE_DATABASE_URL)', true));
  else if (!/^https?:\/\//i.test(url)) {
    out.push(problem(from!, 'is not an https:// API URL (a postgres:// connection string?); the functions call the database through the Data API', false));
  }
  if (!key) out.push(problem('SUPABASE_SERVICE_ROLE_KEY', 'missing', true));
  else {
    const role = jwtClaims(key)?.role;
    if (key.startsWith('sb_publishable_') || (role !== undefined && role !== 'service_role')) {
      out.push(problem('SUPABASE_SERVICE_ROLE_KEY', `is a public key (${role ? `role ${String(role)}` : 'publishable'}), not the service_role key: the amocrm_* functions refuse it`, false));
    }
  }
  return out;
}

/** The first funnel the variables give (while none is saved), or null when they are unset. */
export function envFunnelOf(config: Pick<Config, 'pipelineId' | 'stageIds'>): { pipelineId: number; stageIds: [number, number, number] } | null {
  return config.pipelineId !== undefined && config.stageIds ? { pipelineId: config.pipelineId, stageIds: config.stageIds } : null;
}

/** No funnel is saved and the variables that would make the first one are unset: what to set, or what to run. */
export function noFunnelError(): ConfigError {
  const what = 'no funnel is saved and it is unset: set AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3 (they become the first funnel), or save the funnels with npm run amocrm -- funnels set <file>';
  return new ConfigError(FUNNEL_VARS.map((variable) => ({ variable, message: what })));
}

/** The configuration, or a ConfigError listing every problem (never a value). */
export function loadConfig(source: Source = process.env): Config {
  const reading = readConfig(source);
  if (!reading.config) throw new ConfigError(reading.problems.map(({ variable, message }) => ({ variable, message })));
  return reading.config;
}

/**
 * One variable read alone, with the same rule as the whole configuration: what an endpoint
 * needs to check its caller (its own secret) before the rest is known to be valid. Blank
 * counts as missing, as in readConfig.
 */
export function readVariable<K extends Key>(source: Source, key: K):
  { value: z.output<EnvShape[K]>; problem?: undefined } | { value?: undefined; problem: 'missing' | 'malformed' } {
  const raw = source[key];
  if (isBlank(raw)) return { problem: 'missing' };
  const result = envSchema.shape[key].safeParse(raw);
  return result.success ? { value: result.data as z.output<EnvShape[K]> } : { problem: 'malformed' };
}
