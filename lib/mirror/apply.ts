// Applies recorded hook deliveries to the deal mirror (after the endpoint has answered
// amoCRM) and logs one line per real change, in the runbook's style. The SQL does the
// work: ordering by amoCRM's time, duplicates, history, the extension point. A change sent
// without amoCRM's modification time (the short status form) is never applied with a
// guessed one: its deal is read from amoCRM first, and what amoCRM holds is applied, as of
// its updated_at. Without that read (no rate slot, amoCRM down) the delivery stays pending
// for the next applier (the scheduled run applies pending deliveries).
import { randomUUID } from 'node:crypto';
import { AmoError } from '../amocrm/errors.ts';
import type { Lead } from '../amocrm/resources.ts';
import type { AppliedChange, LeadState } from '../db/deal-mirror.ts';
import { applyDeliveries } from '../db/deal-mirror.ts';
import type { Runtime } from '../runtime.ts';

/** How long the read of such deals may queue for a shared amoCRM slot. */
const READ_WAIT_MS = 2_000;

export async function applyPendingDeliveries(rt: Runtime): Promise<{ deliveries: number; changed: number }> {
  const holder = `apply-${randomUUID().slice(0, 8)}`;
  let deliveries = 0;
  let changed = 0;
  let leads: Record<string, LeadState> | undefined;
  // A burst of hooks can leave more than one call's worth; each call takes 100.
  for (let round = 0; round < 20; round++) {
    const r = await applyDeliveries(rt.db, rt.config.pipelineId ?? 0, { holder, leads });
    deliveries += r.deliveries;
    changed += logChanges(rt, r.results, 'hook');
    if (r.to_read.length) {
      // The deals of what this call claimed, one batched read; applied by the next call.
      leads = await readLeads(rt, r.to_read);
      if (!leads) break;
    } else if (r.deliveries < 100) break;
    else leads = undefined;
  }
  return { deliveries, changed };
}

/** The deals' state in amoCRM by lead id (a deal it did not return is gone), or undefined when it could not be read now. */
async function readLeads(rt: Runtime, ids: number[]): Promise<Record<string, LeadState> | undefined> {
  let read: (Lead & { updated_by?: number })[];
  try {
    read = await rt.invocation(READ_WAIT_MS).amo.getLeads(ids);
  } catch (err) {
    if (!(err instanceof AmoError)) throw err;
    rt.log.warn('Хуки amoCRM без времени изменения отложены: сделки не прочитаны, следующий запуск применит', { leads: ids.length, code: err.code });
    return undefined;
  }
  const leads: Record<string, LeadState> = {};
  for (const l of read) {
    if (l.is_deleted || !Number.isSafeInteger(Number(l.updated_at))) continue;
    leads[String(l.id)] = {
      pipeline_id: Number(l.pipeline_id), status_id: Number(l.status_id), modified_at: Number(l.updated_at),
      ...(l.updated_by ? { modified_by: Number(l.updated_by) } : {}), ...(l.name ? { name: l.name } : {}),
    };
  }
  return leads;
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
