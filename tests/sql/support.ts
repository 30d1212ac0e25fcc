// Small helpers shared by the tests in tests/sql (not a test file itself).
import type { Row, TestDatabase } from '../helpers/db.ts';

/** A student in auth.users; returns the id. */
export async function createUser(t: TestDatabase, email: string): Promise<string> {
  const rows = await t.sql('insert into auth.users (email) values ($1) returning id', [email]);
  return rows[0]!.id as string;
}

let counter = 0;
/** A unique e-mail for a test student. */
export function uniqueEmail(prefix = 'student'): string {
  counter += 1;
  return `${prefix}.${Date.now().toString(36)}.${counter}@example.com`;
}

/** The student writes their own progress, as the Data API would (authenticated + JWT sub). */
export async function completeLesson(
  t: TestDatabase,
  userId: string,
  lessonId: number,
  isCompleted = true,
): Promise<Row> {
  const rows = await t.asRole(
    'authenticated',
    'insert into public.lesson_progress (user_id, lesson_id, is_completed) values ($1, $2, $3) returning id',
    [userId, lessonId, isCompleted],
    userId,
  );
  return rows[0]!;
}

export async function eventsOf(t: TestDatabase, userId: string): Promise<Row[]> {
  return t.sql('select * from amocrm.sync_events where user_id = $1 order by id', [userId]);
}

/** Requests the pg_net stand-in queued for a student's events (body decoded). */
export async function queuedFor(t: TestDatabase, userId: string): Promise<Row[]> {
  return t.sql(
    `select id, method, url, headers, convert_from(body, 'UTF8') as body_text, timeout_milliseconds
       from net.http_request_queue
      where convert_from(body, 'UTF8')::jsonb -> 'record' ->> 'user_id' = $1
      order by id`,
    [userId],
  );
}

export async function setSetting(t: TestDatabase, key: string, value: unknown): Promise<void> {
  await t.sql(
    `insert into amocrm.system_settings (key, value) values ($1, $2::jsonb)
     on conflict (key) do update set value = excluded.value, updated_at = now()`,
    [key, JSON.stringify(value)],
  );
}

export async function deleteSetting(t: TestDatabase, key: string): Promise<void> {
  await t.sql('delete from amocrm.system_settings where key = $1', [key]);
}

/** Rejects with the database error, so a test can look at its code and message. */
export async function errorOf(p: Promise<unknown>): Promise<{ code?: string; message: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  throw new Error('expected the statement to fail, but it succeeded');
}

/** Inserts an event directly (arranging a state), returns its id. */
export async function insertEvent(
  t: TestDatabase,
  fields: Record<string, unknown> & { user_id: string; lesson_id: number },
): Promise<number> {
  const f: Record<string, unknown> = { stage_number: 1, ...fields };
  const cols = Object.keys(f);
  const rows = await t.sql(
    `insert into amocrm.sync_events (${cols.join(', ')})
     values (${cols.map((_, i) => `$${i + 1}`).join(', ')}) returning id`,
    cols.map((c) => f[c]),
  );
  return Number(rows[0]!.id);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
