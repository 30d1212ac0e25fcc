// Recording what happened to events: each outcome is planned as one outbox write and the
// log line to print once it is written, in the runbook's words. A batch's writes go to
// the database in one call (recordOutcomes), and only then is anything logged, so a
// '✅ … перемещена' line always stands for a recorded event.
import { AmoError } from '../amocrm/errors.ts';
import type { Lead } from '../amocrm/resources.ts';
import { finishEvents, type ClaimedEvent, type FinishItem, type FinishResult } from '../db/outbox.ts';
import { backoffMs, type MoveDecision } from './decide.ts';
import type { SyncDeps } from './deps.ts';
import { errorText } from '../log.ts';
import { ENV_FUNNEL_KEY } from '../funnels/model.ts';

/** An event's status once a step is done with it. */
export type OutcomeStatus = 'done' | 'skipped' | 'failed' | 'parked' | 'dead' | 'retry' | 'deferred';

/** What happened to one event, as the batch reports it and the outbox records it. */
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

// The funnel is named only beside today's single one, so today's lines read as before.
const contextOf = (event: ClaimedEvent) => ({
  event: event.id, lesson: event.lesson_id,
  ...(event.funnel_key && event.funnel_key !== ENV_FUNNEL_KEY ? { funnel: event.funnel_key } : {}),
  email: event.email ?? '-',
});

export interface Found {
  lead: Lead;
  contactId?: number;
}

/** An outcome decided but not yet written: the write, and what to log and answer once it is. */
export interface PlannedOutcome {
  write: FinishItem;
  settle(written: FinishResult): EventOutcome;
}

/** Writes the planned outcomes in one database call, then logs each and returns them in order. */
export async function recordOutcomes(deps: SyncDeps, holder: string, planned: PlannedOutcome[]): Promise<EventOutcome[]> {
  const written = await finishEvents(deps.db, holder, planned.map((p) => p.write));
  return planned.map((p, i) => p.settle(written[i]!));
}

/** A decision that has been carried out (the move made, if any). */
export function decisionOutcome(deps: SyncDeps, event: ClaimedEvent, found: Found, decision: MoveDecision, target: number): PlannedOutcome {
  const { log } = deps;
  const { lead, contactId } = found;
  const ctx = contextOf(event);
  if (decision.action === 'skip') {
    return {
      write: { eventId: event.id, outcome: 'skipped', leadId: lead.id, contactId, statusId: lead.status_id, code: decision.code, error: decision.reason },
      settle(r) {
        // finish_event keeps an event whose move happened before (a forced replay) done.
        if (r.status === 'done') {
          log.ok(`Сделка ${lead.id} уже прошла этап ${target}: перемещение по этому уроку было сделано раньше`, { ...ctx, stage: lead.status_id });
          return { eventId: event.id, status: 'done', moved: false, leadId: lead.id, statusId: lead.status_id };
        }
        log.warn(`Событие пропущено: сделка ${lead.id} не двигается назад`, { ...ctx, code: decision.code, reason: decision.reason, stage: lead.status_id });
        return { eventId: event.id, status: 'skipped', moved: false, leadId: lead.id, statusId: lead.status_id, code: decision.code, message: decision.reason };
      },
    };
  }
  return {
    write: { eventId: event.id, outcome: 'done', leadId: lead.id, contactId, statusId: target },
    settle() {
      if (decision.action === 'move') {
        log.ok(`Сделка ${lead.id} успешно перемещена на этап ${target}`, { ...ctx, from: lead.status_id, attempt: event.attempts });
      } else {
        log.ok(`Сделка ${lead.id} уже на этапе ${target}, повторно не перемещаю`, ctx);
      }
      return { eventId: event.id, status: 'done', moved: decision.action === 'move', leadId: lead.id, statusId: target };
    },
  };
}

/**
 * Failures of amoCRM itself, not of the event: it is unreachable or silent, its gateway
 * says it is unavailable (502, 503, 504), or it asks everyone to slow down (429). Such an
 * event waits for amoCRM however long it takes (events_waiting tells people meanwhile) and
 * is never given up on for it; the attempt budget (maxAttempts, then dead) is for failures
 * about the event, a 500 among them (amoCRM is up and failed this request).
 */
const OUTAGE_CODES = new Set(['network', 'timeout', 'rate_limited']);
const OUTAGE_STATUSES = new Set([502, 503, 504]);
export const isAmoOutage = (error: AmoError): boolean =>
  OUTAGE_CODES.has(error.code) || (error.code === 'server_error' && OUTAGE_STATUSES.has(error.details.status ?? 0));
/** PostgreSQL's largest integer: the attempt count an outage's retries never reach. */
const OUTAGE_MAX_ATTEMPTS = 2_147_483_647;
/** While amoCRM is down its events are tried at least this often, so they go soon after it answers. */
const OUTAGE_BACKOFF_CAP_MS = 10 * 60_000;

/**
 * A failure with its classification: failed, parked, deferred, retried or dead. `holdMs`:
 * the failed call was a move that amoCRM may still apply; the student is held that long.
 */
