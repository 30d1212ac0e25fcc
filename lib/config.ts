// Configuration from the environment, validated once with zod. Every variable is
// documented in .env.example. Secrets are read here and passed on, never logged.
import { z } from 'zod';

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

    AMOCRM_MAX_RPS: z.coerce.number().positive().max(7).default(6),
    AMOCRM_MAX_ATTEMPTS: z.coerce.number().int().min(1).max(50).default(8),
    AMOCRM_TIMEOUT_MS: z.coerce.number().int().min(1000).max(60000).default(10000),
  })
  .superRefine((env, ctx) => {
    if (!env.AMOCRM_BASE_URL && !env.AMOCRM_SUBDOMAIN) {
      ctx.addIssue({ code: 'custom', path: ['AMOCRM_SUBDOMAIN'], message: 'set AMOCRM_SUBDOMAIN (the part before .amocrm.ru / .kommo.com)' });
    }
    if (!env.AMOCRM_LONG_LIVED_TOKEN) {
      for (const key of ['AMOCRM_CLIENT_ID', 'AMOCRM_CLIENT_SECRET', 'AMOCRM_REDIRECT_URI'] as const) {
        if (!env[key]) ctx.addIssue({ code: 'custom', path: [key], message: 'required for OAuth (or set AMOCRM_LONG_LIVED_TOKEN for a private integration)' });
      }
    }
    const stages = [env.AMOCRM_STAGE_LESSON_1, env.AMOCRM_STAGE_LESSON_2, env.AMOCRM_STAGE_LESSON_3];
    if (new Set(stages).size !== stages.length) {
      ctx.addIssue({ code: 'custom', path: ['AMOCRM_STAGE_LESSON_1'], message: 'the three lesson stages must be different stage ids' });
    }
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
}

/** Thrown for a missing or malformed variable; lists every problem, never a value. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(readonly problems: { variable: string; message: string }[]) {
    super(`configuration invalid: ${problems.map((p) => `${p.variable}: ${p.message}`).join('; ')}`);
  }
}

export function parseEnv(source: Record<string, string | undefined>): Env {
  // Empty strings (a variable declared but left blank) count as missing.
  const cleaned = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== undefined && v.trim() !== ''));
  const result = envSchema.safeParse(cleaned);
  if (!result.success) {
    throw new ConfigError(
      result.error.issues.map((i) => ({ variable: String(i.path[0] ?? 'env'), message: i.message })),
    );
  }
  return result.data;
}

type EnvShape = typeof envSchema.shape;

/**
 * One variable read alone, with the same rule as the whole configuration: what an endpoint
 * needs to check its caller (its own secret) before the rest is known to be valid. Blank
 * counts as missing, as in parseEnv.
 */
export function readVariable<K extends keyof EnvShape>(source: Record<string, string | undefined>, key: K):
  { value: z.output<EnvShape[K]>; problem?: undefined } | { value?: undefined; problem: 'missing' | 'malformed' } {
  const raw = source[key];
  if (raw === undefined || raw.trim() === '') return { problem: 'missing' };
  const result = envSchema.shape[key].safeParse(raw);
  return result.success ? { value: result.data as z.output<EnvShape[K]> } : { problem: 'malformed' };
}

function siteFunctionUrl(site: string | undefined, name: string): string | undefined {
  if (!site || !/^https?:\/\//.test(site)) return undefined;
  return `${site.replace(/\/+$/, '')}/.netlify/functions/${name}`;
}

export function loadConfig(source: Record<string, string | undefined> = process.env): Config {
  const env = parseEnv(source);
  const supabaseUrl = env.SUPABASE_URL ?? env.SUPABASE_DATABASE_URL;
  return {
    amocrm: {
      baseUrl: (env.AMOCRM_BASE_URL ?? `https://${env.AMOCRM_SUBDOMAIN}.${env.AMOCRM_BASE_DOMAIN}`).replace(/\/+$/, ''),
      clientId: env.AMOCRM_CLIENT_ID,
      clientSecret: env.AMOCRM_CLIENT_SECRET,
      redirectUri: env.AMOCRM_REDIRECT_URI,
      seed: {
        accessToken: env.AMOCRM_ACCESS_TOKEN,
        refreshToken: env.AMOCRM_REFRESH_TOKEN,
        longLivedToken: env.AMOCRM_LONG_LIVED_TOKEN,
      },
      timeoutMs: env.AMOCRM_TIMEOUT_MS,
      maxRps: env.AMOCRM_MAX_RPS,
    },
    pipelineId: env.AMOCRM_PIPELINE_ID,
    stageIds: [env.AMOCRM_STAGE_LESSON_1, env.AMOCRM_STAGE_LESSON_2, env.AMOCRM_STAGE_LESSON_3],
    webhookSecret: env.AMOCRM_WEBHOOK_SECRET,
    replayToken: env.AMOCRM_REPLAY_TOKEN,
    maxAttempts: env.AMOCRM_MAX_ATTEMPTS,
    drainUrl: env.AMOCRM_DRAIN_URL ?? siteFunctionUrl(env.URL, 'amocrm-drain-background'),
    hooks: { secret: env.AMOCRM_HOOK_SECRET, subdomain: env.AMOCRM_SUBDOMAIN?.toLowerCase(), accountId: env.AMOCRM_ACCOUNT_ID },
    supabase: supabaseUrl && env.SUPABASE_SERVICE_ROLE_KEY ? { url: supabaseUrl, serviceRoleKey: env.SUPABASE_SERVICE_ROLE_KEY } : undefined,
  };
}
