// `funnels list|show <key>|set <file.json|->|check [file]|history|rollback <version>`: the
// funnels changed without a deploy. set and rollback go through lib/funnels/edit.ts, so a
// change that fails a check is refused with every problem listed and nothing is saved, and
// a change someone else saved in between is refused rather than overwritten.
import { readFile } from 'node:fs/promises';
import { envFunnelOf } from '../config.ts';
import { funnelHistory } from '../db/funnels.ts';
import { checkFunnels, formatProblem, type FunnelProblem } from '../funnels/check.ts';
import { applyFunnels, loadFunnels, readFacts, reviewFunnels, rollbackTo, type EditDeps, type EditOutcome } from '../funnels/edit.ts';
import { parseFunnelsText } from '../funnels/input.ts';
import type { FunnelConfig } from '../funnels/model.ts';
import { failed, finish, type CommandContext, type CommandResult } from './command.ts';
import { describeConfig, describeFunnel, describeVersion } from './funnels-print.ts';
import { commandRuntime } from './lenient-runtime.ts';
import { iso } from './time-words.ts';

export const FUNNEL_ACTIONS = ['list', 'show', 'set', 'check', 'history', 'rollback'] as const;
export type FunnelAction = (typeof FUNNEL_ACTIONS)[number];

export interface FunnelsArgs {
  action: FunnelAction;
  /** show: the key; set/check: the file ('-' is stdin); rollback: the version. */
  arg?: string;
  /** Who makes the change (set, rollback). */
  by: string;
  note?: string;
}

/** How the command reads a file or, for '-', standard input. */
export type ReadInput = (path: string) => Promise<string>;

const readInputFile: ReadInput = async (path) => {
  if (path !== '-') return readFile(path, 'utf8');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks).toString('utf8');
};

/** The positionals after `funnels`, or the usage problem in words. */
export function parseFunnelsArgs(positionals: readonly (string | undefined)[]): { action: FunnelAction; arg?: string } | string {
  const [action, arg, ...extra] = positionals;
  if (!action) return `funnels needs an action: ${FUNNEL_ACTIONS.join(', ')}`;
  if (!(FUNNEL_ACTIONS as readonly string[]).includes(action)) return `funnels ${action}: expected one of ${FUNNEL_ACTIONS.join(', ')}`;
  const needs: Partial<Record<FunnelAction, string>> = { show: 'a funnel key', set: 'a file (.json, or - for standard input)', rollback: 'a version number' };
  const takes = action in needs || action === 'check';
  if (needs[action as FunnelAction] && !arg) return `funnels ${action} needs ${needs[action as FunnelAction]}`;
  const unexpected = (takes ? extra : [arg, ...extra]).filter((a) => a !== undefined);
  if (unexpected.length) return `unexpected argument(s) after funnels ${action}: ${unexpected.join(' ')}`;
  if (action === 'rollback' && !/^[1-9]\d{0,8}$/.test(arg!)) return `funnels rollback ${arg}: the version is a positive whole number (see funnels history)`;
  return { action: action as FunnelAction, ...(takes && arg !== undefined ? { arg } : {}) };
}

export async function funnelsCommand(ctx: CommandContext, args: FunnelsArgs, read: ReadInput = readInputFile): Promise<CommandResult> {
  try {
    const by = args.by.trim();
    if ((args.action === 'set' || args.action === 'rollback') && (!by || by.length > 100)) {
      return finish(2, ['❌ --by: who makes the change, 1 to 100 characters → --by "Ivan Petrov"']);
    }
    switch (args.action) {
      case 'list': return await listFunnels(ctx);
      case 'show': return await showFunnel(ctx, args.arg!);
      case 'history': return await showHistory(ctx);
      case 'set': return await setFunnels(ctx, args, read);
      case 'check': return args.arg === undefined ? await checkSaved(ctx) : await checkFile(ctx, args.arg, read);
      case 'rollback': return await rollback(ctx, Number(args.arg), by);
    }
  } catch (err) {
    return failed(err);
  }
}

function editDeps(ctx: CommandContext): EditDeps {
  const { runtime } = commandRuntime(ctx);
  const amo = runtime.invocation(10_000).amo;
  return { db: ctx.db, listPipelines: () => amo.listPipelines() };
}

/** The configuration in force; today's variables become version 1 first when they are all set. */
async function savedConfig(ctx: CommandContext): Promise<FunnelConfig | null> {
  const { runtime, configured } = commandRuntime(ctx);
  const fromEnv = configured.pipeline && !configured.stages.includes(false);
  return loadFunnels(ctx.db, fromEnv ? envFunnelOf(runtime.config) : null);
}

const NOTHING_SAVED = '⚠️ no funnels saved yet: the sync uses AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3 → npm run amocrm -- funnels set <file.json>';
const problemLines = (problems: FunnelProblem[]) => problems.map((p) => `❌ ${formatProblem(p)}`);

async function listFunnels(ctx: CommandContext): Promise<CommandResult> {
  const config = await savedConfig(ctx);
  if (!config) return finish(0, [NOTHING_SAVED]);
  return finish(0, [...describeConfig(config), `✅ ${config.funnels.length} funnel(s), version ${config.version}`]);
}

