// Recording what happened to an event: one outbox write and one log line per outcome, in
// the runbook's words. Used by every path that processes events.
import { AmoError } from '../amocrm/errors.ts';
import type { Lead } from '../amocrm/resources.ts';
import { finishEvent, type ClaimedEvent } from '../db/outbox.ts';
import { backoffMs, type MoveDecision } from './decide.ts';
import type { EventOutcome, SyncDeps } from './deps.ts';

const contextOf = (event: ClaimedEvent) => ({ event: event.id, lesson: event.lesson_id, email: event.email ?? '-' });

export interface Found {
  lead: Lead;
  contactId?: number;
}

/** Records a decision that has been carried out (the move made, if any) and logs its line. */
export async function recordDecision(
  deps: SyncDeps, event: ClaimedEvent, holder: string, found: Found, decision: MoveDecision, target: number,
): Promise<EventOutcome> {
  const { db, log } = deps;
  const { lead, contactId } = found;
  const ctx = contextOf(event);
  if (decision.action === 'skip') {
    // finish_event keeps an event whose move happened before (a forced replay) done.
    const r = await finishEvent(db, event.id, holder, 'skipped', { leadId: lead.id, contactId, statusId: lead.status_id, code: decision.code, error: decision.reason });
    if (r.status === 'done') {
      log.ok(`Сделка ${lead.id} уже прошла этап ${target}: перемещение по этому уроку было сделано раньше`, { ...ctx, stage: lead.status_id });
      return { eventId: event.id, status: 'done', moved: false, leadId: lead.id, statusId: lead.status_id };
    }
    log.warn(`Событие пропущено: сделка ${lead.id} не двигается назад`, { ...ctx, code: decision.code, reason: decision.reason, stage: lead.status_id });
    return { eventId: event.id, status: 'skipped', moved: false, leadId: lead.id, statusId: lead.status_id, code: decision.code, message: decision.reason };
  }
  await finishEvent(db, event.id, holder, 'done', { leadId: lead.id, contactId, statusId: target });
  if (decision.action === 'move') {
    log.ok(`Сделка ${lead.id} успешно перемещена на этап ${target}`, { ...ctx, from: lead.status_id, attempt: event.attempts });
  } else {
    log.ok(`Сделка ${lead.id} уже на этапе ${target}, повторно не перемещаю`, ctx);
  }
  return { eventId: event.id, status: 'done', moved: decision.action === 'move', leadId: lead.id, statusId: target };
}

/** Records a failure with its classification: failed, parked, deferred, retried or dead. */
export async function recordFailure(deps: SyncDeps, event: ClaimedEvent, holder: string, err: unknown, found?: Found): Promise<EventOutcome> {
  const { db, log, settings } = deps;
  const ctx = contextOf(event);
  const error = err instanceof AmoError ? err : new AmoError('retryable', 'internal', String((err as Error)?.message ?? err));
  const leadId = found?.lead.id;
  const base = { eventId: event.id, moved: false, leadId, code: error.code, message: error.message };
  const fields = { leadId, contactId: found?.contactId, code: error.code, error: error.message };

  if (error.kind === 'permanent') {
    await finishEvent(db, event.id, holder, 'failed', fields);
    log.fail(`Событие не обработано: ${error.message}`, { ...ctx, code: error.code, what_to_do: error.details.whatToDo });
    return { ...base, status: 'failed' };
  }
  if (error.kind === 'operator') {
    await finishEvent(db, event.id, holder, 'parked', fields);
    log.warn('Событие ждёт оператора', { ...ctx, code: error.code, what_to_do: error.details.whatToDo });
    return { ...base, status: 'parked' };
  }
  if (error.code === 'no_rate_slot') return recordDeferred(deps, event, holder, error, found);
  const retryInMs = backoffMs(event.attempts, deps.random ?? Math.random, error.details.retryAfterMs);
  const r = await finishEvent(db, event.id, holder, 'retry', { ...fields, retryInMs, maxAttempts: settings.maxAttempts });
  if (r.became_dead) {
    log.fail(`Событие окончательно не обработано после ${event.attempts} попыток: ${error.message}`, {
      ...ctx, code: error.code, status: 'dead', what_to_do: 'проверьте причину и повторите: POST /api/amocrm/replay {"status":"dead"}',
    });
    return { ...base, status: 'dead' };
  }
  log.warn(`Повтор запланирован: ${error.message}`, { ...ctx, code: error.code, attempt: event.attempts, retry_in_s: Math.round(retryInMs / 1000) });
  return { ...base, status: 'retry', retryInMs };
}

/**
 * Gives the event back untried (no amoCRM work was done for it, the attempt does not
 * count): no rate slot, or the batch stopped calling amoCRM after a failure that would
 * hit this event too.
 */
export async function recordDeferred(deps: SyncDeps, event: ClaimedEvent, holder: string, cause: AmoError, found?: Found): Promise<EventOutcome> {
  // Waiting for a slot: due when the limiter says one frees up (the queue's length, or a
  // 429 pause), so a drainer never spins re-claiming it; it lingers for it instead. For the
  // next batch: at once. After an amoCRM failure: not before amoCRM asked, nor within 30 s.
  const retryInMs = cause.code === 'deal_shared' ? 0
    : cause.code === 'no_rate_slot' ? Math.max(cause.details.retryAfterMs ?? 0, 0)
    : Math.max(cause.details.retryAfterMs ?? 0, 30_000);
  await finishEvent(deps.db, event.id, holder, 'deferred', { leadId: found?.lead.id, contactId: found?.contactId, retryInMs });
  const why = cause.code === 'no_rate_slot' ? 'очередь к amoCRM занята'
    : cause.code === 'deal_shared' ? 'эту сделку двигает другое событие пакета'
    : 'пакет остановлен после ошибки amoCRM';
  deps.log.warn(`Событие отложено: ${why}`, { ...contextOf(event), code: cause.code, retry_in_s: Math.round(retryInMs / 1000) });
  return { eventId: event.id, status: 'deferred', moved: false, leadId: found?.lead.id, code: cause.code, message: cause.message, retryInMs };
}

/**
 * The mirror of amoCRM's hooks knows the remembered deal is won or lost: the event is
 * skipped without a read (forward-only never touches a closed deal).
 */
export async function recordClosedByMirror(deps: SyncDeps, event: ClaimedEvent, holder: string): Promise<EventOutcome> {
  const leadId = event.cached_lead_id!;
  const reason = `сделка закрыта (${event.cached_lead_closed === 'won' ? 'успешно' : 'не реализована'}), известно из хуков amoCRM`;
  const r = await finishEvent(deps.db, event.id, holder, 'skipped', { leadId, code: 'deal_closed', error: reason });
  if (r.status === 'done') return { eventId: event.id, status: 'done', moved: false, leadId };
  deps.log.warn(`Событие пропущено: сделка ${leadId} не двигается назад`, { ...contextOf(event), code: 'deal_closed', reason });
  return { eventId: event.id, status: 'skipped', moved: false, leadId, code: 'deal_closed', message: reason };
}
