// `npm run doctor`: checks a deployment in one command (the academy's "test-amocrm" step).
//   npm run doctor                          production: env (+ .env) and Supabase
//   npm run doctor -- --embedded            the local embedded stack (PGlite + amoCRM stand-in);
//                                           AMOCRM_* variables in the environment override its env
//   npm run doctor -- --database-url <url>  a plain PostgreSQL instead of Supabase
// One line per check (✅ / ⚠️ / ❌ … → what to do); exit code 1 if any ❌, else 0.
import { loadDotEnv, openTarget, parseCliArgs } from '../lib/cli/amocrm-commands.ts';
import { exitCodeOf, formatCheck, runDoctor } from '../lib/doctor.ts';
import { redact } from '../lib/log.ts';

const options = parseCliArgs(process.argv.slice(2));
if (options.args.includes('--help') || options.args.includes('-h')) {
  console.log('Usage: npm run doctor [-- --embedded | --database-url <postgres-url>]');
  process.exit(0);
}
if (options.args.length) {
  console.error(`unknown argument(s): ${options.args.join(' ')}\nUsage: npm run doctor [-- --embedded | --database-url <postgres-url>]`);
  process.exit(2);
}
if (!options.embedded) loadDotEnv();

let code = 1;
const target = await openTarget(options, process.env).catch((err) => {
  console.log(redact(`❌ database: cannot connect: ${String((err as Error)?.message ?? err)} → check the database URL`));
  process.exit(1);
});
try {
  const overrides = target.overrides.length ? `; from the environment: ${target.overrides.join(', ')}` : '';
  console.log(redact(`amoCRM lesson sync doctor — ${target.mode} (${target.label}${overrides})`));
  const results = await runDoctor({
    env: target.env,
    db: target.db,
    requireSupabase: target.requireSupabase,
    databaseLabel: target.label,
  });
  for (const r of results) console.log(formatCheck(r));
  code = exitCodeOf(results);
  const failed = results.filter((r) => r.status === 'fail').length;
  const warned = results.filter((r) => r.status === 'warn').length;
  console.log(failed ? `${failed} problem(s) to fix.` : warned ? `OK, with ${warned} warning(s).` : 'All checks passed.');
} catch (err) {
  console.log(redact(`❌ doctor: ${String((err as Error)?.stack ?? err)}`));
  code = 1;
} finally {
  await target.close().catch(() => undefined);
}
process.exit(code);
