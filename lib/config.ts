// Configuration from the environment, validated once with zod. Every variable is
// documented in .env.example. Secrets are read here and passed on, never logged.
import { z } from 'zod';
import { jwtClaims } from './jwt.ts';

const AMOCRM_DOMAINS = ['amocrm.ru', 'amocrm.com', 'kommo.com'] as const;
/** Stage ids that appear in the academy's docs as examples, never real ones. */
export const PLACEHOLDER_STAGE_IDS = [12345678, 23456789, 34567890];

// An amoCRM id from a string variable. Not z.coerce: it turns a missing variable into NaN
// and reports "expected number, received NaN" instead of saying it is required.
const id = z.preprocess(
  (v) => (typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : v),
  z.number({ error: (iss) => (iss.input === undefined ? 'is required: an amoCRM id (see npm run amocrm -- pipelines)' : 'must be a positive integer id') })
    .int().positive().max(2 ** 53),
);
const optionalText = z.string().trim().min(1).optional();

/** Each variable's own rule; the rules across variables are in crossProblems. */
export const envSchema = z
  .object({
    SUPABASE_URL: z.url().optional(),
    SUPABASE_DATABASE_URL: z.url().optional(),
    SUPABASE_SERVICE_ROLE_KEY: optionalText,

    AMOCRM_SUBDOMAIN: z.string().trim().regex(/^[a-z0-9-]+$/i, 'only letters, digits and dashes, e.g. onaiacademy').optional(),
    AMOCRM_BASE_DOMAIN: z.enum(AMOCRM_DOMAINS).default('amocrm.ru'),
    /** Overrides subdomain+domain: the local stand-in, or a proxy. */
    AMOCRM_BASE_URL: z.url().optional(),

    AMOCRM_CLIENT_ID: optionalText,
    AMOCRM_CLIENT_SECRET: optionalText,
    AMOCRM_REDIRECT_URI: z.url().optional(),
    AMOCRM_ACCESS_TOKEN: optionalText,
    AMOCRM_REFRESH_TOKEN: optionalText,
    AMOCRM_LONG_LIVED_TOKEN: optionalText,

    AMOCRM_PIPELINE_ID: id,
    AMOCRM_STAGE_LESSON_1: id,
    AMOCRM_STAGE_LESSON_2: id,
    AMOCRM_STAGE_LESSON_3: id,

    AMOCRM_WEBHOOK_SECRET: z.string({ error: 'is required: the secret the database signs webhooks with (the same value as the webhook_secret setting)' }).min(16, 'at least 16 characters (use whsec_ + base64 of 24+ random bytes)'),
    AMOCRM_REPLAY_TOKEN: z.string().min(16, 'at least 16 characters').optional(),
    /** The secret in the URL amoCRM's account webhooks call; setting it turns the reverse direction on. */
    AMOCRM_HOOK_SECRET: z.string().regex(/^[A-Za-z0-9_-]{24,128}$/, '24–128 letters, digits, _ or - (it goes in a URL): e.g. openssl rand -hex 24').optional(),
    /** The amoCRM account id hooks must carry (optional; the subdomain is checked too). */
    AMOCRM_ACCOUNT_ID: z.string().regex(/^\d{1,16}$/, 'the numeric amoCRM account id').transform(Number).optional(),

    /** Where the webhook and the scheduled run wake the background drainer. Default: Netlify's URL. */
    AMOCRM_DRAIN_URL: z.url().optional(),
    /** Netlify sets the site's main URL in every function's environment. Not ours, so never an error. */
    URL: z.string().optional().catch(undefined),

    /** Alerts (docs/operations.md, "Alerts"): a Telegram bot and chat, and/or a plain JSON webhook. */
    AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: z.string().trim().regex(/^\d{3,}:[A-Za-z0-9_-]{20,}$/, 'a bot token from @BotFather: <digits>:<35 letters>').optional(),
    AMOCRM_ALERT_TELEGRAM_CHAT_ID: z.string().trim().regex(/^(-?\d{1,20}|@[A-Za-z0-9_]{5,})$/, 'a numeric chat id (a group: -100…) or @channelname').optional(),
    /** The Bot API's address (default https://api.telegram.org): the local stand-in. */
    AMOCRM_ALERT_TELEGRAM_API: z.url().optional(),
    AMOCRM_ALERT_WEBHOOK_URL: z.url().refine((u) => /^https?:\/\//i.test(u), 'an http(s) URL').optional(),

    AMOCRM_MAX_RPS: z.coerce.number().positive().max(7).default(6),
    AMOCRM_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(50).default(8),
    AMOCRM_TIMEOUT_MS: z.coerce.number().int().min(1000).max(60000).default(10000),
  });

export type Env = z.infer<typeof envSchema>;

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
  pipelineId: number;
  /** Stage ids in Tripwire order: index 0 = lesson 1. */
  stageIds: [number, number, number];
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

export const STAGE_VARS = ['AMOCRM_STAGE_LESSON_1', 'AMOCRM_STAGE_LESSON_2', 'AMOCRM_STAGE_LESSON_3'] as const;
export const OAUTH_VARS = ['AMOCRM_CLIENT_ID', 'AMOCRM_CLIENT_SECRET', 'AMOCRM_REDIRECT_URI'] as const;
export const NETLIFY_ENV = 'Netlify → Site configuration → Environment variables (and .env locally)';

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

/** What to do about `variable` (`otherwise`: when there is no hint for it), and where to set it. */
export const fixFor = (variable: string, otherwise = 'fix the value') => `${HINTS[variable] ?? otherwise}; set it in ${NETLIFY_ENV}`;
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
    pipelineId: env.AMOCRM_PIPELINE_ID,
    stageIds: [env.AMOCRM_STAGE_LESSON_1, env.AMOCRM_STAGE_LESSON_2, env.AMOCRM_STAGE_LESSON_3],
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

/** What to do about each variable, for a problem's fix. */
const HINTS: Record<string, string> = {
  SUPABASE_URL: 'set it to the Project URL from Supabase → Project Settings → API (https://<ref>.supabase.co)',
  SUPABASE_DATABASE_URL: 'set SUPABASE_URL to the Project URL from Supabase → Project Settings → API (https://<ref>.supabase.co)',
  SUPABASE_SERVICE_ROLE_KEY: 'copy the service_role (secret) key from Supabase → Project Settings → API',
  AMOCRM_SUBDOMAIN: 'set it to the part before .amocrm.ru in your account address (https://<subdomain>.amocrm.ru)',
  AMOCRM_BASE_DOMAIN: 'one of amocrm.ru, amocrm.com, kommo.com',
  AMOCRM_CLIENT_ID: 'copy the integration ID from amoCRM → Settings → Integrations → your integration → Keys and scopes',
  AMOCRM_CLIENT_SECRET: 'copy the secret key from amoCRM → Settings → Integrations → your integration → Keys and scopes',
  AMOCRM_REDIRECT_URI: 'set it to the redirect URI registered for the integration, exactly',
  AMOCRM_PIPELINE_ID: 'npm run amocrm -- pipelines lists the pipeline ids',
  AMOCRM_STAGE_LESSON_1: 'npm run amocrm -- pipelines lists the stage ids (three different stages)',
  AMOCRM_STAGE_LESSON_2: 'npm run amocrm -- pipelines lists the stage ids',
  AMOCRM_STAGE_LESSON_3: 'npm run amocrm -- pipelines lists the stage ids',
  AMOCRM_WEBHOOK_SECRET: "generate one (node -e \"console.log('whsec_'+require('crypto').randomBytes(24).toString('base64'))\") and store the same value as webhook_secret in amocrm.system_settings",
  AMOCRM_REPLAY_TOKEN: 'generate one: openssl rand -hex 32',
  AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: 'create a bot with @BotFather in Telegram and copy its token',
  AMOCRM_ALERT_TELEGRAM_CHAT_ID: 'add the bot to the team chat, send it a message, and read chat.id from https://api.telegram.org/bot<token>/getUpdates',
  AMOCRM_ALERT_TELEGRAM_API: 'leave it unset (https://api.telegram.org); only the local stand-in sets it',
  AMOCRM_ALERT_WEBHOOK_URL: 'the receiver\'s https:// URL (a Slack incoming webhook, or any endpoint taking JSON)',
};
