// `npm run doctor`: checks a deployment in one command (the academy's "test-amocrm" step).
//   npm run doctor                          production: env (+ .env) and Supabase
//   npm run doctor -- --embedded            a fresh local stack (PGlite + amoCRM stand-in);
//                                           AMOCRM_* variables in the environment override its env
//   npm run doctor -- --database-url <url>  a plain PostgreSQL instead of Supabase
//   npm run doctor -- --alert-test          also sends each alert channel a test message
// One line per check (✅ / ⚠️ / ❌ … → what to do), then a summary line; exit 1 if any ❌.
import { exitCodeOf, formatCheck, runDoctor } from '../lib/ops/doctor/index.ts';
import { redact } from '../lib/log.ts';
import { parseCommandLine, runMain, UsageError } from './cli.ts';
import { openTarget, TARGET_OPTIONS, TARGET_USAGE } from './target.ts';

const USAGE = `Usage: npm run doctor [-- --embedded | --database-url <postgres-url>] [--alert-test]\n\nOptions:\n${TARGET_USAGE}\n  --alert-test              send each alert channel (Telegram, webhook) a test message`;

await runMain(async () => {
  const { values, positionals } = parseCommandLine(process.argv.slice(2), { ...TARGET_OPTIONS, help: { type: 'boolean', short: 'h' }, 'alert-test': { type: 'boolean' } }, true);
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (positionals.length) throw new UsageError(`unexpected argument(s): ${positionals.join(' ')}`);

  const target = await openTarget(values);
  try {
    const overrides = target.overrides.length ? `; from the environment: ${target.overrides.join(', ')}` : '';
    const source = target.dotEnv ? `; ${target.dotEnv.found ? 'env + .env' : 'env only, no .env file'}` : '';
    console.log(redact(`amoCRM lesson sync doctor — ${target.mode} (${target.label}${overrides}${source})`));
    const results = await runDoctor({
      env: target.env,
      db: target.db,
      requireSupabase: target.requireSupabase,
      databaseLabel: target.label,
      databaseError: target.unreachable,
      dotEnvMissing: target.dotEnv ? !target.dotEnv.found : false,
      alertTest: Boolean(values['alert-test']),
    });
    for (const r of results) console.log(formatCheck(r));
    const failed = results.filter((r) => r.status === 'fail').length;
    const warned = results.filter((r) => r.status === 'warn').length;
    const start = target.dotEnv && !target.dotEnv.found ? ' Start with: cp .env.example .env (or npm run doctor -- --embedded)' : '';
    console.log(failed ? `❌ ${failed} problem(s) to fix.${start}` : warned ? `⚠️ OK, with ${warned} warning(s).` : '✅ All checks passed.');
    return exitCodeOf(results);
  } finally {
    await target.close().catch(() => undefined);
  }
}, USAGE);
