// Receiving one lesson completion (the doorbell pg_net rings, or a plain Database Webhook):
// record it if it came without an event, hand it to a drainer working a backlog, or
// deliver it here. Returns what happened; the HTTP layer only maps it to a status.
import { routeEvent } from '../db/drain-lease.ts';
import { recordEvent } from '../db/outbox.ts';
import type { Runtime } from '../runtime.ts';
import { isCompleted, type WebhookBody } from '../lesson-webhook/payload.ts';
import type { EventOutcome } from './outcome.ts';
import { ringDrainer, wakeDrainer } from './drainer.ts';
import { deliverEvent } from './process-event.ts';

/**
 * How long a webhook may queue for an amoCRM slot. Within the limiter's reservation
 * horizon: a webhook never polls for a slot; behind a longer queue it hands the event to
 * the drainer at once (function time is billed, and a burst has a thousand webhooks).
 */
export const WEBHOOK_MAX_SLOT_WAIT_MS = 1000;
/** This many lesson events pending at once is a burst: the webhook that sees it rings the drainer. */
export const BURST_BACKLOG = 5;

export type LessonEventResult =
  | { kind: 'ignored'; reason: string }
  | { kind: 'unknown_user'; userId: string }
  | { kind: 'not_found'; eventId: number }
  /** Left in the queue: a drainer works a backlog, or the student's other lesson is in flight. */
  | { kind: 'queued'; eventId: number; reason: 'drainer' | 'student_busy' }
  | { kind: 'duplicate'; eventId: number; reason: string; eventStatus?: string }
  | { kind: 'delivered'; eventId: number; outcome: EventOutcome };

export async function receiveLessonEvent(rt: Runtime, body: WebhookBody): Promise<LessonEventResult> {
  const record = body.record!;
  let eventId = body.event_id;
  /** The same completion's events of other funnels, recorded here: delivered after this one. */
  let siblings: number[] = [];
  if (eventId === undefined) {
    // A plain Database Webhook: record the event ourselves, idempotently.
    if (!isCompleted(record) || (body.type === 'UPDATE' && isCompleted(body.old_record))) {
      return { kind: 'ignored', reason: 'not a new completion' };
    }
    const recorded = await recordEvent(rt.db, {
      userId: record.user_id, lessonId: record.lesson_id,
      progressId: record.id === undefined ? undefined : String(record.id), source: 'webhook',
    });
    if (!recorded.tripwire) return { kind: 'ignored', reason: `lesson ${record.lesson_id} is not a Tripwire lesson` };
    if (recorded.unknown_user) return { kind: 'unknown_user', userId: record.user_id };
    eventId = recorded.event_id!;
    siblings = (recorded.event_ids ?? []).map(Number).filter((id) => id !== eventId);
  }

  // While a drainer works through a backlog (or has just been rung for one), the event
  // joins its queue: no slot waiting here. A ring that fails leaves it to this webhook.
  const route = await routeEvent(rt.db, eventId, rt.config.drainUrl ? BURST_BACKLOG : undefined);
  if (route.drainerActive && (!route.ring || (await ringDrainer(rt)))) return { kind: 'queued', eventId, reason: 'drainer' };

  const inv = rt.invocation(WEBHOOK_MAX_SLOT_WAIT_MS);
  const result = await deliverEvent(inv.sync, eventId, inv.holder);
  if (!result.claimed) {
    if (result.reason === 'not_found') return { kind: 'not_found', eventId };
    if (result.reason === 'student_busy') return { kind: 'queued', eventId, reason: 'student_busy' };
    return { kind: 'duplicate', eventId, reason: result.reason, eventStatus: result.eventStatus };
  }
  // One student's events run one at a time: the other funnels' go after this one.
  for (const id of siblings) await deliverEvent(inv.sync, id, inv.holder);
  if (result.outcome.status === 'deferred') await wakeDrainer(rt);
  return { kind: 'delivered', eventId, outcome: result.outcome };
}
