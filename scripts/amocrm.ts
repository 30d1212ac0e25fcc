// `npm run amocrm -- <command>`: the operator commands of lib/ops/, run against the target
// chosen by scripts/target.ts. Exit 0 done, 1 failed, 2 bad arguments.
import { userInfo } from 'node:os';
import type { CommandContext, CommandResult } from '../lib/ops/command.ts';
import { findDealCommand } from '../lib/ops/find-deal-command.ts';
import { funnelsCommand, parseFunnelsArgs } from '../lib/ops/funnels-command.ts';
import { pipelinesCommand } from '../lib/ops/pipelines.ts';
import { exchangeCodeCommand, refreshCommand, storeLongLivedCommand } from '../lib/ops/token-commands.ts';
import { ACTIONS as WEBHOOK_ACTIONS, webhooksCommand } from '../lib/ops/hook-subscriptions.ts';
import { redact } from '../lib/log.ts';
import { parseCommandLine, runMain, UsageError } from './cli.ts';
import { openTarget, requireDatabase, TARGET_OPTIONS, TARGET_USAGE } from './target.ts';

const USAGE = [
  'Usage: npm run amocrm -- <command> [--embedded] [--database-url <postgres-url>]',
  '',
  'Commands:',
  '  pipelines                 list pipelines and stages with ids (to fill AMOCRM_PIPELINE_ID / AMOCRM_STAGE_LESSON_*)',
  '  find-deal <email>         find the deal for a student e-mail and explain the choice',
  '  exchange-code <code>      exchange an amoCRM authorization code for the first token pair and store it',
  '  store-long-lived <token>  store a long-lived token (private integration)',
  '  refresh                   refresh the token pair now',
  '  webhooks list             the account\'s webhooks, this deployment\'s marked (secrets masked)',
  '  webhooks subscribe        point amoCRM\'s stage-change hook at <site>/api/amocrm/crm-events/<AMOCRM_HOOK_SECRET>',
  '  webhooks unsubscribe      remove this deployment\'s hook',
  '  funnels list              the funnels in force (version, who changed them)',
  '  funnels show <key>        one funnel\'s steps with lesson titles and stage names, checked against amoCRM now',
  '  funnels set <file.json|-> check a funnels file against amoCRM and the lessons, then save it as a new version',
  '  funnels check [file]      check a file, or without one the saved funnels against amoCRM now',
  '  funnels history           the saved versions, who saved each and when',
  '  funnels rollback <version> save an earlier version again (checked first)',
  '',
  'Options:',
  TARGET_USAGE,
  '  --by <name>               funnels set/rollback: who makes the change (default: the OS user)',
  '  --note <text>             funnels set: why (kept in the history)',
  '',
  'Production reads the environment (and .env) like the functions: SUPABASE_URL + SUPABASE_SERVICE_ROLE_KEY, AMOCRM_*.',
].join('\n');

/** Each command: what its one argument is (if it takes one), and how it runs. */
const COMMANDS: Record<string, { argument?: string; choices?: readonly string[]; run: (ctx: CommandContext, arg: string) => Promise<CommandResult> }> = {
  pipelines: { run: (ctx) => pipelinesCommand(ctx) },
  'find-deal': { argument: 'an e-mail', run: findDealCommand },
  'exchange-code': { argument: 'the authorization code', run: exchangeCodeCommand },
  'store-long-lived': { argument: 'the token', run: storeLongLivedCommand },
  refresh: { run: (ctx) => refreshCommand(ctx) },
  webhooks: { argument: WEBHOOK_ACTIONS.join(', ').replace(/, (?=[^,]+$)/, ' or '), choices: WEBHOOK_ACTIONS, run: webhooksCommand },
};

await runMain(async () => {
  const options = { ...TARGET_OPTIONS, help: { type: 'boolean', short: 'h' }, by: { type: 'string' }, note: { type: 'string' } } as const;
  const { values, positionals } = parseCommandLine(process.argv.slice(2), options, true);
  const [name, arg, ...extra] = positionals;
  if (values.help || name === 'help') {
    console.log(USAGE);
    return 0;
  }
  if (!name) throw new UsageError('no command');
  if (name !== 'funnels' && (values.by !== undefined || values.note !== undefined)) throw new UsageError('--by and --note are for funnels set and rollback');
  if (name === 'funnels') return runFunnels(values, positionals.slice(1));
  const command = COMMANDS[name];
  if (!command) throw new UsageError(`unknown command: ${name}`);
  if (command.argument && !arg) throw new UsageError(`${name} needs ${command.argument}`);
  if (command.choices && !command.choices.includes(arg!)) throw new UsageError(`${name} ${arg}: expected ${command.argument}`);
  const unexpected = command.argument ? extra : [arg, ...extra].filter((a) => a !== undefined);
  if (unexpected.length) throw new UsageError(`unexpected argument(s) after ${name}: ${unexpected.join(' ')}`);

  const target = await openTarget(values);
  try {
    const db = requireDatabase(target, `npm run amocrm -- ${name}${arg ? (command.choices ? ` ${arg}` : ' …') : ''} --embedded`);
    const result = await command.run({ db, env: target.env }, arg ?? '');
    for (const line of result.lines) console.log(redact(line));
    return result.exitCode;
  } finally {
    await target.close().catch(() => undefined);
  }
}, USAGE);

/** `funnels <action> [arg]`: its own arguments, and who makes the change. */
async function runFunnels(values: { by?: string; note?: string } & Parameters<typeof openTarget>[0], rest: string[]): Promise<number> {
  const parsed = parseFunnelsArgs(rest);
  if (typeof parsed === 'string') throw new UsageError(parsed);
  const target = await openTarget(values);
  try {
    const db = requireDatabase(target, `npm run amocrm -- funnels ${parsed.action} --embedded`);
    const by = values.by ?? osUser();
    const result = await funnelsCommand({ db, env: target.env }, { ...parsed, by, ...(values.note ? { note: values.note } : {}) });
    for (const line of result.lines) console.log(redact(line));
    return result.exitCode;
  } finally {
    await target.close().catch(() => undefined);
  }
}

function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return process.env.USER ?? '';
  }
}
