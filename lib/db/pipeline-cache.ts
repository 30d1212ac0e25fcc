// The pipeline's stage order cached in the database (amocrm.system_settings), so an
// invocation does not read the pipeline from amoCRM each time. The only module that names
// these database functions.
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
