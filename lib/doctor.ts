// The academy's "test-amocrm" step as a plain function: every check of a deployment
// (environment, tokens, amoCRM, database, lessons, RLS) over injected dependencies, so
// `npm run doctor` and the tests run the same code. Each check is one result:
//   ✅ <check>: <detail>      ⚠️ <check>: <detail>      ❌ <check>: <detail> → <what to do>
// A result never carries a secret: tokens, the client secret, the service key and the
// webhook secret appear as "set"/"missing" or a length; the webhook secret is compared
// through the sha256 the database reports (amocrm_doctor_facts), never read back. The
// amoCRM hook's URL carries AMOCRM_HOOK_SECRET: it is shown masked (lib/ops/webhooks.ts).
import { createHash } from 'node:crypto';
import { AmoError } from './amocrm/errors.ts';
import { LOST_STATUS_ID, WON_STATUS_ID, type Pipeline } from './amocrm/resources.ts';
import { jwtExpiry } from './amocrm/tokens.ts';
import { ConfigError, loadConfig, parseEnv, PLACEHOLDER_STAGE_IDS, type Env } from './config.ts';
import type { Db } from './db/port.ts';
import { doctorFacts } from './db/settings.ts';
import { memoryLogger, redact } from './log.ts';
import { errorText } from './ops/failure.ts';
import { DAY_MS, inWords, iso } from './ops/time-words.ts';
import { EXAMPLE_SUBDOMAIN, exampleHostOf, OAUTH_VARS, STAGE_VARS, URL_VARS } from './ops/variables.ts';
import { assessHooks, deploymentSite, HOOK_PATH, HOOK_SETTINGS, MASK, maskDestination, REENABLE, shownDestination, staleLine, TURN_ON } from './ops/webhooks.ts';
import { buildRuntime, type Runtime } from './runtime.ts';

/** info: a choice worth knowing about (an optional part switched off), not a problem. */
export type CheckStatus = 'ok' | 'info' | 'warn' | 'fail';

export interface CheckResult {
  status: CheckStatus;
  /** What was checked: a variable name (AMOCRM_STAGE_LESSON_2) or an area (tokens, RLS). */
  check: string;
  detail: string;
  /** What to do; every failure has one. */
  fix?: string;
}

export interface DoctorDeps {
  /** The environment the functions get (process.env, or the embedded stack's env). */
  env: Record<string, string | undefined>;
  /** The database as the functions reach it (service_role); absent when none is configured. */
  db?: Db;
  /** Built from `env` and `db` when absent and the env parses. */
  runtime?: Runtime;
  /** Production: the functions need SUPABASE_URL (or SUPABASE_DATABASE_URL) and the service-role key. */
  requireSupabase?: boolean;
  /** How the database was reached, for the report (e.g. "embedded PGlite"). */
  databaseLabel?: string;
  /** The database the CLI was pointed at did not answer: what happened, in words. */
  databaseError?: string;
  /** The CLI found no .env file: a first-time user gets told where to start. */
  dotEnvMissing?: boolean;
  now?: () => number;
}

export interface DoctorFacts {
  migrations: { schema_amocrm: boolean; tables: string[]; functions: string[] };
  trigger: { present: boolean; enabled: boolean };
  pg_net: { installed: boolean };
  webhook: {
    url_set: boolean; url_scheme: string | null; url_host: string | null; url_path: string | null;
    secret_set: boolean; secret_length: number | null; secret_sha256: string | null;
  };
  tokens: {
    present: boolean; kind?: 'oauth' | 'long_lived'; expires_at?: string | null; auth_state?: string;
    auth_problem?: string | null; has_access_token?: boolean; has_refresh_token?: boolean; updated_at?: string;
  };
  tripwire_lessons: Record<string, number> | null;
  lessons: {
    id: number; stage_number: number | null; table_present: boolean; exists: boolean; title: string | null;
    module_id: number | string | null; module_title: string | null; module_exists: boolean;
    archived: boolean; module_archived: boolean;
  }[];
  lessons_table: boolean;
  modules_table: boolean;
  rls: { table: string; exists: boolean; enabled: boolean }[];
  events: Record<string, number>;
}

export const MARK: Record<CheckStatus, string> = { ok: '✅', info: 'ℹ️', warn: '⚠️', fail: '❌' };

/** The one printed line of a result (redacted once more, as a safety net). */
export function formatCheck(r: CheckResult): string {
  const line = `${MARK[r.status]} ${r.check}: ${r.detail}${r.status === 'fail' && r.fix ? ` → ${r.fix}` : ''}`;
  return redact(line);
}

