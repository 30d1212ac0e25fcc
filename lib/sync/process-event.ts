// One event, end to end: claim it, find the student's deal, move it forward, record the
// outcome, log one line. Shared by the webhook, the scheduled run and replay.
import type { Clock } from '../clock.ts';
import type { Db } from '../db/port.ts';
import type { Logger } from '../log.ts';
import { AmoError } from '../amocrm/errors.ts';
import type { AmoResources, Lead, PipelineStatus } from '../amocrm/resources.ts';
import { backoffMs, chooseDeal, decideMove, normalizeEmail, type MoveDecision } from './decide.ts';

export interface ClaimedEvent {
  id: number;
  user_id: string;
  email: string | null;
  lesson_id: number;
  stage_number: number;
  status: string;
  attempts: number;
  cached_lead_id: number | null;
  created_at: string;
}

export interface SyncSettings {
  pipelineId: number;
  stageIds: readonly [number, number, number] | readonly number[];
  maxAttempts: number;
}

export interface SyncDeps {
  db: Db;
  amo: AmoResources;
  settings: SyncSettings;
  log: Logger;
  clock: Clock;
  random?: () => number;
}

export type OutcomeStatus = 'done' | 'skipped' | 'failed' | 'parked' | 'dead' | 'retry' | 'deferred';

export interface EventOutcome {
  eventId: number;
  status: OutcomeStatus;
  moved: boolean;
  leadId?: number;
  statusId?: number;
  code?: string;
  message?: string;
  retryInMs?: number;
}

export type DeliveryResult =
  | { claimed: true; outcome: EventOutcome }
  | { claimed: false; reason: 'not_found' | 'in_flight' | 'status' | 'student_busy'; eventStatus?: string };

/** How long a delivery waits for the same student's other event to finish before leaving its own to the scheduled run. */
export const STUDENT_BUSY_WAIT_MS = 5_000;

/**
 * Claims the event by id (a duplicate delivery gets claimed=false) and processes it.
 * One student's events never run side by side (the claim refuses while another is in
 * flight), so a slow move of lesson 1 can never land after lesson 2's and pull the
 * deal back: this waits a little for the other one, then leaves the event queued.
 */
export async function deliverEvent(
  deps: SyncDeps,
  eventId: number,
  holder: string,
  statuses: string[] = ['pending'],
  busyWaitMs = STUDENT_BUSY_WAIT_MS,
): Promise<DeliveryResult> {
  const deadline = deps.clock.now() + busyWaitMs;
  while (true) {
    const claim = await deps.db.rpc<{ claimed: boolean; reason?: 'not_found' | 'in_flight' | 'status' | 'student_busy'; event?: ClaimedEvent }>(
      'amocrm_claim_event', { p_event_id: eventId, p_holder: holder, p_lease_seconds: 90, p_statuses: statuses });
    if (claim.claimed) return { claimed: true, outcome: await processClaimedEvent(deps, claim.event!, holder) };
    if (claim.reason !== 'student_busy' || deps.clock.now() >= deadline) {
      return { claimed: false, reason: claim.reason ?? 'status', eventStatus: claim.event?.status };
    }
    await deps.clock.sleep(250);
  }
}

export async function processClaimedEvent(deps: SyncDeps, event: ClaimedEvent, holder: string): Promise<EventOutcome> {
  let found: { lead: Lead; contactId?: number } | undefined;
  try {
    if (!event.email) throw new AmoError('permanent', 'no_email', 'у студента нет e-mail в auth.users');
    found = await findLead(deps, event);
    const { target, decision } = await decide(deps, event, found.lead);
    if (decision.action === 'move') await deps.amo.moveLead(found.lead.id, deps.settings.pipelineId, target);
    return await recordDecision(deps, event, holder, found, decision, target);
  } catch (err) {
    return handleFailure(deps, event, holder, err, found?.lead.id, found?.contactId);
  }
}

const contextOf = (event: ClaimedEvent) => ({ event: event.id, lesson: event.lesson_id, email: event.email ?? '-' });

/** The forward-only decision for this event's lesson against the deal's current stage. */
export async function decide(deps: SyncDeps, event: ClaimedEvent, lead: Lead, order?: PipelineStatus[]): Promise<{ target: number; decision: MoveDecision }> {
  const { settings } = deps;
  const targetIndex = event.stage_number - 1;
  const target = settings.stageIds[targetIndex];
  if (target === undefined) throw new AmoError('permanent', 'no_stage', `нет этапа для урока ${event.stage_number}`);
  const needsOrder = !settings.stageIds.includes(lead.status_id);
  const stageOrder = needsOrder ? order ?? (await pipelineOrder(deps)) : undefined;
  return { target, decision: decideMove(lead.status_id, targetIndex, settings.stageIds, stageOrder) };
}

/** Records a decision that has been carried out (the move made, if any) and logs its line. */
export async function recordDecision(
  deps: SyncDeps, event: ClaimedEvent, holder: string,
  found: { lead: Lead; contactId?: number }, decision: MoveDecision, target: number,
): Promise<EventOutcome> {
  const { db, log } = deps;
  const { lead, contactId } = found;
  const ctx = contextOf(event);
  if (decision.action === 'skip') {
    await finish(db, event, holder, 'skipped', { lead_id: lead.id, contact_id: contactId, status_id: lead.status_id, code: decision.code, error: decision.reason });
    log.warn(`Событие пропущено: сделка ${lead.id} не двигается назад`, { ...ctx, code: decision.code, reason: decision.reason, stage: lead.status_id });
    return { eventId: event.id, status: 'skipped', moved: false, leadId: lead.id, statusId: lead.status_id, code: decision.code, message: decision.reason };
  }
  await finish(db, event, holder, 'done', { lead_id: lead.id, contact_id: contactId, status_id: target });
  if (decision.action === 'move') {
    log.ok(`Сделка ${lead.id} успешно перемещена на этап ${target}`, { ...ctx, from: lead.status_id, attempt: event.attempts });
  } else {
    log.ok(`Сделка ${lead.id} уже на этапе ${target}, повторно не перемещаю`, ctx);
  }
  return { eventId: event.id, status: 'done', moved: decision.action === 'move', leadId: lead.id, statusId: target };
}

