// The environment's lines: every problem readConfig finds (each with its fix), then what
// only the doctor judges — the replay token the operator endpoints need, .env.example's
// values left in place, documentation placeholder stage ids, Supabase as the deployed
// functions reach it, and how the integration authenticates. Values come from the one
// reading of the environment (lib/config.ts), never from the variables themselves.
import { jwtExpiry } from '../../jwt.ts';
import { fixFor, OAUTH_VARS, PLACEHOLDER_STAGE_IDS, readConfig, STAGE_VARS, type ConfigProblem, type ConfigReading } from '../../config.ts';
import { DAY_MS, inWords, iso } from '../time-words.ts';
import { exampleHostOf, URL_VARS } from '../variables.ts';
import type { Add } from './report.ts';

export interface EnvironmentCheck {
  reading: ConfigReading;
  /** Variables that already have a ❌ line. */
  bad: Set<string>;
}

export interface EnvironmentSource {
  env: Record<string, string | undefined>;
  requireSupabase?: boolean;
  dotEnvMissing?: boolean;
}

export function checkEnvironment(deps: EnvironmentSource, now: () => number, add: Add): EnvironmentCheck {
  const requireSupabase = Boolean(deps.requireSupabase);
  const reading = readConfig(deps.env, { requireSupabase });
  const bad = new Set<string>();
  const fail = (p: ConfigProblem) => {
    if (bad.has(p.variable)) return;
    bad.add(p.variable);
    const custom = !/^Invalid|expected/i.test(p.message);
    add('fail', p.variable, p.missing ? `missing${custom ? ` — ${p.message}` : ''}` : `invalid (${p.message})`, p.fix);
  };
  const own = reading.problems.filter((p) => !p.deployed);
  const deployed = reading.problems.filter((p) => p.deployed);
  if (own.length && deps.dotEnvMissing) {
    add('fail', '.env', 'no .env file here, and the environment does not configure the sync',
      'cp .env.example .env and fill it in (each line below names a variable), or try a fresh local stack: npm run doctor -- --embedded');
  }
  own.forEach(fail);
  const { config } = reading;
  if (config) {
    const replay = config.replayToken ? `, replay token set (${config.replayToken.length} chars)` : '';
    const funnel = config.stageIds ? `pipeline ${config.pipelineId}, stages ${config.stageIds.join(', ')}` : 'no funnel variables (the funnels saved in the database)';
    add('ok', 'env', `required variables present and well-formed (amoCRM ${config.amocrm.baseUrl}, ${funnel}; webhook secret set (${config.webhookSecret.length} chars)${replay})`);
  }
  checkAdvisories(reading, bad, add);
  deployed.forEach(fail);
  if (requireSupabase && deployed.length === 0) supabaseLine(reading, bad, add);
  checkStageIds(reading, add);
  checkAuth(reading, bad, now, add);
  return { reading, bad };
}

/** Not wrong for the functions, but wrong for a deployment: the replay token, .env.example's URLs. */
function checkAdvisories(reading: ConfigReading, bad: Set<string>, add: Add): void {
  // Optional for the sync, but without it the operator endpoints answer 503 to everyone.
  if (!reading.values.AMOCRM_REPLAY_TOKEN && !bad.has('AMOCRM_REPLAY_TOKEN')) {
    bad.add('AMOCRM_REPLAY_TOKEN');
    add('fail', 'AMOCRM_REPLAY_TOKEN', 'missing — /api/amocrm/replay and /api/amocrm/status answer 503 to every call without it', fixFor('AMOCRM_REPLAY_TOKEN'));
  }
  // .env.example's URLs, copied but not replaced: well-formed, and nobody's project.
  for (const variable of URL_VARS) {
    const host = exampleHostOf(reading.values[variable]);
    if (!host || bad.has(variable)) continue;
    bad.add(variable);
    add('fail', variable, `${host} is the example from .env.example, not your ${host.endsWith('supabase.co') ? 'Supabase project' : 'site'}`,
      fixFor(variable, 'replace it with the real URL'));
  }
}

/** Supabase as the deployed functions reach it, when nothing is wrong with it. */
function supabaseLine(reading: ConfigReading, bad: Set<string>, add: Add): void {
  const { supabaseUrl, supabaseUrlFrom } = reading.derived;
  const key = reading.values.SUPABASE_SERVICE_ROLE_KEY;
  if (!supabaseUrl || !supabaseUrlFrom || !key || bad.has(supabaseUrlFrom)) return;
  add('ok', 'Supabase', `${supabaseUrlFrom} ${new URL(supabaseUrl).origin}${supabaseUrlFrom === 'SUPABASE_DATABASE_URL' ? ' (read as SUPABASE_URL)' : ''}, service role key set (${key.length} chars)`);
}

/** Stage ids are real ones, not the documentation's examples. */
function checkStageIds(reading: ConfigReading, add: Add): void {
  let placeholders = 0;
  STAGE_VARS.forEach((variable, i) => {
    const value = reading.values[variable];
    if (value !== undefined && PLACEHOLDER_STAGE_IDS.includes(value)) {
      placeholders++;
      add('fail', variable, `${value} is the placeholder from the documentation, not a stage of your account`,
        `run npm run amocrm -- pipelines and copy the id of the stage for lesson ${i + 1} into ${variable}`);
    }
  });
  if (placeholders === 0 && STAGE_VARS.every((v) => reading.values[v] !== undefined)) {
    add('ok', 'stage ids', `not the documentation placeholders (${PLACEHOLDER_STAGE_IDS.join(', ')})`);
  }
}

/** How the integration authenticates: a long-lived token (and when it expires), or OAuth. */
function checkAuth(reading: ConfigReading, bad: Set<string>, now: () => number, add: Add): void {
  const v = reading.values;
  const longLived = v.AMOCRM_LONG_LIVED_TOKEN;
  if (longLived) {
    const exp = jwtExpiry(longLived);
    const left = exp ? exp.getTime() - now() : 0;
    if (!exp) add('warn', 'long-lived token', `AMOCRM_LONG_LIVED_TOKEN set (${longLived.length} chars), but its expiry cannot be read`);
    else if (left <= 0) add('fail', 'AMOCRM_LONG_LIVED_TOKEN', `expired ${iso(exp.getTime())}`, 'issue a new long-lived token in amoCRM (integration → Keys and scopes), set AMOCRM_LONG_LIVED_TOKEN and run npm run amocrm -- store-long-lived <token>');
    else if (left < 30 * DAY_MS) add('warn', 'long-lived token', `expires ${iso(exp.getTime())} (${inWords(left)}): issue a new one before then`);
    else add('ok', 'long-lived token', `AMOCRM_LONG_LIVED_TOKEN set, expires ${iso(exp.getTime())} (${inWords(left)})`);
  } else if (OAUTH_VARS.every((k) => v[k] !== undefined && !bad.has(k))) {
    add('ok', 'OAuth', `client id set, client secret set (${v.AMOCRM_CLIENT_SECRET!.length} chars), redirect URI ${v.AMOCRM_REDIRECT_URI}`);
  } // otherwise each missing variable already has its line
}