async function showFunnel(ctx: CommandContext, key: string): Promise<CommandResult> {
  const config = await savedConfig(ctx);
  const funnel = config?.funnels.find((f) => f.key === key);
  if (!config || !funnel) {
    const known = config?.funnels.map((f) => f.key).join(', ') || 'none';
    return finish(1, [`❌ no funnel "${key}" (funnels: ${known}) → npm run amocrm -- funnels list`]);
  }
  const facts = await readFacts(editDeps(ctx), [funnel]);
  const problems = checkFunnels([funnel], facts.pipelines, facts.lessons);
  const lines = describeFunnel(funnel, facts);
  if (problems.length) {
    return finish(1, [...lines, ...problemLines(problems), `❌ funnel ${key}: ${problems.length} problem(s) against amoCRM now → fix them and save: npm run amocrm -- funnels set <file.json>`]);
  }
  return finish(0, [...lines, `✅ funnel ${key}: ${funnel.steps.length} step(s), every check passed (version ${config.version})`]);
}

async function showHistory(ctx: CommandContext): Promise<CommandResult> {
  await savedConfig(ctx);
  const versions = await funnelHistory(ctx.db, 50);
  if (versions.length === 0) return finish(0, [NOTHING_SAVED]);
  const current = versions[0]!.version;
  return finish(0, [...versions.map((v) => describeVersion(v, v.version === current)), `✅ ${versions.length} version(s) shown, current is ${current} → roll back: npm run amocrm -- funnels rollback <version>`]);
}

/** The funnels of a file, or the lines that say why it cannot be read. */
async function readFunnelFile(path: string, read: ReadInput) {
  const name = path === '-' ? 'standard input' : path;
  let text: string;
  try {
    text = await read(path);
  } catch (err) {
    const code = (err as { code?: string }).code;
    return { error: finish(1, [`❌ cannot read ${name}${code ? ` (${code})` : ''} → give the path of a .json file, or - for standard input`]) };
  }
  const parsed = parseFunnelsText(text);
  if ('problems' in parsed) return { error: finish(1, [...parsed.problems.map((p) => `❌ ${name}: ${p}`), `❌ ${name}: not a funnels file, nothing saved → see README "Funnels" for the format`]) };
  return { name, ...parsed };
}

async function checkFile(ctx: CommandContext, path: string, read: ReadInput): Promise<CommandResult> {
  const input = await readFunnelFile(path, read);
  if ('error' in input) return input.error!;
  const problems = await reviewFunnels(editDeps(ctx), input.funnels);
  if (problems.length) return finish(1, [...problemLines(problems), `❌ ${input.name}: ${problems.length} problem(s) → fix them before funnels set`]);
  return finish(0, [`✅ ${input.name}: ${input.funnels.length} funnel(s) pass every check against amoCRM and the lessons`]);
}

async function checkSaved(ctx: CommandContext): Promise<CommandResult> {
  const config = await savedConfig(ctx);
  if (!config) return finish(0, [NOTHING_SAVED]);
  const problems = await reviewFunnels(editDeps(ctx), config.funnels);
  if (problems.length) {
    return finish(1, [...problemLines(problems), `❌ saved funnels (version ${config.version}): ${problems.length} problem(s) against amoCRM now → fix them and save: npm run amocrm -- funnels set <file.json>`]);
  }
  return finish(0, [`✅ saved funnels (version ${config.version}, ${config.funnels.length} funnel(s)) pass every check against amoCRM now`]);
}

async function setFunnels(ctx: CommandContext, args: FunnelsArgs, read: ReadInput): Promise<CommandResult> {
  const input = await readFunnelFile(args.arg!, read);
  if ('error' in input) return input.error!;
  const deps = editDeps(ctx);
  const current = await savedConfig(ctx);
  const outcome = await applyFunnels(deps, {
    funnels: input.funnels, changedBy: args.by.trim(), expectedVersion: current?.version ?? 0, note: args.note ?? input.note,
  });
  return outcomeResult(outcome, current, args.by.trim());
}

async function rollback(ctx: CommandContext, version: number, by: string): Promise<CommandResult> {
  const current = await savedConfig(ctx);
  return outcomeResult(await rollbackTo(editDeps(ctx), version, by), current, by, version);
}

function outcomeResult(outcome: EditOutcome, before: FunnelConfig | null, by: string, rolledBackTo?: number): CommandResult {
  const kept = before ? `version ${before.version} stays` : 'nothing was saved before';
  switch (outcome.kind) {
    case 'refused':
      return finish(1, [...problemLines(outcome.problems), `❌ refused: ${outcome.problems.length} problem(s), nothing saved (${kept})`]);
    case 'stale': {
      const who = outcome.current ? `version ${outcome.current.version} by ${outcome.current.changedBy} at ${iso(Date.parse(outcome.current.changedAt))}` : 'another change';
      return finish(1, [`❌ refused: ${who} was saved while this change was checked (it started from version ${outcome.expectedVersion}), nothing saved → look at it (funnels list) and run the command again`]);
    }
    case 'invalid':
      return finish(1, [`❌ the database refused the funnels: ${outcome.problem}, nothing saved (${kept})`]);
    case 'unknown_version':
      return finish(1, [`❌ no version ${outcome.version} in the history, nothing changed → npm run amocrm -- funnels history`]);
    case 'saved':
      return finish(0, [rolledBackTo
        ? `✅ rolled back to version ${rolledBackTo}: saved as version ${outcome.version} by ${by}, ${outcome.funnels.length} funnel(s)`
        : `✅ saved version ${outcome.version} by ${by}: ${outcome.funnels.length} funnel(s) (${before ? `was version ${before.version}` : 'the first version'})`]);
  }
}
