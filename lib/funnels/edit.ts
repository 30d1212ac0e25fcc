// Changing the funnels, the one way the CLI and the console both take: the facts are read
// (amoCRM's pipelines, the lessons the funnels name), check.ts judges, and only a change
// with no problem is saved, with the version it was checked against, so a change made in
// between is refused instead of overwritten. A rollback is checked the same way: an old
// configuration whose stages were deleted since is not brought back.
import { currentFunnels, ensureFunnels, funnelHistory, lessonFacts, rollbackFunnels, setFunnels, type SaveResult } from '../db/funnels.ts';
import type { Db } from '../db/port.ts';
import { checkFunnels, lessonsOf, type FunnelProblem, type LessonFact, type PipelineFacts } from './check.ts';
import type { Funnel, FunnelConfig } from './model.ts';

export interface EditDeps {
  db: Db;
  /** amoCRM's pipelines with their stages (the amoCRM client's listPipelines). */
  listPipelines: () => Promise<PipelineFacts[]>;
}

/** Where the first funnel comes from while none is saved: today's pipeline and stage variables. */
export interface EnvFunnel { pipelineId: number; stageIds: readonly number[] }

/**
 * The configuration in force. While none is saved, today's variables become version 1 first
 * (as the sync does on its first event), so an editor always starts from what the sync uses;
 * without them (null) nothing is saved and the answer is null.
 */
export async function loadFunnels(db: Db, env: EnvFunnel | null): Promise<FunnelConfig | null> {
  const current = await currentFunnels(db);
  if (current || !env) return current;
  return ensureFunnels(db, env);
}

export interface FunnelFacts { pipelines: PipelineFacts[]; lessons: LessonFact[] }

export async function readFacts(deps: EditDeps, funnels: readonly Funnel[]): Promise<FunnelFacts> {
  const ids = lessonsOf(funnels);
  const [pipelines, lessons] = await Promise.all([deps.listPipelines(), ids.length ? lessonFacts(deps.db, ids) : Promise.resolve([])]);
  return { pipelines, lessons };
}

/** Every problem of these funnels against amoCRM and the lessons as they are now. */
export async function reviewFunnels(deps: EditDeps, funnels: readonly Funnel[]): Promise<FunnelProblem[]> {
  const facts = await readFacts(deps, funnels);
  return checkFunnels(funnels, facts.pipelines, facts.lessons);
}

export type EditOutcome =
  | { kind: 'saved'; version: number; funnels: readonly Funnel[] }
  | { kind: 'refused'; problems: FunnelProblem[] }
  /** Someone saved another version after this change was checked: nothing saved. */
  | { kind: 'stale'; expectedVersion: number; current: FunnelConfig | null }
  /** A rollback to a version the history does not have. */
  | { kind: 'unknown_version'; version: number }
  /** The database refused the shape (the checks above should have caught it first). */
  | { kind: 'invalid'; problem: string };

export interface FunnelChange {
  funnels: Funnel[];
  changedBy: string;
  /** The version the editor started from (0 when nothing was saved yet). */
  expectedVersion: number;
  note?: string;
}

/** Checks, then saves with the expected version. */
export async function applyFunnels(deps: EditDeps, change: FunnelChange): Promise<EditOutcome> {
  const problems = await reviewFunnels(deps, change.funnels);
  if (problems.length) return { kind: 'refused', problems };
  return outcomeOf(await setFunnels(deps.db, change), change.funnels, change.expectedVersion, deps.db);
}

async function outcomeOf(result: SaveResult, funnels: readonly Funnel[], expectedVersion: number, db: Db): Promise<EditOutcome> {
  if (result.saved) return { kind: 'saved', version: result.version, funnels };
  if (result.reason === 'version_conflict') return { kind: 'stale', expectedVersion, current: await currentFunnels(db) };
  if (result.reason === 'unknown_version') return { kind: 'unknown_version', version: expectedVersion };
  return { kind: 'invalid', problem: result.problem };
}

/** Brings back an earlier version as a new one, once it passes the checks as they are now. */
export async function rollbackTo(deps: EditDeps, version: number, changedBy: string): Promise<EditOutcome> {
  const old = (await funnelHistory(deps.db, 1000)).find((v) => v.version === version);
  if (!old) return { kind: 'unknown_version', version };
  const problems = await reviewFunnels(deps, old.funnels);
  if (problems.length) return { kind: 'refused', problems };
  return outcomeOf(await rollbackFunnels(deps.db, version, changedBy), old.funnels, version, deps.db);
}
