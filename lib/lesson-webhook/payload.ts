// The body the lesson-completed webhook accepts: Supabase's Database Webhook shape {type,
// table, schema, record, old_record}, plus event_id when our trigger sent it.
import { z } from 'zod';
import { PayloadError } from '../http/body.ts';

const PG_INT_MAX = 2_147_483_647;

const progressRecord = z.looseObject({
  id: z.union([z.string().max(100), z.number().int()], { message: 'must be the lesson_progress row id (a string of up to 100 characters, or an integer)' }).optional(),
  // Any 8-4-4-4-12 hex id: auth.users ids are v4 today, but the database decides who
  // exists (422), not the UUID version.
  user_id: z.guid({ message: 'must be the student\'s auth.users id (a UUID)' }),
  lesson_id: z.number({ message: 'must be a number' }).int('must be an integer').positive('must be positive').max(PG_INT_MAX, 'is too large'),
});

export const webhookBodySchema = z.object({
  type: z.enum(['INSERT', 'UPDATE', 'DELETE'], { message: 'must be INSERT, UPDATE or DELETE' }),
  table: z.string().max(100),
  schema: z.string().max(100),
  record: progressRecord.nullable(),
  old_record: z.looseObject({}).nullable().optional(),
  event_id: z.number().int().positive().max(Number.MAX_SAFE_INTEGER).optional(),
});

export type WebhookBody = z.infer<typeof webhookBodySchema>;

/** The same completion rule as amocrm.row_is_completed in SQL. */
export function isCompleted(row: Record<string, unknown> | null | undefined): boolean {
  if (!row) return false;
  if ('is_completed' in row) return row.is_completed === true;
  if ('completed' in row) return row.completed === true;
  if ('completed_at' in row) return row.completed_at !== null && row.completed_at !== undefined;
  return true;
}

export function parseWebhookBody(value: unknown): WebhookBody {
  const result = webhookBodySchema.safeParse(value);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    if (!issue.path.length) {
      throw new PayloadError('body: expected a JSON object {type, table, schema, record}, the Supabase Database Webhook payload for lesson_progress');
    }
    throw new PayloadError(`${issue.path.join('.')}: ${issue.message}`);
  }
  const body = result.data;
  if (body.schema !== 'public' || body.table !== 'lesson_progress') {
    throw new PayloadError(`table: expected public.lesson_progress, got ${body.schema}.${body.table}: point this webhook at lesson_progress`, 422);
  }
  if (body.type === 'DELETE') {
    throw new PayloadError('type: a DELETE is not a lesson completion: configure the webhook for INSERT and UPDATE only', 422);
  }
  if (!body.record) {
    throw new PayloadError(`record: is null: an ${body.type} must carry the lesson_progress row as record`, 422);
  }
  return body;
}
