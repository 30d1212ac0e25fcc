// POST /api/amocrm/lesson-completed — the doorbell pg_net rings after a student's lesson
// completion commits (or a Database Webhook created in the Supabase dashboard).
import { routeEvent } from '../db/drain.ts';
import { recordEvent } from '../db/outbox.ts';
import { ringDrainer, wakeDrainer } from '../sync/drain.ts';
import { deliverEvent, type DeliveryResult } from '../sync/process-event.ts';
import { isCompleted, parseJson, parseWebhookBody, readBody } from '../webhook/payload.ts';
import { verifyWebhook } from '../webhook/verify.ts';
import { endpoint } from './handler.ts';
import { errorResponse, json } from './respond.ts';

export const BODY_LIMIT_BYTES = 256 * 1024;
/**
 * How long a webhook may queue for an amoCRM slot. Within the limiter's reservation
 * horizon: a webhook never polls for a slot; behind a longer queue it hands the event to
 * the drainer at once (function time is billed, and a burst has a thousand webhooks).
 */
export const WEBHOOK_MAX_SLOT_WAIT_MS = 1000;
/** This many lesson events pending at once is a burst: the webhook that sees it rings the drainer. */
export const BURST_BACKLOG = 5;

const STATUS_BY_OUTCOME: Record<string, number> = {
  done: 200, skipped: 200, retry: 202, deferred: 202, parked: 202, failed: 422, dead: 422,
};

export const handleLessonCompleted = endpoint({
  methods: ['POST'],
  usage: 'use POST with the webhook body',
  async handle(req, rt) {
    const text = await readBody(req, BODY_LIMIT_BYTES);
    verifyWebhook(req.headers, text, rt.config.webhookSecret, Math.floor(rt.clock.now() / 1000));
    const body = parseWebhookBody(parseJson(text));
    const record = body.record!;

    let eventId = body.event_id;
    if (eventId === undefined) {
      // A plain Database Webhook: record the event ourselves, idempotently.
      if (!isCompleted(record) || (body.type === 'UPDATE' && isCompleted(body.old_record))) {
        return json(200, { ok: true, outcome: 'ignored', reason: 'not a new completion' });
      }
      const recorded = await recordEvent(rt.db, {
        userId: record.user_id, lessonId: record.lesson_id,
        progressId: record.id === undefined ? undefined : String(record.id), source: 'webhook',
      });
      if (recorded.unknown_user && recorded.tripwire) {
        return errorResponse(422, `record.user_id: ${record.user_id} is not a user in auth.users: send the lesson_progress row of an existing student`);
      }
      if (!recorded.tripwire) return json(200, { ok: true, outcome: 'ignored', reason: `lesson ${record.lesson_id} is not a Tripwire lesson` });
      eventId = recorded.event_id!;
    }

    // While a drainer works through a backlog (or has just been rung for one), the event
    // joins its queue: no slot waiting here. A ring that fails leaves it to this webhook.
    const route = await routeEvent(rt.db, eventId, rt.config.drainUrl ? BURST_BACKLOG : undefined);
    if (route.drainerActive && (!route.ring || (await ringDrainer(rt)))) {
      return json(202, { ok: true, event_id: eventId, outcome: 'queued', reason: 'a drainer is working through a backlog: the event is in its queue' });
    }
    const inv = rt.invocation(WEBHOOK_MAX_SLOT_WAIT_MS);
    const result = await deliverEvent(inv.sync, eventId, inv.holder);
    if (result.claimed && result.outcome.status === 'deferred') await wakeDrainer(rt);
    return deliveryResponse(eventId, result);
  },
});

function deliveryResponse(eventId: number, result: DeliveryResult): Response {
  if (!result.claimed) {
    if (result.reason === 'not_found') return errorResponse(404, `event ${eventId} does not exist in amocrm.sync_events`);
    if (result.reason === 'student_busy') {
      return json(202, { ok: true, event_id: eventId, outcome: 'queued', reason: 'another lesson of this student is being processed: the scheduled run takes this one next' });
    }
    return json(200, { ok: true, event_id: eventId, outcome: 'duplicate', reason: result.reason, event_status: result.eventStatus });
  }
  const o = result.outcome;
  return json(STATUS_BY_OUTCOME[o.status] ?? 200, {
    ok: o.status === 'done' || o.status === 'skipped',
    event_id: eventId, outcome: o.status, moved: o.moved, lead_id: o.leadId, status_id: o.statusId,
    code: o.code, message: o.message, retry_in_ms: o.retryInMs,
  });
}
