// The lesson_progress trigger: a student's completion of a Tripwire lesson records one
// outbox event (and rings the webhook through pg_net), and nothing the integration does
// can make the student's write fail.
import { createHmac, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import {
  completeLesson,
  createUser,
  deleteSetting,
  eventsOf,
  queuedFor,
  setSetting,
  uniqueEmail,
} from './support.ts';

const SECRET_BYTES = randomBytes(24);
const SECRET = `whsec_${SECRET_BYTES.toString('base64')}`;
const NOWHERE = 'http://127.0.0.1:9/';

async function configureWebhook(t: TestDatabase, url = NOWHERE, secret = SECRET) {
  await setSetting(t, 'webhook_url', url);
  await setSetting(t, 'webhook_secret', secret);
}

function sign(key: Buffer, id: string, ts: string, body: string): string {
  return `v1,${createHmac('sha256', key).update(`${id}.${ts}.${body}`, 'utf8').digest('base64')}`;
}


/** Replaces amocrm.record_event with one that always raises: the outbox insert fails. Returns the undo. */
async function breakOutbox(t: TestDatabase): Promise<() => Promise<void>> {
  const [saved] = await t.sql(`select pg_get_functiondef('amocrm.record_event'::regproc) as def`);
  await t.sql(`
  create or replace function amocrm.record_event(
    p_user_id uuid, p_lesson_id integer, p_source text, p_progress_id text,
    out event_id bigint, out created boolean, out stage_number smallint)
  returns record language plpgsql set search_path = '' as $$
  begin
    raise exception 'simulated outbox failure';
  end $$`);
  return async () => { await t.sql(saved!.def); };
}

describe('lesson_progress trigger (pg_net present)', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
    await configureWebhook(t);
  });
  afterAll(async () => {
    await t?.close();
  });

  it.each([
    [67, 1],
    [68, 2],
    [69, 3],
  ])('lesson %i records exactly one pending event at stage %i with the e-mail normalised', async (lesson, stage) => {
    const raw = `  ${uniqueEmail('Mixed.Case').toUpperCase()}  `;
    const user = await createUser(t, raw);
    const progress = await completeLesson(t, user, lesson);

    const events = await eventsOf(t, user);
    expect(events).toHaveLength(1);
    const e = events[0]!;
    expect(e.status).toBe('pending');
    expect(e.email).toBe(raw.trim().toLowerCase());
    expect(e.lesson_id).toBe(lesson);
    expect(e.stage_number).toBe(stage);
    expect(e.source).toBe('trigger');
    expect(e.progress_id).toBe(progress.id);
    expect(e.attempts).toBe(0);
    // New events wait ~60 s for the webhook before the scheduled run may take them.
    const delay = await t.sql(
      `select extract(epoch from (next_attempt_at - created_at)) as s from amocrm.sync_events where id = $1`,
      [e.id],
    );
    expect(Number(delay[0]!.s)).toBeCloseTo(60, 0);
  });

  it.each([66, 70])('lesson %i (outside the Tripwire set) records nothing and rings nothing', async (lesson) => {
    const user = await createUser(t, uniqueEmail());
    await completeLesson(t, user, lesson);
    expect(await eventsOf(t, user)).toHaveLength(0);
    expect(await queuedFor(t, user)).toHaveLength(0);
  });

  it('a second completion of the same lesson (another row, or an UPDATE) is not a second event', async () => {
    const user = await createUser(t, uniqueEmail());
    const first = await completeLesson(t, user, 68);
    await completeLesson(t, user, 68);
    await t.asRole(
      'authenticated',
      'update public.lesson_progress set completed_at = now(), is_completed = true where id = $1',
      [first.id],
      user,
    );
    const events = await eventsOf(t, user);
    expect(events).toHaveLength(1);
    expect(events[0]!.progress_id).toBe(first.id);
    // The webhook is rung once, for the event that was created.
    expect(await queuedFor(t, user)).toHaveLength(1);
  });

  it('an insert with is_completed=false records nothing; the UPDATE to true records the event', async () => {
    const user = await createUser(t, uniqueEmail());
    const row = await completeLesson(t, user, 69, false);
    expect(await eventsOf(t, user)).toHaveLength(0);
    expect(await queuedFor(t, user)).toHaveLength(0);

    // An update that leaves it incomplete is still nothing.
    await t.asRole('authenticated', 'update public.lesson_progress set completed_at = null where id = $1', [row.id], user);
    expect(await eventsOf(t, user)).toHaveLength(0);

    await t.asRole('authenticated', 'update public.lesson_progress set is_completed = true where id = $1', [row.id], user);
    const events = await eventsOf(t, user);
    expect(events).toHaveLength(1);
    expect(events[0]!.stage_number).toBe(3);
    expect(events[0]!.progress_id).toBe(row.id);

    const queued = await queuedFor(t, user);
    expect(queued).toHaveLength(1);
    const body = JSON.parse(queued[0]!.body_text);
    expect(body.type).toBe('UPDATE');
    expect(body.record.is_completed).toBe(true);
    expect(body.old_record.is_completed).toBe(false);
    expect(body.old_record.id).toBe(row.id);
  });

  it('(a) with webhook_url pointing nowhere the insert succeeds and a signed Standard Webhooks request is queued', async () => {
    const user = await createUser(t, uniqueEmail());
    const before = Math.floor(Date.now() / 1000);
    const progress = await completeLesson(t, user, 67);
    const after = Math.ceil(Date.now() / 1000);
    const [event] = await eventsOf(t, user);
    expect(event).toBeDefined();

    const queued = await queuedFor(t, user);
    expect(queued).toHaveLength(1);
    const q = queued[0]!;
    expect(q.method).toBe('POST');
    expect(q.url).toBe(NOWHERE);
    expect(q.timeout_milliseconds).toBe(10000);

    const h = q.headers as Record<string, string>;
    expect(h['Content-Type']).toBe('application/json');
    expect(h['webhook-id']).toBe(`evt_${event!.id}`);
    expect(h['webhook-timestamp']).toMatch(/^\d+$/);
    // Signed with the clock of the student's write (the database and this process share it).
    expect(Number(h['webhook-timestamp'])).toBeGreaterThanOrEqual(before);
    expect(Number(h['webhook-timestamp'])).toBeLessThanOrEqual(after);
    expect(h['webhook-signature']).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);

    const body = JSON.parse(q.body_text);
    expect(body).toEqual({
      type: 'INSERT',
      table: 'lesson_progress',
      schema: 'public',
      record: expect.objectContaining({ id: progress.id, user_id: user, lesson_id: 67, is_completed: true }),
      old_record: null,
      event_id: Number(event!.id),
    });

    // The signature, recomputed: HMAC-SHA256 over "id.timestamp.body" keyed by the
    // base64-decoded part of the whsec_ secret.
    const key = Buffer.from(SECRET.slice('whsec_'.length), 'base64');
    expect(key.equals(SECRET_BYTES)).toBe(true);
    expect(h['webhook-signature']).toBe(sign(key, h['webhook-id']!, h['webhook-timestamp']!, q.body_text));
    // ...and it is not just any HMAC: another key or another body would not verify.
    expect(h['webhook-signature']).not.toBe(sign(randomBytes(24), h['webhook-id']!, h['webhook-timestamp']!, q.body_text));
    expect(h['webhook-signature']).not.toBe(sign(key, h['webhook-id']!, h['webhook-timestamp']!, `${q.body_text} `));
  });

  it('a secret without the whsec_ prefix is used as its UTF-8 bytes', async () => {
    await setSetting(t, 'webhook_secret', 'plain-secret-ключ');
    try {
      const user = await createUser(t, uniqueEmail());
      await completeLesson(t, user, 68);
      const [q] = await queuedFor(t, user);
      const h = q!.headers as Record<string, string>;
      expect(h['webhook-signature']).toBe(
        sign(Buffer.from('plain-secret-ключ', 'utf8'), h['webhook-id']!, h['webhook-timestamp']!, q!.body_text),
      );
    } finally {
      await setSetting(t, 'webhook_secret', SECRET);
    }
  });

  it('(c) with no webhook settings at all the insert succeeds, the event is recorded, nothing is queued', async () => {
    await deleteSetting(t, 'webhook_url');
    await deleteSetting(t, 'webhook_secret');
    try {
      const user = await createUser(t, uniqueEmail());
      await completeLesson(t, user, 67);
      expect(await eventsOf(t, user)).toHaveLength(1);
      expect(await queuedFor(t, user)).toHaveLength(0);

      // A URL without a secret is not enough to ring either (never send unsigned).
      await setSetting(t, 'webhook_url', NOWHERE);
      const other = await createUser(t, uniqueEmail());
      await completeLesson(t, other, 67);
      expect(await eventsOf(t, other)).toHaveLength(1);
      expect(await queuedFor(t, other)).toHaveLength(0);
    } finally {
      await configureWebhook(t);
    }
  });

  it('a broken webhook configuration (undecodable secret) costs the ring but never the event or the insert', async () => {
    await setSetting(t, 'webhook_secret', 'whsec_%%%not-base64%%%');
    try {
      const user = await createUser(t, uniqueEmail());
      await completeLesson(t, user, 69);
      expect(await eventsOf(t, user)).toHaveLength(1);
      expect(await queuedFor(t, user)).toHaveLength(0);
      expect(await t.sql('select 1 from public.lesson_progress where user_id = $1', [user])).toHaveLength(1);
    } finally {
      await setSetting(t, 'webhook_secret', SECRET);
    }
  });

  it('if the outbox insert fails (a stage outside 1..9), the student insert still succeeds and records nothing', async () => {
    await setSetting(t, 'tripwire_lessons', { '67': 10, '68': 2, '69': 3 });
    try {
      const user = await createUser(t, uniqueEmail());
      const row = await completeLesson(t, user, 67);
      expect(row.id).toBeTruthy();
      expect(await t.sql('select 1 from public.lesson_progress where id = $1', [row.id])).toHaveLength(1);
      expect(await eventsOf(t, user)).toHaveLength(0);
      expect(await queuedFor(t, user)).toHaveLength(0);
    } finally {
      await setSetting(t, 'tripwire_lessons', { '67': 1, '68': 2, '69': 3 });
    }
  });
});

