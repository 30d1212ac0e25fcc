// The funnels' database side (supabase/migrations/20261208001100_amocrm_funnels.sql): the
// configuration in versions, its history and rollback, and what the academy's lessons
// table says of lessons. The only module that names these database functions.
import type { Funnel, FunnelConfig } from '../funnels/model.ts';
import type { Db } from './port.ts';

interface VersionRow { version: number; funnels: Funnel[]; changed_by: string; changed_at: string; note: string | null }

const toConfig = (r: VersionRow): FunnelConfig => ({
  version: Number(r.version), funnels: r.funnels, changedBy: r.changed_by, changedAt: r.changed_at,
  ...(r.note ? { note: r.note } : {}),
});

/** The configuration in force, or null while none is saved. */
export async function currentFunnels(db: Db): Promise<FunnelConfig | null> {
  const r = await db.rpc<VersionRow | null>('amocrm_funnels');
  return r ? toConfig(r) : null;
}

/**
 * The configuration in force; while none is saved, today's environment (the pipeline and
 * the stages of AMOCRM_STAGE_LESSON_1..3, with the `tripwire_lessons` setting's lessons)
 * is saved as version 1 first, by whoever comes first.
 */
export async function ensureFunnels(db: Db, env: { pipelineId: number; stageIds: readonly number[] }): Promise<FunnelConfig> {
  return toConfig(await db.rpc<VersionRow>('amocrm_ensure_funnels', { p_pipeline_id: env.pipelineId, p_stage_ids: [...env.stageIds] }));
}

export type SaveResult =
  | { saved: true; version: number }
  | { saved: false; reason: 'version_conflict' | 'invalid' | 'unknown_version'; problem: string; currentVersion?: number };

interface SaveRow { saved: boolean; version?: number; reason?: 'version_conflict' | 'invalid' | 'unknown_version'; problem?: string; current_version?: number }

const toSave = (r: SaveRow): SaveResult => r.saved
  ? { saved: true, version: Number(r.version) }
  : { saved: false, reason: r.reason!, problem: r.problem ?? r.reason!, ...(r.current_version === undefined ? {} : { currentVersion: Number(r.current_version) }) };

/**
 * Saves `funnels` as a new version if `expectedVersion` is still the one in force (0: none
 * saved yet); otherwise nothing changes and the answer says why. Shape only: check the
 * funnels against amoCRM and the lessons first (lib/funnels/check.ts).
 */
export async function setFunnels(db: Db, p: { funnels: Funnel[]; changedBy: string; expectedVersion: number; note?: string }): Promise<SaveResult> {
  return toSave(await db.rpc<SaveRow>('amocrm_set_funnels', {
    p_funnels: JSON.stringify(p.funnels), p_changed_by: p.changedBy, p_expected_version: p.expectedVersion, p_note: p.note,
  }));
}

/** The versions, newest first. */
export async function funnelHistory(db: Db, limit = 20): Promise<FunnelConfig[]> {
  return (await db.rpc<VersionRow[]>('amocrm_funnel_history', { p_limit: limit })).map(toConfig);
}

/** Version `version`'s funnels saved again as a new version. */
export async function rollbackFunnels(db: Db, version: number, changedBy: string): Promise<SaveResult> {
  return toSave(await db.rpc<SaveRow>('amocrm_rollback_funnels', { p_version: version, p_changed_by: changedBy }));
}

/** One lesson as the academy's `public.lessons` describes it (absent table: exists=false). */
export interface LessonFactRow { id: number; exists: boolean; title: string | null; is_archived: boolean | null }

export async function lessonFacts(db: Db, lessons: number[]): Promise<LessonFactRow[]> {
  if (!lessons.length) return [];
  return db.rpc<LessonFactRow[]>('amocrm_lesson_facts', { p_lessons: lessons });
}
