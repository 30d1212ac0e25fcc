// Applies recorded hook deliveries to the deal mirror (after the endpoint has answered
// amoCRM) and logs one line per real change, in the runbook's style. The SQL does the
// work in one call: ordering by amoCRM's time, duplicates, history, the extension point.
import type { AppliedChange } from '../db/mirror.ts';
import { applyDeliveries } from '../db/mirror.ts';
import type { Runtime } from '../runtime.ts';

export async function applyPendingDeliveries(rt: Runtime): Promise<{ deliveries: number; changed: number }> {
  let deliveries = 0;
  let changed = 0;
  // A burst of hooks can leave more than one call's worth; each call takes 100.
  for (let round = 0; round < 20; round++) {
    const r = await applyDeliveries(rt.db, rt.config.pipelineId);
    deliveries += r.deliveries;
    changed += logChanges(rt, r.results, 'hook');
    if (r.deliveries < 100) break;
  }
  return { deliveries, changed };
}

/** One line per change that reached the platform's extension point. */
export function logChanges(rt: Runtime, results: AppliedChange[], source: string): number {
  let n = 0;
  for (const r of results) {
    if (!r.kind) continue;
    n++;
    const fields = { user: r.user_id ?? '-', stage: r.status_id, pipeline: r.pipeline_id, source };
    if (r.kind === 'won') rt.log.ok(`Сделка ${r.lead_id} выиграна в amoCRM: платформа получила изменение`, fields);
    else if (r.kind === 'lost') rt.log.ok(`Сделка ${r.lead_id} закрыта в amoCRM как нереализованная: платформа получила изменение`, fields);
    else if (r.kind === 'deleted') rt.log.warn(`Сделка ${r.lead_id} удалена в amoCRM: платформа получила изменение`, fields);
    else rt.log.ok(`Сделка ${r.lead_id} перешла на этап ${r.status_id} в amoCRM: платформа получила изменение`, fields);
  }
  return n;
}
