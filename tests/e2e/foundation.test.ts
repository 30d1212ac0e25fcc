// The bugs a close review of the sync found (issue 8), each as the behaviour that must
// hold: real database (PGlite or PostgreSQL 15), the amoCRM stand-in, the real steps.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import type { Db, RpcArgs } from '../../lib/db/port.ts';
import { replayRequestSchema, runReplay } from '../../lib/sync/replay.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { createStack, dbWebhookBody, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s?.close(); });
beforeEach(async () => {
  s.amo.resetCounts(); s.amo.clearFaults(); s.log.lines.length = 0;
  // Whatever the previous test left queued is not this test's business.
  await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
});

let seq = 0;
const email = (tag: string) => `${tag}.${++seq}@foundation.kz`;

/** Makes every event of these students due now, as the scheduled run would find them. */
async function due(userIds: string[]) {
  await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where user_id = any($1::uuid[])`, [userIds]);
}
async function statusesOf(userIds: string[]) {
  const rows = await s.t.sql(`select user_id, status, last_error_code from amocrm.sync_events where user_id = any($1::uuid[])`, [userIds]);
  return Object.fromEntries(rows.map((r) => [r.user_id, `${r.status}${r.last_error_code ? ` ${r.last_error_code}` : ''}`]));
}
/** The scheduled run, with room for one batch of `limit` events. */
const runBatch = (limit = 100) => runSweep(s.rt, { batchSize: limit, budgetMs: 60_000, reserveMs: 1_000 });

describe('one bad event never fails its batch', () => {
  it('3 good events and 1 student without an e-mail: 3 done, 1 failed no_email (not retried)', async () => {
    const good = await Promise.all([1, 2, 3].map(() => s.addStudent(email('good'))));
    const [user] = await s.t.sql(`insert into auth.users (email) values (null) returning id`);
    const noMail = user!.id as string;
    for (const st of good) await s.complete(st.userId, 67);
    await s.complete(noMail, 67);
    const ids = [...good.map((g) => g.userId), noMail];
    await due(ids);

    const report = await runBatch();
    expect(report.claimed).toBe(4);
    const after = await statusesOf(ids);
    expect(good.map((g) => after[g.userId])).toEqual(['done', 'done', 'done']);
    expect(after[noMail]).toBe('failed no_email');
    const [row] = await s.t.sql(`select retryable from amocrm.sync_events where user_id = $1`, [noMail]);
    expect(row!.retryable).toBe(false);
    expect(good.map((g) => s.amo.lead(g.leadId)!.statusId)).toEqual([STAGE.lesson1, STAGE.lesson1, STAGE.lesson1]);
  });

  it('a lesson mapped to a stage with no configured stage fails alone; its neighbours move', async () => {
    // Remembered deals: the batch reads them together and plans each event on its own.
    const good = await Promise.all([1, 2, 3].map(() => s.addStudent(email('nbr'), { leadStatusId: STAGE.lesson1 })));
    const odd = await s.addStudent(email('stage4'), { leadStatusId: STAGE.lesson1 });
    const all = [...good, odd];
    await s.t.sql(`insert into amocrm.student_leads (user_id, lead_id) select * from unnest($1::uuid[], $2::bigint[])`,
      [all.map((x) => x.userId), all.map((x) => x.leadId)]);
    await s.t.sql(`update amocrm.system_settings set value = value || '{"70": 4}' where key = 'tripwire_lessons'`);
    try {
      for (const st of good) await s.complete(st.userId, 68);
      await s.complete(odd.userId, 70);
    } finally {
      await s.t.sql(`update amocrm.system_settings set value = value - '70' where key = 'tripwire_lessons'`);
    }
    const ids = all.map((x) => x.userId);
    await due(ids);
    await runBatch();
    const after = await statusesOf(ids);
    expect(good.map((g) => after[g.userId])).toEqual(['done', 'done', 'done']);
    expect(after[odd.userId]).toBe('failed no_stage');
    expect(good.map((g) => s.amo.lead(g.leadId)!.statusId)).toEqual([STAGE.lesson2, STAGE.lesson2, STAGE.lesson2]);
  });
});

describe('reads and searches at amoCRM\'s real sizes', () => {
  it('a batch of 60 remembered deals is read in one request of 250, not 50 + 10 searches', async () => {
    const students = await Promise.all(Array.from({ length: 60 }, () => s.addStudent(email('bulk'), { leadStatusId: STAGE.lesson1 })));
    await s.t.sql(`insert into amocrm.student_leads (user_id, lead_id) select * from unnest($1::uuid[], $2::bigint[])`,
      [students.map((x) => x.userId), students.map((x) => x.leadId)]);
    for (const st of students) await s.complete(st.userId, 68);
    await due(students.map((x) => x.userId));
    s.amo.resetCounts();
    const report = await runBatch(100);
    expect(report.outcomes).toEqual({ done: 60 });
    const counts = s.amo.counts();
    expect(counts.byRoute['GET /api/v4/leads']).toBe(1);
    expect(counts.byRoute['PATCH /api/v4/leads']).toBe(2); // 50 + 10
    expect(counts.total).toBe(3); // no search, no single read for deals a short page left out
  });

  it('a search that stops at its page cap is "search_truncated" (with what to do), never contact_not_found', async () => {
    // 1,001 contacts match the substring; the student's exact address is not among the first 1,000.
    for (let i = 0; i < 1001; i++) s.amo.addContact({ id: 70_000_000 + i, name: `lookalike ${i}`, emails: [`x${i}.crowd@school.kz`], leadIds: [] });
    const [user] = await s.t.sql(`insert into auth.users (email) values ('crowd@school.kz') returning id`);
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(user!.id, 67)), async () => s.rt);
    const body = await res.json();
    expect(body).toMatchObject({ outcome: 'failed', code: 'search_truncated' });
    expect(s.log.lines.join('\n')).toMatch(/❌ \[AmoCRM\].*code=search_truncated.*what_to_do=/);
  });

  it('a search with more than 200 matches still finds the exact contact (page 2 of 250)', async () => {
    for (let i = 0; i < 300; i++) s.amo.addContact({ id: 71_000_000 + i, name: `near ${i}`, emails: [`y${i}.many@school.kz`], leadIds: [] });
    const student = await s.addStudent('many@school.kz');
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(student.userId, 67)), async () => s.rt);
    expect(await res.json()).toMatchObject({ outcome: 'done', lead_id: student.leadId });
  });
});

describe('what an invocation learns is kept', () => {
  it('a webhook that found the deal and then got no rate slot defers the event but keeps the deal', async () => {
    const student = await s.addStudent(email('deferred'));
    // Once the search and the deal read are done, the queue for amoCRM fills up.
    let slots = 0;
    const crowded: Db = {
      async rpc<T>(fn: string, args?: RpcArgs): Promise<T> {
        if (fn === 'amocrm_take_rate_slot' && ++slots === 3) {
          await s.t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + interval '60 seconds'`);
        }
        return s.t.db.rpc<T>(fn, args);
      },
    };
    const rt = s.runtimeOver(crowded);
    const first = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(student.userId, 67)), async () => rt);
    expect(await first.json()).toMatchObject({ outcome: 'deferred' });
    const [kept] = await s.t.sql(`select lead_id from amocrm.student_leads where user_id = $1`, [student.userId]);
    expect(Number(kept?.lead_id)).toBe(student.leadId);

    await s.t.sql(`update amocrm.rate_limiter set next_free_at = now()`);
    s.amo.resetCounts();
    await due([student.userId]);
    await runBatch();
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson1);
    expect(s.amo.counts().byRoute['GET /api/v4/contacts'] ?? 0).toBe(0); // no second search
  });
});

