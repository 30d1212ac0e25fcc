// `npm run amocrm -- <command>`: the operator commands (see lib/cli/amocrm-commands.ts).
//   npm run amocrm -- pipelines
//   npm run amocrm -- find-deal student@example.com
//   npm run amocrm -- exchange-code <code>
//   npm run amocrm -- store-long-lived <token>
//   npm run amocrm -- refresh
// Options: --embedded (local stack), --database-url <postgres-url>. Unknown command: exit 2.
import { loadDotEnv, openTarget, parseCliArgs, runAmocrmCommand, USAGE } from '../lib/cli/amocrm-commands.ts';
import { redact } from '../lib/log.ts';

const KNOWN = new Set(['pipelines', 'find-deal', 'exchange-code', 'store-long-lived', 'refresh']);
const options = parseCliArgs(process.argv.slice(2));
const [command] = options.args;
if (!command || !KNOWN.has(command)) {
  if (command && command !== 'help' && command !== '--help') console.error(`unknown command: ${command}\n`);
  console.error(USAGE);
  process.exit(command === 'help' || command === '--help' ? 0 : 2);
}
if (!options.embedded) loadDotEnv();

let code = 1;
const target = await openTarget(options, process.env).catch((err) => {
  console.log(redact(`❌ database: cannot connect: ${String((err as Error)?.message ?? err)}`));
  process.exit(1);
});
try {
  if (!target.db) {
    console.log('❌ no database: set SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (or pass --database-url postgres://…, or --embedded)');
  } else {
    const result = await runAmocrmCommand({ db: target.db, env: target.env }, options.args);
    for (const line of result.lines) console.log(redact(line));
    code = result.exitCode;
  }
} catch (err) {
  console.log(redact(`❌ ${String((err as Error)?.message ?? err)}`));
} finally {
  await target.close().catch(() => undefined);
}
process.exit(code);
