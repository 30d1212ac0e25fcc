// Every variable the functions read: its own rule (zod) and what to do when it is wrong.
// The reading (rules across variables, derived values, the Config) is lib/config.ts.
import { z } from 'zod';

export const AMOCRM_DOMAINS = ['amocrm.ru', 'amocrm.com', 'kommo.com'] as const;
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

    /** The first funnel (version 1) while none is saved; unused once one is (lib/config.ts, envFunnelOf). */
    AMOCRM_PIPELINE_ID: id.optional(),
    AMOCRM_STAGE_LESSON_1: id.optional(),
    AMOCRM_STAGE_LESSON_2: id.optional(),
    AMOCRM_STAGE_LESSON_3: id.optional(),

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

export const STAGE_VARS = ['AMOCRM_STAGE_LESSON_1', 'AMOCRM_STAGE_LESSON_2', 'AMOCRM_STAGE_LESSON_3'] as const;
/** The variables that make the first funnel while none is saved. */
export const FUNNEL_VARS = ['AMOCRM_PIPELINE_ID', ...STAGE_VARS] as const;
export const OAUTH_VARS = ['AMOCRM_CLIENT_ID', 'AMOCRM_CLIENT_SECRET', 'AMOCRM_REDIRECT_URI'] as const;
export const NETLIFY_ENV = 'Netlify → Site configuration → Environment variables (and .env locally)';


/** What to do about `variable` (`otherwise`: when there is no hint for it), and where to set it. */
export const fixFor = (variable: string, otherwise = 'fix the value') => `${HINTS[variable] ?? otherwise}; set it in ${NETLIFY_ENV}`;

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
  AMOCRM_PIPELINE_ID: 'npm run amocrm -- pipelines lists the pipeline ids (or save the funnels instead: npm run amocrm -- funnels set <file>)',
  AMOCRM_STAGE_LESSON_1: 'npm run amocrm -- pipelines lists the stage ids (three different stages; or save the funnels instead: npm run amocrm -- funnels set <file>)',
  AMOCRM_STAGE_LESSON_2: 'npm run amocrm -- pipelines lists the stage ids',
  AMOCRM_STAGE_LESSON_3: 'npm run amocrm -- pipelines lists the stage ids',
  AMOCRM_WEBHOOK_SECRET: "generate one (node -e \"console.log('whsec_'+require('crypto').randomBytes(24).toString('base64'))\") and store the same value as webhook_secret in amocrm.system_settings",
  AMOCRM_REPLAY_TOKEN: 'generate one: openssl rand -hex 32',
  AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: 'create a bot with @BotFather in Telegram and copy its token',
  AMOCRM_ALERT_TELEGRAM_CHAT_ID: 'add the bot to the team chat, send it a message, and read chat.id from https://api.telegram.org/bot<token>/getUpdates',
  AMOCRM_ALERT_TELEGRAM_API: 'leave it unset (https://api.telegram.org); only the local stand-in sets it',
  AMOCRM_ALERT_WEBHOOK_URL: 'the receiver\'s https:// URL (a Slack incoming webhook, or any endpoint taking JSON)',
};
