// `npm run amocrm -- <command>`: the operator commands of lib/ops/, run against the target
// chosen by scripts/target.ts. Exit 0 done, 1 failed, 2 bad arguments.
import type { CommandContext, CommandResult } from '../lib/ops/command.ts';
import { findDealCommand } from '../lib/ops/find-deal-command.ts';
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
  '',
  'Options:',
  TARGET_USAGE,
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
  const { values, positionals } = parseCommandLine(process.argv.slice(2), { ...TARGET_OPTIONS, help: { type: 'boolean', short: 'h' } }, true);
  const [name, arg, ...extra] = positionals;
  if (values.help || name === 'help') {
    console.log(USAGE);
    return 0;
  }
  if (!name) throw new UsageError('no command');
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