describe('a forced replay never rewrites history', () => {
  it('a done lesson-67 event whose deal has since reached stage 3 stays done (and nothing moves back)', async () => {
    const student = await s.addStudent(email('history'));
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(student.userId, 67)), async () => s.rt);
    const { event_id: eventId } = await res.json();
    expect((await s.event(eventId)).status).toBe('done');
    s.amo.setLeadStatus(student.leadId, STAGE.lesson3);

    const result = await runReplay(s.rt, replayRequestSchema.parse({ ids: [eventId], force: true }));
    expect(result.results).toEqual([expect.objectContaining({ id: eventId, before: 'done', outcome: 'done' })]);
    expect(result.replayed).toBe(1);
    const event = await s.event(eventId);
    expect([event.status, event.last_error_code]).toEqual(['done', null]);
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson3);
  });

  it('replay by ids answers ids that do not exist as not_found, and counts only what it replayed', async () => {
    const result = await runReplay(s.rt, replayRequestSchema.parse({ ids: [987_654_321] }));
    expect(result.results).toEqual([expect.objectContaining({ id: 987_654_321, outcome: 'not_found' })]);
    expect(result.replayed).toBe(0);
  });
});

describe('the token refresh', () => {
  it('under a burst on an expired token only the lease holder logs the refresh, once', async () => {
    await s.storeTokens({ expired: true });
    const students = await Promise.all(Array.from({ length: 8 }, () => s.addStudent(email('burst'))));
    const results = await Promise.all(students.map((st) =>
      handleLessonCompleted(s.webhookRequest(dbWebhookBody(st.userId, 67)), async () => s.rt).then((r) => r.json())));
    // Moved, or given back for a slot or for a refresh wait on a loaded machine: never failed or parked.
    expect(results.map((r) => r.outcome).filter((o) => !['done', 'deferred', 'retry'].includes(o))).toEqual([]);
    // One line per refresh call actually made, by the lease holder: 8 invocations, 1 call
    // (2 only if a loaded machine timed the first call out and the next holder tried again).
    const calls = s.amo.requests.filter((r) => r.method === 'POST' && r.path === '/oauth2/access_token').length;
    expect(calls).toBeGreaterThanOrEqual(1);
    expect(calls).toBeLessThanOrEqual(2);
    expect(s.log.lines.filter((l) => l.includes('Токен истёк'))).toHaveLength(calls);
    expect(s.log.lines.filter((l) => l.includes('Токены успешно обновлены'))).toHaveLength(1);
    expect(s.amo.counts().refreshes).toBe(1);
  });
});

describe('events parked on the account come back by themselves', () => {
  it.each([[402, 'payment_required'], [403, 'account_blocked']])('parked on %i: stay parked while amoCRM refuses, then move once it answers', async (status, code) => {
    const student = await s.addStudent(email(`parked${status}`));
    s.amo.inject('GET /api/v4/contacts', { status, body: { status, title: 'refused' } });
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(student.userId, 67)), async () => s.rt);
    const { event_id: eventId, outcome } = await res.json();
    expect(outcome).toBe('parked');
    expect((await s.event(eventId)).last_error_code).toBe(code);

    // The scheduled run asks amoCRM first; while it still refuses, the event waits.
    s.amo.inject('GET /api/v4/account', { status, body: { status, title: 'refused' } });
    expect((await runBatch()).resumed).toBe(0);
    expect((await s.event(eventId)).status).toBe('parked');

    const report = await runBatch();
    expect(report.resumed).toBe(1);
    expect((await s.event(eventId)).status).toBe('done');
    expect(s.amo.lead(student.leadId)!.statusId).toBe(STAGE.lesson1);
    expect(s.log.lines.some((l) => /✅ \[AmoCRM\] amoCRM снова отвечает.*resumed=1/.test(l))).toBe(true);
  });
});
