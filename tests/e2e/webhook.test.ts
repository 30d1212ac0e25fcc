// The lesson-completed webhook end to end: real database (PGlite or PostgreSQL 15), the
// amoCRM stand-in, the real handler. Each test asserts the final state of the event and
// of the deal in the stand-in.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { createStack, dbWebhookBody, STAGE, OTHER_PIPELINE, type Stack } from '../helpers/stack.ts';

let s: Stack;
const send = (req: Request) => handleLessonCompleted(req, async () => s.rt);

// One database and stand-in per file (each test uses its own students); counters and
// faults are reset between tests.
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s.close(); });
beforeEach(() => { s.amo.resetCounts(); s.amo.clearFaults(); s.log.lines.length = 0; });

/**
 * What pg_net would POST for this event: the exact request the trigger queued for it.
 * Exactly one must exist; another event's delivery is never a stand-in for it.
 */
async function queuedDelivery(eventId: number): Promise<Request> {
  const rows = await s.t.sql(
    `select url, headers, convert_from(body, 'UTF8') as body from net.http_request_queue
      where (convert_from(body, 'UTF8')::jsonb ->> 'event_id')::bigint = $1`, [eventId]);
  expect(rows, `deliveries queued for event ${eventId}`).toHaveLength(1);
  const [row] = rows;
  return new Request(row!.url, { method: 'POST', headers: row!.headers, body: row!.body });
}

describe('moving the deal', () => {
  it('the trigger-signed delivery moves the deal and logs the runbook line', async () => {
    await s.t.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', to_jsonb('http://127.0.0.1:9/nowhere'::text)), ('webhook_secret', to_jsonb($1::text))`, [s.env.AMOCRM_WEBHOOK_SECRET]);
    const student = await s.addStudent('aida@student.kz');
    const eventId = await s.complete(student.userId, 67);
    const res = await send(await queuedDelivery(eventId));
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, outcome: 'done', moved: true, lead_id: student.leadId, status_id: STAGE.lesson1 });
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson1);
    const event = await s.event(eventId);
    expect([event.status, Number(event.lead_id), Number(event.status_id)]).toEqual(['done', student.leadId, STAGE.lesson1]);
    const moved = s.log.lines.filter((l) => /✅.*AmoCRM.*перемещена/.test(l));
    expect(moved).toEqual([expect.stringContaining(`Сделка ${student.leadId} успешно перемещена на этап ${STAGE.lesson1}`)]);
    expect(moved[0]).toMatch(new RegExp(`event=${eventId} lesson=67 email=aida@student.kz`));
  });

  it('a plain Database Webhook body records the event itself and moves the deal', async () => {
    const student = await s.addStudent('bolat@student.kz');
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 68)));
    expect(res.status).toBe(200);
    expect((await res.json()).outcome).toBe('done');
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson2);
    const events = await s.t.sql('select status, source, email from amocrm.sync_events where user_id = $1', [student.userId]);
    expect(events).toEqual([{ status: 'done', source: 'webhook', email: 'bolat@student.kz' }]);
  });

  it('walks 67 → 68 → 69 and the later lessons reuse the remembered deal (no contact search)', async () => {
    const student = await s.addStudent('dana@student.kz');
    for (const [lesson, stage] of [[67, STAGE.lesson1], [68, STAGE.lesson2], [69, STAGE.lesson3]] as const) {
      s.amo.resetCounts();
      const res = await send(s.webhookRequest(dbWebhookBody(student.userId, lesson)));
      expect((await res.json()).outcome).toBe('done');
      expect(s.amo.lead(student.leadId)!.statusId).toBe(stage);
      if (lesson !== 67) expect(s.amo.counts().byRoute['GET /api/v4/contacts'] ?? 0).toBe(0);
    }
  });

  it('a duplicate delivery does no second move', async () => {
    const student = await s.addStudent('erlan@student.kz');
    const eventId = await s.complete(student.userId, 67);
    const body = { ...dbWebhookBody(student.userId, 67), event_id: eventId };
    const first = await send(s.webhookRequest(body));
    const second = await send(s.webhookRequest(body));
    expect((await first.json()).outcome).toBe('done');
    expect(second.status).toBe(200);
    expect(await second.json()).toMatchObject({ outcome: 'duplicate', event_status: 'done' });
    expect(s.amo.counts().patches).toBe(1);
    expect((await s.event(eventId)).attempts).toBe(1);
  });

  it('two deliveries of one event racing: exactly one moves', async () => {
    const student = await s.addStudent('gulnara@student.kz');
    const eventId = await s.complete(student.userId, 68);
    const body = { ...dbWebhookBody(student.userId, 68), event_id: eventId };
    const answers = await Promise.all([send(s.webhookRequest(body)), send(s.webhookRequest(body))]);
    const outcomes = (await Promise.all(answers.map((r) => r.json()))).map((b) => b.outcome).sort();
    expect(outcomes).toEqual(['done', 'duplicate']);
    expect(s.amo.counts().patches).toBe(1);
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson2);
  });
});

