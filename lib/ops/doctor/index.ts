// `npm run doctor` (the academy's "test-amocrm" step) as a plain function: every check of a
// deployment over injected dependencies, so the CLI and the tests run the same code. One
// file per area, in the order the lines are printed:
//   environment.ts  the variables, read once by lib/config.ts (readConfig), and what only
//                   a deployment needs (replay token, real URLs and stage ids, Supabase)
//   facts.ts        the database answers amocrm_doctor_facts
//   schema.ts       it holds what supabase/migrations creates (expected.ts reads them)
//   webhook.ts      pg_net, webhook_url, webhook_secret
//   academy.ts      the Tripwire lessons, RLS, the outbox
//   tokens.ts       the stored tokens
//   amocrm.ts       the account, the pipeline, the stages
//   funnels.ts      every saved funnel against amoCRM and the lessons (lib/funnels/check.ts)
//   hook.ts         amoCRM's hook (the reverse direction)
//   alerts.ts       the alert channels (a test message with --alert-test)
// A result never carries a secret: tokens, the client secret, the service key and the
// webhook secret appear as "set"/"missing" or a length.
import { envFunnelOf } from '../../config.ts';
import { currentFunnels } from '../../db/funnels.ts';
import { memoryLogger } from '../../log.ts';
import type { Db } from '../../db/port.ts';
import { buildRuntime, type Runtime } from '../../runtime.ts';
import { EXAMPLE_SUBDOMAIN } from '../variables.ts';
import { checkAcademy } from './academy.ts';
import { checkAlerts } from './alerts.ts';
import { checkAmo } from './amocrm.ts';
import { checkEnvironment } from './environment.ts';
import { checkSavedFunnels, envFunnel } from './funnels.ts';
import { expectedSchema } from './expected.ts';
import { loadFacts } from './facts.ts';
import { checkReverse } from './hook.ts';
import { collector, type CheckResult } from './report.ts';
import { checkSchema } from './schema.ts';
import { checkTokens } from './tokens.ts';
import { checkWebhook } from './webhook.ts';

export { exitCodeOf, formatCheck, hasFailures, MARK, type CheckResult, type CheckStatus } from './report.ts';
export type { DoctorFacts } from './facts.ts';

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
  /** Where the migrations are (default: the repository's supabase/migrations). */
  migrationsDir?: string;
  now?: () => number;
  /** Send each configured alert channel a test message (npm run doctor -- --alert-test). */
  alertTest?: boolean;
}

export async function runDoctor(deps: DoctorDeps): Promise<CheckResult[]> {
  const now = deps.now ?? Date.now;
  const { results, add } = collector();
  const { reading, bad } = checkEnvironment(deps, now, add);
  const { values, config } = reading;

  const supabaseReported = ['SUPABASE_URL', 'SUPABASE_DATABASE_URL', 'SUPABASE_SERVICE_ROLE_KEY'].some((v) => bad.has(v));
  const facts = await loadFacts(deps, supabaseReported, add);
  if (facts) {
    checkSchema(facts, add, expectedSchema(deps.migrationsDir));
    checkWebhook(facts, values.AMOCRM_WEBHOOK_SECRET, Boolean(deps.requireSupabase), add);
    checkAcademy(facts, add);
  }
  const tokensUsable = facts ? checkTokens(facts, values, now, add) : false;

  // The doctor's own logger: a token refresh it causes is not one of its report lines.
  const runtime = deps.runtime ?? (config && deps.db && facts ? buildRuntime(config, deps.db, { log: memoryLogger() }) : undefined);
  let accountAnswered = false;
  if (!runtime) {
    add('warn', 'amoCRM', `not checked: ${!config ? 'fix the variables above first' : 'the database is needed for tokens and the rate limit'}`);
  } else if (!tokensUsable) {
    add('warn', 'amoCRM', 'not checked: no usable tokens (see tokens above)');
  } else {
    const saved = deps.db ? await currentFunnels(deps.db).catch(() => null) : null;
    accountAnswered = await checkAmo(runtime, add, !saved);
  }
  if (runtime && accountAnswered && deps.db && facts) {
    const amo = runtime.invocation(10_000).amo;
    const vars = envFunnelOf(runtime.config);
    const fromEnv = vars ? envFunnel(vars.pipelineId, vars.stageIds, facts.tripwire_lessons) : null;
    await checkSavedFunnels(deps.db, () => amo.listPipelines(), fromEnv, add);
  }

  if (!bad.has('AMOCRM_HOOK_SECRET')) await checkReverse(runtime, accountAnswered, values.AMOCRM_HOOK_SECRET, values.URL, facts, add);

  await checkAlerts(config, Boolean(deps.alertTest), add);

  // .env.example's subdomain may well be the real account: doubt it only while amoCRM has not answered for it.
  if (values.AMOCRM_SUBDOMAIN?.toLowerCase() === EXAMPLE_SUBDOMAIN && !values.AMOCRM_BASE_URL && !accountAnswered) {
    add('warn', 'AMOCRM_SUBDOMAIN', `${EXAMPLE_SUBDOMAIN} is the example from .env.example and amoCRM has not confirmed it: make sure it is your account (https://<subdomain>.amocrm.ru)`);
  }
  return results;
}