export async function findLead(deps: SyncDeps, event: ClaimedEvent): Promise<{ lead: Lead; contactId?: number }> {
  const { amo, db, settings } = deps;
  if (event.cached_lead_id) {
    // The deal remembered from the student's earlier lesson: one read instead of a search.
    const cached = await amo.getLead(event.cached_lead_id);
    if (cached && cached.pipeline_id === settings.pipelineId) return { lead: cached };
    await db.rpc('amocrm_forget_lead', { p_user_id: event.user_id, p_lead_id: event.cached_lead_id });
  }
  const contacts = await amo.searchContacts(event.email!);
  const exactLeadIds = contacts
    .filter((c) => c.emails.some((e) => normalizeEmail(e) === event.email))
    .flatMap((c) => c.leadIds);
  const leads = await amo.getLeads([...new Set(exactLeadIds)]);
  const choice = chooseDeal(event.email!, contacts, leads, settings.pipelineId);
  if (!choice.lead) throw new AmoError('permanent', choice.reason, choice.explanation);
  return { lead: choice.lead, contactId: choice.contactId };
}

/** The pipeline's stage order, cached in the database for an hour (one read per hour, not per event). */
export async function pipelineOrder(deps: SyncDeps): Promise<PipelineStatus[] | undefined> {
  const { db, amo, settings } = deps;
  const cached = await db.rpc<{ statuses?: PipelineStatus[] } | null>('amocrm_get_pipeline', { p_pipeline_id: settings.pipelineId });
  if (cached?.statuses) return cached.statuses;
  const pipeline = await amo.getPipeline(settings.pipelineId);
  if (!pipeline) return undefined;
  await db.rpc('amocrm_put_pipeline', { p_pipeline_id: settings.pipelineId, p_value: { statuses: pipeline.statuses, name: pipeline.name } });
  return pipeline.statuses;
}

export async function finish(
  db: Db,
  event: ClaimedEvent,
  holder: string,
  outcome: 'done' | 'skipped' | 'retry' | 'failed' | 'parked' | 'deferred',
  f: { lead_id?: number; contact_id?: number; status_id?: number; code?: string; error?: string; retry_in_ms?: number; max_attempts?: number },
): Promise<{ recorded: boolean; status: string; became_dead?: boolean }> {
  return db.rpc('amocrm_finish_event', {
    p_event_id: event.id, p_holder: holder, p_outcome: outcome,
    p_error_code: f.code, p_error: f.error?.slice(0, 500),
    p_lead_id: f.lead_id, p_contact_id: f.contact_id, p_status_id: f.status_id,
    p_retry_in_ms: f.retry_in_ms, p_max_attempts: f.max_attempts,
  });
}

export async function handleFailure(
  deps: SyncDeps,
  event: ClaimedEvent,
  holder: string,
  err: unknown,
  leadId?: number,
  contactId?: number,
): Promise<EventOutcome> {
  const { db, log, settings } = deps;
  const ctx = contextOf(event);
  const error = err instanceof AmoError ? err : new AmoError('retryable', 'internal', (err as Error)?.message ?? String(err));
  const base = { eventId: event.id, moved: false, leadId, code: error.code, message: error.message };
  const fields = { lead_id: leadId, contact_id: contactId, code: error.code, error: error.message };

  if (error.kind === 'permanent') {
    await finish(db, event, holder, 'failed', fields);
    log.fail(`Событие не обработано: ${error.message}`, { ...ctx, code: error.code });
    return { ...base, status: 'failed' };
  }
  if (error.kind === 'operator') {
    await finish(db, event, holder, 'parked', fields);
    log.warn('Событие ждёт оператора', { ...ctx, code: error.code, what_to_do: error.details.whatToDo });
    return { ...base, status: 'parked' };
  }
  if (error.code === 'no_rate_slot') {
    const retryInMs = Math.max(error.details.retryAfterMs ?? 0, 1000);
    await finish(db, event, holder, 'deferred', { ...fields, retry_in_ms: retryInMs });
    log.info('Событие оставлено плановому запуску: очередь к amoCRM занята', { ...ctx, code: error.code });
    return { ...base, status: 'deferred', retryInMs };
  }
  const retryInMs = backoffMs(event.attempts, deps.random ?? Math.random, error.details.retryAfterMs);
  const r = await finish(db, event, holder, 'retry', { ...fields, retry_in_ms: retryInMs, max_attempts: settings.maxAttempts });
  if (r.became_dead) {
    log.fail(`Событие окончательно не обработано после ${event.attempts} попыток: ${error.message}`, {
      ...ctx, code: error.code, status: 'dead', what_to_do: 'проверьте причину и повторите: POST /api/amocrm/replay {"status":"dead"}',
    });
    return { ...base, status: 'dead' };
  }
  log.warn(`Повтор запланирован: ${error.message}`, { ...ctx, code: error.code, attempt: event.attempts, retry_in_s: Math.round(retryInMs / 1000) });
  return { ...base, status: 'retry', retryInMs };
}