export function failureOutcome(deps: SyncDeps, event: ClaimedEvent, err: unknown, found?: Found, holdMs?: number): PlannedOutcome {
  const { log, settings } = deps;
  const ctx = contextOf(event);
  const error = err instanceof AmoError ? err : new AmoError('retryable', 'internal', errorText(err));
  const leadId = found?.lead.id;
  const base = { eventId: event.id, moved: false, leadId, code: error.code, message: error.message };
  const fields = { eventId: event.id, leadId, contactId: found?.contactId, code: error.code, error: error.message, holdMs };

  if (error.kind === 'permanent') {
    return {
      write: { ...fields, outcome: 'failed' },
      settle() {
        log.fail(`Событие не обработано: ${error.message}`, { ...ctx, code: error.code, what_to_do: error.details.whatToDo });
        return { ...base, status: 'failed' };
      },
    };
  }
  if (error.kind === 'operator') {
    return {
      write: { ...fields, outcome: 'parked' },
      settle() {
        log.warn('Событие ждёт оператора', { ...ctx, code: error.code, what_to_do: error.details.whatToDo });
        return { ...base, status: 'parked' };
      },
    };
  }
  if (error.code === 'no_rate_slot') return deferredOutcome(deps, event, error, found);
  const outage = isAmoOutage(error);
  const retryInMs = backoffMs(event.attempts, deps.random ?? Math.random, error.details.retryAfterMs,
    undefined, outage ? OUTAGE_BACKOFF_CAP_MS : undefined);
  return {
    write: { ...fields, outcome: 'retry', retryInMs, maxAttempts: outage ? OUTAGE_MAX_ATTEMPTS : settings.maxAttempts },
    settle(r) {
      if (r.became_dead) {
        log.fail(`Событие окончательно не обработано после ${event.attempts} попыток: ${error.message}`, {
          ...ctx, code: error.code, status: 'dead', what_to_do: 'проверьте причину и повторите: POST /api/amocrm/replay {"status":"dead"}',
        });
        return { ...base, status: 'dead' };
      }
      log.warn(`Повтор запланирован: ${error.message}`, { ...ctx, code: error.code, attempt: event.attempts, retry_in_s: Math.round(retryInMs / 1000) });
      return { ...base, status: 'retry', retryInMs };
    },
  };
}

/**
 * The event goes back untried (no amoCRM work was done for it, the attempt does not
 * count): no rate slot, or the batch stopped calling amoCRM after a failure that would
 * hit this event too.
 */
export function deferredOutcome(deps: SyncDeps, event: ClaimedEvent, cause: AmoError, found?: Found): PlannedOutcome {
  // Waiting for a slot: due when the limiter says one frees up (the queue's length, or a
  // 429 pause), so a drainer never spins re-claiming it; it lingers for it instead. For the
  // next batch: at once. After an amoCRM failure: not before amoCRM asked, nor within 30 s.
  const retryInMs = cause.code === 'deal_shared' ? 0
    : cause.code === 'no_rate_slot' ? Math.max(cause.details.retryAfterMs ?? 0, 0)
    : Math.max(cause.details.retryAfterMs ?? 0, 30_000);
  const why = cause.code === 'no_rate_slot' ? 'очередь к amoCRM занята'
    : cause.code === 'deal_shared' ? 'эту сделку двигает другое событие пакета'
    : 'пакет остановлен после ошибки amoCRM';
  return {
    write: { eventId: event.id, outcome: 'deferred', leadId: found?.lead.id, contactId: found?.contactId, retryInMs },
    settle() {
      deps.log.warn(`Событие отложено: ${why}`, { ...contextOf(event), code: cause.code, retry_in_s: Math.round(retryInMs / 1000) });
      return { eventId: event.id, status: 'deferred', moved: false, leadId: found?.lead.id, code: cause.code, message: cause.message, retryInMs };
    },
  };
}

/**
 * The event's claim expired before its move could be sent: another invocation may hold
 * a newer lesson of the student, so nothing is sent and nothing recorded (the database
 * refuses an expired holder); whoever claims the event next reads the deal afresh.
 */
export function leaseLostOutcome(deps: SyncDeps, event: ClaimedEvent, found?: Found): PlannedOutcome {
  return {
    write: { eventId: event.id, outcome: 'deferred', leadId: found?.lead.id },
    settle() {
      deps.log.warn('Событие не обработано: аренда истекла, его возьмёт следующий обработчик', { ...contextOf(event), code: 'lease_lost' });
      return { eventId: event.id, status: 'deferred', moved: false, leadId: found?.lead.id, code: 'lease_lost', message: 'аренда события истекла до перемещения' };
    },
  };
}

/**
 * The mirror of amoCRM's hooks knows the remembered deal is won or lost: the event is
 * skipped without a read (forward-only never touches a closed deal).
 */
export function closedByMirrorOutcome(
  deps: SyncDeps, event: ClaimedEvent, leadId = event.cached_lead_id!, closed = event.cached_lead_closed,
): PlannedOutcome {
  const reason = `сделка закрыта (${closed === 'won' ? 'успешно' : 'не реализована'}), известно из хуков amoCRM`;
  return {
    write: { eventId: event.id, outcome: 'skipped', leadId, code: 'deal_closed', error: reason },
    settle(r) {
      if (r.status === 'done') return { eventId: event.id, status: 'done', moved: false, leadId };
      deps.log.warn(`Событие пропущено: сделка ${leadId} не двигается назад`, { ...contextOf(event), code: 'deal_closed', reason });
      return { eventId: event.id, status: 'skipped', moved: false, leadId, code: 'deal_closed', message: reason };
    },
  };
}