export const hasFailures = (results: CheckResult[]) => results.some((r) => r.status === 'fail');
export const exitCodeOf = (results: CheckResult[]): 0 | 1 => (hasFailures(results) ? 1 : 0);

const NETLIFY_ENV = 'Netlify → Site configuration → Environment variables (and .env locally)';
const EXPECTED_TABLES = ['rate_limiter', 'student_leads', 'sync_events', 'system_settings'];
const EXPECTED_FUNCTIONS = [
  'amocrm_record_event', 'amocrm_claim_event', 'amocrm_claim_due', 'amocrm_finish_event', 'amocrm_forget_lead',
  'amocrm_get_tokens', 'amocrm_seed_tokens', 'amocrm_begin_refresh', 'amocrm_finish_refresh', 'amocrm_abort_refresh',
  'amocrm_mark_needs_reauth', 'amocrm_store_tokens', 'amocrm_take_rate_slot', 'amocrm_get_pipeline',
  'amocrm_put_pipeline', 'amocrm_doctor_facts', 'amocrm_resume_parked', 'amocrm_reconcile', 'amocrm_select_events',
  'amocrm_status',
  // The burst migration (20261201000600): a drainer's batch writes.
  'amocrm_finish_events', 'amocrm_remember_leads',
  // The feed window migration (20261207000300): without it the events feed is never read.
  'amocrm_get_feed_window', 'amocrm_put_feed_window',
];
const MIGRATE = 'apply the migrations in supabase/migrations (supabase db push, or paste them into the SQL editor in order)';
const REAUTH = 'authorize again and store the tokens: npm run amocrm -- exchange-code <code from amoCRM>';

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
};

const isBlank = (v: string | undefined) => v === undefined || v.trim() === '';

/** The claims of a JWT-shaped key, unverified (only to tell an anon key from a service key). */
function jwtClaims(token: string): Record<string, unknown> | undefined {
  const payload = token.split('.')[1];
  if (!payload) return undefined;
  try {
    return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return undefined;
  }
}

