// POST /api/amocrm/lesson-completed — the doorbell pg_net rings after a student's lesson
// completion commits (or a Database Webhook created in the Supabase dashboard). Verifies
// the caller, validates the body, and maps what the sync did to a status.
import { receiveLessonEvent, type LessonEventResult } from '../sync/receive-lesson.ts';
import { parseWebhookBody } from '../lesson-webhook/payload.ts';
import { parseJson, readBody } from './body.ts';
import { verifyWebhook } from '../lesson-webhook/verify.ts';
import { endpoint } from './handler.ts';
import { errorResponse, json } from './respond.ts';

export const BODY_LIMIT_BYTES = 256 * 1024;

const STATUS_BY_OUTCOME: Record<string, number> = {
  done: 200, skipped: 200, retry: 202, deferred: 202, parked: 202, failed: 422, dead: 422,
};

export const handleLessonCompleted = endpoint({
  methods: ['POST'],
  usage: 'use POST with the webhook body',
  async handle(req, rt) {
    const text = await readBody(req, BODY_LIMIT_BYTES);
    verifyWebhook(req.headers, text, rt.config.webhookSecret, Math.floor(rt.clock.now() / 1000));
    return toResponse(await receiveLessonEvent(rt, parseWebhookBody(parseJson(text))));
  },
});

function toResponse(r: LessonEventResult): Response {
  switch (r.kind) {
    case 'ignored':
      return json(200, { ok: true, outcome: 'ignored', reason: r.reason });
    case 'unknown_user':
      return errorResponse(422, `record.user_id: ${r.userId} is not a user in auth.users: send the lesson_progress row of an existing student`);
    case 'not_found':
      return errorResponse(404, `event ${r.eventId} does not exist in amocrm.sync_events`);
    case 'queued':
      return json(202, {
        ok: true, event_id: r.eventId, outcome: 'queued',
        reason: r.reason === 'drainer'
          ? 'a drainer is working through a backlog: the event is in its queue'
          : 'another lesson of this student is being processed: the scheduled run takes this one next',
      });
    case 'duplicate':
      return json(200, { ok: true, event_id: r.eventId, outcome: 'duplicate', reason: r.reason, event_status: r.eventStatus });
    case 'delivered': {
      const o = r.outcome;
      return json(STATUS_BY_OUTCOME[o.status] ?? 200, {
        ok: o.status === 'done' || o.status === 'skipped',
        event_id: r.eventId, outcome: o.status, moved: o.moved, lead_id: o.leadId, status_id: o.statusId,
        code: o.code, message: o.message, retry_in_ms: o.retryInMs,
      });
    }
  }
}
