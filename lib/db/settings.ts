// Settings, caches and the read-only views of the sync (status page, doctor). The only
// module that names these database functions.
import type { Db } from './port.ts';

export interface CachedStatus { id: number; name: string; sort: number }

/** The pipeline's stage order cached in the database (null when older than maxAgeSeconds). */
export async function getCachedPipeline(db: Db, pipelineId: number): Promise<CachedStatus[] | undefined> {
  const cached = await db.rpc<{ statuses?: CachedStatus[] } | null>('amocrm_get_pipeline', { p_pipeline_id: pipelineId });
  return cached?.statuses;
}

export async function putCachedPipeline(db: Db, pipelineId: number, value: { name: string; statuses: CachedStatus[] }): Promise<void> {
  await db.rpc('amocrm_put_pipeline', { p_pipeline_id: pipelineId, p_value: value });
}

export interface SyncStatus {
  counts: Record<string, number>;
  oldest_pending_age_seconds: number | null;
  last_success_at: string | null;
  last_failure_at: string | null;
  token: { kind: string; expires_at: string | null; auth_state: string; auth_problem: string | null; updated_at?: string } | null;
  recent_failures: { id: number; status: string; email: string | null; lesson_id: number; attempts: number; code: string | null; reason: string | null; updated_at: string }[];
}

export const syncStatus = (db: Db, failures = 20) => db.rpc<SyncStatus>('amocrm_status', { p_failures: failures });

/** What `npm run doctor` checks a deployment against (never a secret value). */
export const doctorFacts = <T>(db: Db) => db.rpc<T>('amocrm_doctor_facts');