describe('forward only', () => {
  it('a lesson 1 event after lesson 3 skips and leaves the deal on stage 3', async () => {
    const student = await s.addStudent('kairat@student.kz');
    await send(s.webhookRequest(dbWebhookBody(student.userId, 69)));
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 67)));
    expect(await res.json()).toMatchObject({ outcome: 'skipped', code: 'would_move_backwards' });
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson3);
    const [late] = await s.t.sql('select status, last_error_code from amocrm.sync_events where user_id = $1 and lesson_id = 67', [student.userId]);
    expect(late).toEqual({ status: 'skipped', last_error_code: 'would_move_backwards' });
    expect(s.amo.counts().patches).toBe(1);
  });

  it.each([[142, 'won'], [143, 'lost']])('a %s (%s) deal is untouched', async (statusId) => {
    const student = await s.addStudent(`closed${statusId}@student.kz`, { leadStatusId: statusId });
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 68)));
    expect(await res.json()).toMatchObject({ outcome: 'skipped', code: 'deal_closed' });
    expect(s.amo.lead(student.leadId)!.statusId).toBe(statusId);
    expect(s.amo.counts().patches).toBe(0);
  });

  it('a deal sales already moved past the Tripwire stages is not pulled back', async () => {
    const student = await s.addStudent('paid@student.kz', { leadStatusId: STAGE.paid });
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 69)));
    expect(await res.json()).toMatchObject({ outcome: 'skipped', code: 'past_tripwire' });
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.paid);
  });

  it('a deal already in the stage (killed before recording) is recorded done without a second move', async () => {
    const student = await s.addStudent('killed@student.kz', { leadStatusId: STAGE.lesson1 });
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 67)));
    expect(await res.json()).toMatchObject({ outcome: 'done', moved: false });
    expect(s.amo.counts().patches).toBe(0);
  });
});

describe('finding the deal', () => {
  it('the over-matching search picks the contact with exactly this e-mail', async () => {
    // amoCRM's query matches substrings and names: both decoys come back for "anna@school.kz".
    const decoy = await s.addStudent('maryanna@school.kz');
    await s.addStudent('other@school.kz', { contactName: 'anna@school.kz' });
    const anna = await s.addStudent('Anna@School.kz', { emails: ['  ANNA@school.kz '] });
    const res = await send(s.webhookRequest(dbWebhookBody(anna.userId, 67)));
    expect(await res.json()).toMatchObject({ outcome: 'done', lead_id: anna.leadId });
    expect(s.amo.lead(anna.leadId)!.statusId).toBe(STAGE.lesson1);
    expect(s.amo.lead(decoy.leadId)!.statusId).toBe(STAGE.incoming);
  });

  it('prefers the open deal in the configured pipeline, most recently updated', async () => {
    const student = await s.addStudent('multi@student.kz', { leads: [
      { statusId: 142, updatedAt: 1_700_000_900 },                        // won, newest
      { statusId: STAGE.incoming, updatedAt: 1_700_000_100 },             // open, older
      { statusId: STAGE.incoming, updatedAt: 1_700_000_500 },             // open, newer: chosen
      { statusId: STAGE.other, pipelineId: OTHER_PIPELINE, updatedAt: 1_700_000_999 }, // other pipeline
    ] });
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 67)));
    expect(await res.json()).toMatchObject({ outcome: 'done', lead_id: student.leadIds[2] });
    expect(student.leadIds.map((id) => s.amo.lead(id)!.statusId)).toEqual([142, STAGE.incoming, STAGE.lesson1, STAGE.other]);
  });

  it('no contact with that e-mail (204 on search) fails permanently with a ❌ line', async () => {
    const [user] = await s.t.sql(`insert into auth.users (email) values ('ghost@student.kz') returning id`);
    const res = await send(s.webhookRequest(dbWebhookBody(user!.id, 67)));
    expect(res.status).toBe(422);
    expect(await res.json()).toMatchObject({ outcome: 'failed', code: 'contact_not_found' });
    expect(s.log.lines.some((l) => /❌.*AmoCRM.*ghost@student.kz/.test(l) || (/❌.*AmoCRM/.test(l) && l.includes('contact_not_found')))).toBe(true);
  });

  it('no deal in the pipeline fails permanently', async () => {
    const student = await s.addStudent('partner@student.kz', { leads: [{ statusId: STAGE.other, pipelineId: OTHER_PIPELINE }] });
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 67)));
    expect(await res.json()).toMatchObject({ outcome: 'failed', code: 'no_deal_in_pipeline' });
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.other);
  });
});