export async function runDoctor(deps: DoctorDeps): Promise<CheckResult[]> {
  const now = deps.now ?? Date.now;
  const raw = deps.env;
  const results: CheckResult[] = [];
  const add = (status: CheckStatus, check: string, detail: string, fix?: string) => {
    results.push({ status, check, detail: redact(detail), ...(fix ? { fix: redact(fix) } : {}) });
  };

  // --- 1. Environment ------------------------------------------------------------------
  let env: Env | undefined;
  const badVars = new Set<string>();
  try {
    env = parseEnv(raw);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    if (deps.dotEnvMissing) {
      add('fail', '.env', 'no .env file here, and the environment does not configure the sync',
        'cp .env.example .env and fill it in (each line below names a variable), or try a fresh local stack: npm run doctor -- --embedded');
    }
    const seen = new Set<string>();
    for (const p of err.problems) {
      const key = `${p.variable}:${p.message}`;
      if (seen.has(key)) continue;
      seen.add(key);
      badVars.add(p.variable);
      const missing = isBlank(raw[p.variable]);
      const custom = !/^Invalid|expected/i.test(p.message);
      const detail = missing
        ? `missing${custom ? ` — ${p.message}` : ''}`
        : `invalid (${p.message})`;
      add('fail', p.variable, detail, `${HINTS[p.variable] ?? 'fix the value'}; set it in ${NETLIFY_ENV}`);
    }
    // zod runs the cross-field rules only once every field parses: report them now too,
    // so one run lists every problem.
    const alsoMissing: [string, string][] = [];
    if (isBlank(raw.AMOCRM_BASE_URL) && isBlank(raw.AMOCRM_SUBDOMAIN)) alsoMissing.push(['AMOCRM_SUBDOMAIN', 'the part before .amocrm.ru / .kommo.com']);
    if (isBlank(raw.AMOCRM_LONG_LIVED_TOKEN)) {
      for (const v of OAUTH_VARS) if (isBlank(raw[v])) alsoMissing.push([v, 'required for OAuth (or set AMOCRM_LONG_LIVED_TOKEN for a private integration)']);
    }
    for (const [variable, why] of alsoMissing) {
      if (badVars.has(variable)) continue;
      badVars.add(variable);
      add('fail', variable, `missing — ${why}`, `${HINTS[variable]}; set it in ${NETLIFY_ENV}`);
    }
  }
  if (env) {
    const base = env.AMOCRM_BASE_URL ?? `https://${env.AMOCRM_SUBDOMAIN}.${env.AMOCRM_BASE_DOMAIN}`;
    const replay = env.AMOCRM_REPLAY_TOKEN ? `, replay token set (${env.AMOCRM_REPLAY_TOKEN.length} chars)` : '';
    add('ok', 'env', `required variables present and well-formed (amoCRM ${base.replace(/\/+$/, '')}, pipeline ${env.AMOCRM_PIPELINE_ID}, stages ${env.AMOCRM_STAGE_LESSON_1}, ${env.AMOCRM_STAGE_LESSON_2}, ${env.AMOCRM_STAGE_LESSON_3}; webhook secret set (${env.AMOCRM_WEBHOOK_SECRET.length} chars)${replay})`);
  }
  // Optional for the sync, but without it the operator endpoints answer 503 to everyone.
  if (isBlank(raw.AMOCRM_REPLAY_TOKEN) && !badVars.has('AMOCRM_REPLAY_TOKEN')) {
    badVars.add('AMOCRM_REPLAY_TOKEN');
    add('fail', 'AMOCRM_REPLAY_TOKEN', 'missing — /api/amocrm/replay and /api/amocrm/status answer 503 to every call without it',
      `${HINTS.AMOCRM_REPLAY_TOKEN}; set it in ${NETLIFY_ENV}`);
  }

  // .env.example's URLs, copied but not replaced: well-formed, and nobody's project.
  for (const variable of URL_VARS) {
    const host = exampleHostOf(raw[variable]);
    if (!host || badVars.has(variable)) continue;
    badVars.add(variable);
    add('fail', variable, `${host} is the example from .env.example, not your ${host.endsWith('supabase.co') ? 'Supabase project' : 'site'}`,
      `${HINTS[variable] ?? 'replace it with the real URL'}; set it in ${NETLIFY_ENV}`);
  }

  // Supabase: how the deployed functions reach the database.
  if (deps.requireSupabase) {
    const urlVar = !isBlank(raw.SUPABASE_URL) ? 'SUPABASE_URL' : !isBlank(raw.SUPABASE_DATABASE_URL) ? 'SUPABASE_DATABASE_URL' : undefined;
    const url = urlVar ? raw[urlVar]!.trim() : undefined;
    const key = raw.SUPABASE_SERVICE_ROLE_KEY?.trim();
    const problems: [string, string, string][] = [];
    if (!url) problems.push(['SUPABASE_URL', 'missing (nor SUPABASE_DATABASE_URL)', HINTS.SUPABASE_URL!]);
    else if (!/^https?:\/\//i.test(url)) problems.push([urlVar!, 'is not an https:// API URL (a postgres:// connection string?); the functions call the database through the Data API', HINTS.SUPABASE_DATABASE_URL!]);
    if (!key) problems.push(['SUPABASE_SERVICE_ROLE_KEY', 'missing', HINTS.SUPABASE_SERVICE_ROLE_KEY!]);
    else {
      const role = jwtClaims(key)?.role;
      if (key.startsWith('sb_publishable_') || (role !== undefined && role !== 'service_role')) {
        problems.push(['SUPABASE_SERVICE_ROLE_KEY', `is a public key (${role ? `role ${String(role)}` : 'publishable'}), not the service_role key: the amocrm_* functions refuse it`, HINTS.SUPABASE_SERVICE_ROLE_KEY!]);
      }
    }
    for (const [variable, detail, fix] of problems) {
      if (badVars.has(variable)) continue;
      badVars.add(variable);
      add('fail', variable, detail, `${fix}; set it in ${NETLIFY_ENV}`);
    }
    if (problems.length === 0 && !badVars.has(urlVar!)) {
      add('ok', 'Supabase', `${urlVar} ${new URL(url!).origin}${urlVar === 'SUPABASE_DATABASE_URL' ? ' (read as SUPABASE_URL)' : ''}, service role key set (${key!.length} chars)`);
    }
  }

  // --- 2. Stage ids are real ones, not the documentation's examples ----------------------
  let placeholders = 0;
  STAGE_VARS.forEach((variable, i) => {
    const value = Number(raw[variable]?.trim());
    if (PLACEHOLDER_STAGE_IDS.includes(value)) {
      placeholders++;
      add('fail', variable, `${value} is the placeholder from the documentation, not a stage of your account`,
        `run npm run amocrm -- pipelines and copy the id of the stage for lesson ${i + 1} into ${variable}`);
    }
  });
  if (placeholders === 0 && STAGE_VARS.every((v) => !isBlank(raw[v]))) {
    add('ok', 'stage ids', `not the documentation placeholders (${PLACEHOLDER_STAGE_IDS.join(', ')})`);
  }

  // --- 3. How the integration authenticates ----------------------------------------------
  const longLived = raw.AMOCRM_LONG_LIVED_TOKEN?.trim();
  if (longLived) {
    const exp = jwtExpiry(longLived);
    if (!exp) add('warn', 'long-lived token', `AMOCRM_LONG_LIVED_TOKEN set (${longLived.length} chars), but its expiry cannot be read`);
    else {
      const left = exp.getTime() - now();
      if (left <= 0) add('fail', 'AMOCRM_LONG_LIVED_TOKEN', `expired ${iso(exp.getTime())}`, 'issue a new long-lived token in amoCRM (integration → Keys and scopes), set AMOCRM_LONG_LIVED_TOKEN and run npm run amocrm -- store-long-lived <token>');
      else if (left < 30 * DAY_MS) add('warn', 'long-lived token', `expires ${iso(exp.getTime())} (${inWords(left)}): issue a new one before then`);
      else add('ok', 'long-lived token', `AMOCRM_LONG_LIVED_TOKEN set, expires ${iso(exp.getTime())} (${inWords(left)})`);
    }
  } else if (OAUTH_VARS.every((v) => !isBlank(raw[v]) && !badVars.has(v))) {
    add('ok', 'OAuth', `client id set, client secret set (${raw.AMOCRM_CLIENT_SECRET!.trim().length} chars), redirect URI ${raw.AMOCRM_REDIRECT_URI!.trim()}`);
  } // otherwise each missing variable already has its line

  // --- 4. Database --------------------------------------------------------------------------
  let facts: DoctorFacts | undefined;
  if (!deps.db && deps.databaseError) {
    add('fail', 'database', deps.databaseError, 'check the database URL (--database-url, DATABASE_URL or SUPABASE_URL) and that the server is running');
  } else if (!deps.db) {
    const reported = ['SUPABASE_URL', 'SUPABASE_DATABASE_URL', 'SUPABASE_SERVICE_ROLE_KEY'].some((v) => badVars.has(v));
    add(reported ? 'warn' : 'fail', 'database', 'not checked: no database connection',
      'set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or pass --database-url postgres://…, or --embedded for a fresh local stack)');
  } else {
    try {
      facts = await doctorFacts<DoctorFacts>(deps.db);
      add('ok', 'database', `${deps.databaseLabel ?? 'reachable'}: amocrm_doctor_facts answered`);
    } catch (err) {
      const code = (err as { code?: string }).code;
      const fix = code === 'PGRST202' || code === '42883' || code === '3F000'
        ? `${MIGRATE} (20261124000200_amocrm_doctor.sql adds amocrm_doctor_facts)`
        : code === '42501' || code === '401' || /permission|JWT|Invalid API key/i.test(errorText(err))
          ? 'use the service_role key in SUPABASE_SERVICE_ROLE_KEY (the amocrm_* functions are service_role only)'
          : 'check SUPABASE_URL / the database URL and that the project is running';
      add('fail', 'database', `amocrm_doctor_facts failed: ${errorText(err)}`, fix);
    }
  }

  if (facts) checkDatabase(facts, raw, add, Boolean(deps.requireSupabase));
  const tokensUsable = facts ? checkTokens(facts, raw, now, add) : false;

  // --- 5. amoCRM ------------------------------------------------------------------------------
  let runtime = deps.runtime;
  if (!runtime && env && deps.db && facts) {
    // The doctor's own logger: a token refresh it causes is not one of its report lines.
    runtime = buildRuntime(loadConfig(raw), deps.db, { log: memoryLogger() });
  }
  let accountAnswered = false;
  if (!runtime) {
    add('warn', 'amoCRM', `not checked: ${!env ? 'fix the variables above first' : 'the database is needed for tokens and the rate limit'}`);
  } else if (!tokensUsable) {
    add('warn', 'amoCRM', 'not checked: no usable tokens (see tokens above)');
  } else {
    accountAnswered = await checkAmo(runtime, add);
  }

  // --- 6. amoCRM's hook: the reverse direction ---------------------------------------------
  if (!badVars.has('AMOCRM_HOOK_SECRET')) {
    const hookSecret = raw.AMOCRM_HOOK_SECRET?.trim();
    if (!hookSecret) {
      add('info', 'amoCRM hook', `off: AMOCRM_HOOK_SECRET is not set, so changes made in amoCRM (a deal won, lost or moved by hand) do not reach the platform; to turn it on: ${TURN_ON}`);
    } else if (!runtime || !accountAnswered) {
      add('warn', 'amoCRM hook', 'not checked: amoCRM was not reached (see above)');
    } else {
      await checkHook(runtime, raw, facts, hookSecret, add);
    }
  }

  // .env.example's subdomain may well be the real account: doubt it only while amoCRM
  // has not answered for it.
  if (raw.AMOCRM_SUBDOMAIN?.trim().toLowerCase() === EXAMPLE_SUBDOMAIN && isBlank(raw.AMOCRM_BASE_URL) && !accountAnswered) {
    add('warn', 'AMOCRM_SUBDOMAIN', `${EXAMPLE_SUBDOMAIN} is the example from .env.example and amoCRM has not confirmed it: make sure it is your account (https://<subdomain>.amocrm.ru)`);
  }

  return results;
}

type Add = (status: CheckStatus, check: string, detail: string, fix?: string) => void;

function checkDatabase(facts: DoctorFacts, raw: Record<string, string | undefined>, add: Add, deployed: boolean): void {
  // Migrations: schema, tables, functions.
  const m = facts.migrations;
  const missingTables = EXPECTED_TABLES.filter((t) => !m.tables.includes(t));
  const missingFunctions = EXPECTED_FUNCTIONS.filter((f) => !m.functions.includes(f));
  if (!m.schema_amocrm || missingTables.length || missingFunctions.length) {
    const parts = [
      !m.schema_amocrm && 'schema amocrm missing',
      missingTables.length && `tables missing: ${missingTables.map((t) => `amocrm.${t}`).join(', ')}`,
      missingFunctions.length && `functions missing: ${missingFunctions.map((f) => `public.${f}`).join(', ')}`,
    ].filter(Boolean);
    add('fail', 'migrations', parts.join('; '), MIGRATE);
  } else {
    add('ok', 'migrations', `schema amocrm, tables ${m.tables.join(', ')}; ${m.functions.length} public.amocrm_* functions`);
  }

  if (!facts.trigger.present) {
    add('fail', 'trigger', 'amocrm_lesson_completed on public.lesson_progress is missing', `${MIGRATE} (20261124000100_amocrm_sync.sql creates it)`);
  } else if (!facts.trigger.enabled) {
    add('fail', 'trigger', 'amocrm_lesson_completed on public.lesson_progress is disabled', 'alter table public.lesson_progress enable trigger amocrm_lesson_completed;');
  } else {
    add('ok', 'trigger', 'amocrm_lesson_completed on public.lesson_progress, enabled');
  }

  if (facts.pg_net.installed) add('ok', 'pg_net', 'installed (net.http_post): the trigger rings the webhook at once');
  else add('fail', 'pg_net', 'not installed: the trigger cannot ring the webhook, events wait for the scheduled run', 'Supabase → Database → Extensions → enable pg_net');

  // Webhook URL: facts carry scheme, host and path only.
  const w = facts.webhook;
  const setUrl = "insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb('https://<site>.netlify.app/api/amocrm/lesson-completed'::text)) on conflict (key) do update set value = excluded.value;";
  if (!w.url_set) {
    add('fail', 'webhook URL', 'webhook_url is not set in amocrm.system_settings', setUrl);
  } else if (!w.url_host || !w.url_scheme || !['http', 'https'].includes(w.url_scheme)) {
    add('fail', 'webhook URL', 'webhook_url is not an http(s) URL', setUrl);
  } else {
    const local = /^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$/i.test(w.url_host);
    const shown = `${w.url_scheme}://${w.url_host}${w.url_path ?? ''}`;
    if (local && deployed) add('warn', 'webhook URL', `${shown}: points at a local machine, the database cannot reach it; use the site URL https://<site>.netlify.app/api/amocrm/lesson-completed`);
    else if (w.url_scheme !== 'https' && !local) add('warn', 'webhook URL', `${shown}: not https, the events travel unencrypted`);
    else if (!(w.url_path ?? '').endsWith('/api/amocrm/lesson-completed')) add('warn', 'webhook URL', `${shown}: the function is served at /api/amocrm/lesson-completed`);
    else add('ok', 'webhook URL', `${shown}${local ? ' (local)' : ''}`);
  }

  // Webhook secret: set, and the same as AMOCRM_WEBHOOK_SECRET (compared by sha256).
  const envSecret = raw.AMOCRM_WEBHOOK_SECRET;
  const setSecret = "insert into amocrm.system_settings (key, value) values ('webhook_secret', to_jsonb('<the value of AMOCRM_WEBHOOK_SECRET>'::text)) on conflict (key) do update set value = excluded.value;";
  if (!w.secret_set || !w.secret_sha256) {
    add('fail', 'webhook secret', 'webhook_secret is not set in amocrm.system_settings', setSecret);
  } else if (isBlank(envSecret)) {
    add('warn', 'webhook secret', `set in the database (${w.secret_length} chars); not compared, AMOCRM_WEBHOOK_SECRET is missing`);
  } else if (createHash('sha256').update(envSecret!, 'utf8').digest('hex') !== w.secret_sha256) {
    add('fail', 'AMOCRM_WEBHOOK_SECRET', `differs from webhook_secret in the database (lengths ${envSecret!.length} and ${w.secret_length}): every webhook would be rejected with 401`,
      `make them equal: set AMOCRM_WEBHOOK_SECRET in ${NETLIFY_ENV} or update the row: ${setSecret}`);
  } else {
    add('ok', 'webhook secret', `set in the database and equal to AMOCRM_WEBHOOK_SECRET (${w.secret_length} chars, compared by sha256)`);
  }

  // Tripwire lessons: the map and the academy's lessons.
  const map = facts.tripwire_lessons;
  const numbers = map ? Object.values(map).map(Number).sort((a, b) => a - b) : [];
  if (!map || Object.keys(map).length === 0) {
    add('fail', 'tripwire lessons', 'tripwire_lessons is not set in amocrm.system_settings', `insert into amocrm.system_settings (key, value) values ('tripwire_lessons', '{"67": 1, "68": 2, "69": 3}') on conflict (key) do update set value = excluded.value;`);
  } else if (numbers.join(',') !== '1,2,3') {
    add('fail', 'tripwire lessons', `map ${JSON.stringify(map)} does not give stages 1, 2, 3 once each`, `update amocrm.system_settings set value = '{"67": 1, "68": 2, "69": 3}' where key = 'tripwire_lessons';`);
  }
  if (map && Object.keys(map).length) {
    if (!facts.lessons_table) {
      add('warn', 'lessons', `public.lessons not found: cannot check that lessons ${Object.keys(map).join(', ')} exist`);
    } else {
      const problems: string[] = [];
      for (const l of facts.lessons) {
        if (!l.exists) problems.push(`lesson ${l.id} not found in public.lessons`);
        else if (l.archived) problems.push(`lesson ${l.id} '${l.title}' is archived`);
        else if (l.module_id === null || l.module_id === undefined) problems.push(`lesson ${l.id} '${l.title}' has no module`);
        else if (facts.modules_table && !l.module_exists) problems.push(`lesson ${l.id}: module ${l.module_id} not found`);
        else if (l.module_archived) problems.push(`lesson ${l.id}: module ${l.module_id} '${l.module_title}' is archived`);
      }
      if (problems.length) {
        add('fail', 'lessons', problems.join('; '), "point tripwire_lessons at the live lesson ids: update amocrm.system_settings set value = '{\"<id>\": 1, …}' where key = 'tripwire_lessons';");
      } else {
        const list = facts.lessons
          .map((l) => `${l.id} '${l.title}' → stage ${l.stage_number}`)
          .join('; ');
        const modules = [...new Set(facts.lessons.map((l) => `${l.module_id}${l.module_title ? ` '${l.module_title}'` : ''}`))];
        add('ok', 'lessons', `${list} (module ${modules.join(', ')}), none archived`);
      }
    }
  }

  // RLS on every table of the integration.
  const off = facts.rls.filter((r) => r.exists && !r.enabled).map((r) => r.table);
  const absent = facts.rls.filter((r) => !r.exists).map((r) => r.table);
  if (off.length) {
    add('fail', 'RLS', `off for ${off.join(', ')}`, off.map((t) => `alter table ${t} enable row level security;`).join(' '));
  } else if (absent.length) {
    add('fail', 'RLS', `${absent.join(', ')} not found`, 'the sync needs public.lesson_progress (the academy table the trigger watches)');
  } else {
    add('ok', 'RLS', `on for ${facts.rls.map((r) => r.table).join(', ')}`);
  }

  // The outbox at a glance.
  const counts = Object.entries(facts.events ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const summary = counts.length ? counts.map(([s, n]) => `${s} ${n}`).join(', ') : 'no events yet';
  const parked = facts.events?.parked ?? 0;
  const dead = facts.events?.dead ?? 0;
  if (parked || dead) {
    add('warn', 'outbox', `${summary}${parked ? `; ${parked} parked until an operator fixes tokens/account (they resume when tokens are stored)` : ''}${dead ? `; ${dead} dead: replay them with POST /api/amocrm/replay` : ''}`);
  } else {
    add('ok', 'outbox', summary);
  }
}

/** The tokens row; returns whether amoCRM can be called with it. */
function checkTokens(facts: DoctorFacts, raw: Record<string, string | undefined>, now: () => number, add: Add): boolean {
  const t = facts.tokens;
  if (!t.present) {
    const seed = !isBlank(raw.AMOCRM_LONG_LIVED_TOKEN) ? 'AMOCRM_LONG_LIVED_TOKEN' : !isBlank(raw.AMOCRM_REFRESH_TOKEN) ? 'AMOCRM_REFRESH_TOKEN' : undefined;
    if (seed) {
      add('warn', 'tokens', `none in amocrm.system_settings yet: the first request stores them from ${seed}`);
      return true;
    }
    add('fail', 'tokens', 'none in amocrm.system_settings', `${REAUTH} (or, for a private integration, npm run amocrm -- store-long-lived <token>)`);
    return false;
  }
  if (t.auth_state === 'needs_reauth') {
    add('fail', 'tokens', `${t.kind} token chain broken: ${t.auth_problem ?? 'tokens revoked'} (auth_state needs_reauth)`,
      t.kind === 'long_lived' ? 'issue a new long-lived token and run npm run amocrm -- store-long-lived <token>' : REAUTH);
    return false;
  }
  const expires = t.expires_at ? Date.parse(t.expires_at) : NaN;
  const left = expires - now();
  if (t.kind === 'long_lived') {
    if (!Number.isFinite(expires)) add('warn', 'tokens', 'long-lived token stored, expiry unknown');
    else if (left <= 0) {
      add('fail', 'tokens', `long-lived token expired ${iso(expires)}`, 'issue a new long-lived token and run npm run amocrm -- store-long-lived <token>');
      return false;
    } else if (left < 30 * DAY_MS) add('warn', 'tokens', `long-lived token expires ${iso(expires)} (${inWords(left)}): issue a new one before then`);
    else add('ok', 'tokens', `long-lived token stored, expires ${iso(expires)} (${inWords(left)})`);
    return true;
  }
  if (!t.has_refresh_token) {
    add('fail', 'tokens', 'oauth token stored without a refresh token: it cannot be renewed', REAUTH);
    return false;
  }
  const updated = t.updated_at ? Date.parse(t.updated_at) : NaN;
  const idle = now() - updated;
  const access = !Number.isFinite(expires) ? 'access token expiry unknown'
    : left > 0 ? `access token valid until ${iso(expires)} (${inWords(left)})`
      : `access token expired ${iso(expires)}, the next request refreshes it`;
  if (Number.isFinite(idle) && idle > 75 * DAY_MS) {
    add('warn', 'tokens', `oauth, ${access}; refresh token last rotated ${inWords(-idle)}: amoCRM revokes it after 3 months unused, run npm run amocrm -- refresh`);
  } else {
    add('ok', 'tokens', `oauth, ${access}, refresh token stored${Number.isFinite(updated) ? `, updated ${iso(updated)}` : ''}`);
  }
  return true;
}

/**
 * amoCRM has a hook at exactly this deployment's crm-events URL, enabled, carrying
 * status_lead. Every line shows the URL with the secret masked.
 */
async function checkHook(runtime: Runtime, raw: Record<string, string | undefined>, facts: DoctorFacts | undefined, secret: string, add: Add): Promise<void> {
  const scrub = (text: string) => text.split(secret).join(MASK);
  const check = (status: CheckStatus, detail: string, fix?: string) => add(status, 'amoCRM hook', scrub(detail), fix && scrub(fix));
  const site = deploymentSite(raw, facts?.webhook);
  if ('problem' in site) {
    check('fail', `${site.problem}: the hook's URL is <site>${HOOK_PATH}<AMOCRM_HOOK_SECRET>`, site.fix);
    return;
  }
  const shown = shownDestination(site.site);
  let hooks;
  try {
    hooks = await runtime.invocation(10_000).amo.listWebhooks();
  } catch (err) {
    if (err instanceof AmoError && err.details.status === 403) {
      check('warn', `not checked: amoCRM answers 403 to GET /api/v4/webhooks (only an administrator's token may list hooks); check by hand in amoCRM → Settings → Integrations → Web hooks that ${shown} is there, enabled, with status_lead`);
    } else {
      check('fail', `GET /api/v4/webhooks failed: ${errorText(err)}`, 'retry; npm run amocrm -- webhooks list shows the hooks');
    }
    return;
  }
  const a = assessHooks(hooks, site.site, secret);
  const stale = a.stale.length ? `; ${staleLine(a.stale, site.site).replace(/^⚠️ /, '')}` : '';
  if (!a.ours) {
    const others = hooks.length ? ` (the account has ${hooks.length}: ${hooks.map((h) => maskDestination(h.destination, [secret])).join(', ')})` : ' (the account has none)';
    check('fail', `no hook points at this deployment, ${shown} (site from ${site.from})${others}: amoCRM's changes do not reach the platform${stale}`,
      'npm run amocrm -- webhooks subscribe');
  } else if (a.ours.disabled) {
    check('fail', `the hook for ${shown} is disabled by amoCRM (more than 100 invalid answers within 2 hours): amoCRM's changes do not reach the platform${stale}`, REENABLE);
  } else if (!a.ours.settings.includes('status_lead')) {
    check('fail', `the hook for ${shown} does not carry status_lead (it has ${a.ours.settings.join(', ') || 'no events'}): stage changes are not sent`,
      'npm run amocrm -- webhooks subscribe (adds the missing events)');
  } else if (a.missing.length || stale) {
    check('warn', `the hook for ${shown} is enabled with status_lead${a.missing.length ? `, but lacks ${a.missing.join(', ')}: run npm run amocrm -- webhooks subscribe to add them` : ''}${stale}`);
  } else {
    check('ok', `${shown} (site from ${site.from}) enabled, with ${HOOK_SETTINGS.filter((s) => a.ours!.settings.includes(s)).join(', ')}`);
  }
}

/** Checks the account, pipeline and stages; returns whether the account answered. */
async function checkAmo(runtime: Runtime, add: Add): Promise<boolean> {
  const { config } = runtime;
  const amo = runtime.invocation(10_000).amo;
  try {
    const account = await amo.getAccount();
    add('ok', 'amoCRM', `account '${account.name}' (${account.subdomain}, id ${account.id}) at ${config.amocrm.baseUrl}`);
  } catch (err) {
    const whatToDo = err instanceof AmoError ? err.details.whatToDo : undefined;
    const network = err instanceof AmoError && (err.code === 'network' || err.code === 'timeout');
    add('fail', 'amoCRM', `GET /api/v4/account at ${config.amocrm.baseUrl} failed: ${errorText(err)}`,
      whatToDo ?? (network ? 'check AMOCRM_SUBDOMAIN / AMOCRM_BASE_DOMAIN (or AMOCRM_BASE_URL)' : 'see the error; retry later'));
    return false;
  }

  let pipelines: Pipeline[];
  try {
    pipelines = await amo.listPipelines();
  } catch (err) {
    add('fail', 'pipeline', `GET /api/v4/leads/pipelines failed: ${errorText(err)}`, 'retry; check the integration has access to deals');
    return true;
  }
  const pipeline = pipelines.find((p) => p.id === config.pipelineId);
  if (!pipeline) {
    const known = pipelines.map((p) => `'${p.name}' (${p.id})`).join(', ') || 'none';
    add('fail', 'AMOCRM_PIPELINE_ID', `pipeline ${config.pipelineId} not found in the account (pipelines: ${known})`,
      'set AMOCRM_PIPELINE_ID to the Tripwire pipeline: npm run amocrm -- pipelines');
    return true;
  }
  let stageProblems = 0;
  const found: { index: number; id: number; name: string; sort: number }[] = [];
  config.stageIds.forEach((id, index) => {
    const variable = STAGE_VARS[index]!;
    const own = pipeline.statuses.find((s) => s.id === id);
    if (id === WON_STATUS_ID || id === LOST_STATUS_ID) {
      stageProblems++;
      add('fail', variable, `stage ${id} is the system '${id === WON_STATUS_ID ? 'won' : 'lost'}' stage, deals are never moved there`,
        `use a regular stage of pipeline '${pipeline.name}': npm run amocrm -- pipelines`);
      return;
    }
    if (own) {
      found.push({ index, id, name: own.name, sort: own.sort });
      return;
    }
    stageProblems++;
    if (PLACEHOLDER_STAGE_IDS.includes(id)) return; // already reported as the placeholder it is
    const owner = pipelines.find((p) => p.statuses.some((s) => s.id === id));
    add('fail', variable,
      owner ? `stage ${id} belongs to pipeline '${owner.name}', not ${pipeline.id}` : `stage ${id} not found in any pipeline`,
      `use a stage of pipeline '${pipeline.name}' (${pipeline.id}): npm run amocrm -- pipelines`);
  });
  if (stageProblems) return true;
  const list = found.map((s) => `lesson ${s.index + 1} → ${s.id} '${s.name}'`).join(', ');
  const ordered = found.every((s, i) => i === 0 || s.sort > found[i - 1]!.sort);
  if (!ordered) {
    add('warn', 'pipeline', `'${pipeline.name}' (${pipeline.id}): ${list}; the stages are not in lesson order in the pipeline, so forward-only moves will skip some lessons`);
  } else {
    add('ok', 'pipeline', `'${pipeline.name}' (${pipeline.id}): ${list}`);
  }
  return true;
}