describe('lesson_progress trigger (pg_net absent)', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase({ pgNet: false });
    await configureWebhook(t);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('(b) the insert succeeds and the event is recorded even though the webhook is configured', async () => {
    expect(await t.sql(`select to_regnamespace('net') as n`)).toEqual([{ n: null }]);
    const user = await createUser(t, uniqueEmail());
    const row = await completeLesson(t, user, 68);
    expect(row.id).toBeTruthy();
    const events = await eventsOf(t, user);
    expect(events).toHaveLength(1);
    expect(events[0]!.stage_number).toBe(2);
    expect(events[0]!.status).toBe('pending');
  });

  it('if amocrm.record_event raises, the student insert still succeeds', async () => {
    const repair = await breakOutbox(t);
    try {
      const user = await createUser(t, uniqueEmail());
      const row = await completeLesson(t, user, 69);
      expect(row.id).toBeTruthy();
      expect(await t.sql('select 1 from public.lesson_progress where id = $1', [row.id])).toHaveLength(1);
      expect(await eventsOf(t, user)).toHaveLength(0);
    } finally {
      await repair();
    }
  });
});

describe('lesson_progress trigger when the outbox insert raises (pg_net present)', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
    await configureWebhook(t);
    await breakOutbox(t);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('the student insert (and update) succeed, nothing is recorded and nothing is rung', async () => {
    const user = await createUser(t, uniqueEmail());
    const row = await completeLesson(t, user, 67, false);
    await t.asRole('authenticated', 'update public.lesson_progress set is_completed = true where id = $1', [row.id], user);
    await completeLesson(t, user, 68);
    expect(await t.sql('select 1 from public.lesson_progress where user_id = $1', [user])).toHaveLength(2);
    expect(await eventsOf(t, user)).toHaveLength(0);
    expect(await t.sql('select count(*)::int as n from net.http_request_queue')).toEqual([{ n: 0 }]);
  });
});