describe('amoCRM trouble never loses the event', () => {
  it('429 leaves the event retryable with a next attempt time', async () => {
    const student = await s.addStudent('busy@student.kz');
    s.amo.inject('GET /api/v4/contacts', { status: 429, body: { title: 'Too Many Requests', status: 429, retry_after: 120 } });
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 67)));
    expect(res.status).toBe(202);
    // The wait as the outcome set it (next_attempt_at and updated_at come from the same
    // statement), so the time this test takes cannot shrink it.
    const [e] = await s.t.sql(`select status, retryable, last_error_code, extract(epoch from next_attempt_at - updated_at) as wait from amocrm.sync_events where user_id = $1`, [student.userId]);
    expect(e).toMatchObject({ status: 'failed', retryable: true, last_error_code: 'rate_limited' });
    expect(Number(e!.wait)).toBeGreaterThanOrEqual(120); // honours retry_after: 120 s
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.incoming);
    // The 429 also paused every caller for 120 s and halved the shared rate (the limiter's
    // own tests cover that): lift it, so the tests after this one are not deferred.
    const [limiter] = await s.t.sql(`update amocrm.rate_limiter set paused_until = null, rate_factor = 1, penalized_at = null,
                                            next_free_at = least(next_free_at, clock_timestamp())
                                      where key = 'amocrm' returning rate_limited_total`);
    expect(Number(limiter!.rate_limited_total)).toBeGreaterThan(0);
  });

  it('a 401 on a valid-looking token refreshes once and retries', async () => {
    const student = await s.addStudent('expired@student.kz');
    s.amo.expireAccessTokens();
    const res = await send(s.webhookRequest(dbWebhookBody(student.userId, 67)));
    expect((await res.json()).outcome).toBe('done');
    expect(s.amo.counts().refreshes).toBe(1);
    expect(s.log.lines.filter((l) => l.includes('Токены успешно обновлены'))).toHaveLength(1);
    expect(s.log.lines.some((l) => l.includes('Токен истёк'))).toBe(true);
  });

  it('no secret reaches a log line or a response', async () => {
    const student = await s.addStudent('secret@student.kz');
    s.amo.expireAccessTokens();
    s.amo.inject('GET /api/v4/contacts', { status: 500, body: { title: 'boom', detail: 'Bearer standin-at-deadbeef leaked?' } });
    const bodies = [await (await send(s.webhookRequest(dbWebhookBody(student.userId, 67)))).text()];
    bodies.push(await (await send(s.webhookRequest(dbWebhookBody(student.userId, 68)))).text());
    bodies.push(await (await send(s.webhookRequest(dbWebhookBody(student.userId, 69), { 'x-webhook-secret': 'wrong-secret-value' }))).text());
    expect(s.log.lines.some((l) => l.includes('Токены успешно обновлены'))).toBe(true);
    const [row] = await s.t.sql(`select value from amocrm.system_settings where key = 'amocrm_tokens'`);
    const secrets = [row!.value.access_token, row!.value.refresh_token, s.env.AMOCRM_CLIENT_SECRET, s.env.AMOCRM_WEBHOOK_SECRET, 'wrong-secret-value'];
    for (const text of [...s.log.lines, ...bodies]) for (const secret of secrets) expect(text).not.toContain(secret);
  });
});

describe('authentication', () => {
  it('accepts a Standard Webhooks signature and rejects a wrong or stale one', async () => {
    const student = await s.addStudent('signed@student.kz');
    const body = dbWebhookBody(student.userId, 67);
    expect((await send(s.signedRequest(body, { secret: 'whsec_d3JvbmctY29tcGxldGVseS0xMjM0NTY3OA==' }))).status).toBe(401);
    const stale = await send(s.signedRequest(body, { timestamp: Math.floor(Date.now() / 1000) - 600 }));
    expect(stale.status).toBe(401);
    expect((await stale.json()).error).toMatch(/timestamp/);
    expect(await s.t.sql('select 1 from amocrm.sync_events where user_id = $1', [student.userId])).toHaveLength(0); // nothing written for rejected calls
    expect((await send(s.signedRequest(body))).status).toBe(200);
  });

  it('rejects a missing or wrong shared secret with 401', async () => {
    const student = await s.addStudent('nosecret@student.kz');
    const noHeader = new Request('http://localhost/x', { method: 'POST', body: JSON.stringify(dbWebhookBody(student.userId, 67)) });
    expect((await send(noHeader)).status).toBe(401);
    expect((await send(s.webhookRequest(dbWebhookBody(student.userId, 67), { 'x-webhook-secret': 'nope' }))).status).toBe(401);
    expect(s.amo.counts().total).toBe(0);
  });

  it('names the bad field with a 400', async () => {
    const res = await send(s.webhookRequest({ type: 'INSERT', table: 'lesson_progress', schema: 'public', record: { user_id: 'not-a-uuid', lesson_id: 67 }, old_record: null }));
    expect(res.status).toBe(400);
    expect((await res.json()).error).toMatch(/^record\.user_id: /);
  });
});
