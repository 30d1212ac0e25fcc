// The outbox RPCs: record (idempotent), claim (lease), finish (only the lease holder;
// retry / dead / deferred / done), claim_due (what the scheduled run may take).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rememberLeads } from '../../lib/db/outbox.ts';
import { createTestDatabase, type Row, type TestDatabase } from '../helpers/db.ts';
import { createUser, insertEvent, uniqueEmail } from './support.ts';

type J = Record<string, any>;

describe('outbox events', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterAll(async () => {
    await t?.close();
  });

  const rpc = (fn: string, args: J = {}) => t.db.rpc<J>(fn, args);
  const row = async (id: number): Promise<Row> =>
    (await t.sql('select * from amocrm.sync_events where id = $1', [id]))[0]!;
  /** A recorded event for a new student, due now (new events wait 60 s for the webhook). */
  const dueEvent = async (lesson = 67, email = uniqueEmail()): Promise<{ id: number; user: string }> => {
    const user = await createUser(t, email);
    const rec = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: lesson });
    await t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where id = $1`, [
      rec.event_id,
    ]);
    return { id: Number(rec.event_id), user };
  };

  describe('amocrm_record_event', () => {
    it('is idempotent on (user, lesson): the same event id, created false the second time', async () => {
      const user = await createUser(t, ` ${uniqueEmail('Rec').toUpperCase()}`);
      const first = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 68, p_progress_id: 'p-1' });
      expect(first).toMatchObject({ tripwire: true, created: true, stage_number: 2 });
      expect(typeof first.event_id).toBe('number');

      const second = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 68, p_progress_id: 'p-2' });
      expect(second).toEqual({ tripwire: true, created: false, event_id: first.event_id, stage_number: 2 });

      const rows = await t.sql('select * from amocrm.sync_events where user_id = $1', [user]);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ source: 'webhook', progress_id: 'p-1', status: 'pending', attempts: 0 });
      expect(rows[0]!.email).toMatch(/^rec\..*@example\.com$/);

      // Another lesson of the same student is another event.
      const other = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 69 });
      expect(other).toMatchObject({ tripwire: true, created: true, stage_number: 3 });
      expect(other.event_id).not.toBe(first.event_id);
    });

    it('answers {tripwire:false} for a lesson outside the Tripwire set and records nothing', async () => {
      const user = await createUser(t, uniqueEmail());
      expect(await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 66 })).toEqual({ tripwire: false });
      expect(await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 70 })).toEqual({ tripwire: false });
      expect(await t.sql('select 1 from amocrm.sync_events where user_id = $1', [user])).toHaveLength(0);
    });
  });

  describe('amocrm_claim_event', () => {
    it('claims a pending event once; a second claim is in_flight; an expired lease is reclaimable', async () => {
      const { id } = await dueEvent();
      const first = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A', p_lease_seconds: 60 });
      expect(first.claimed).toBe(true);
      expect(first.event).toMatchObject({ id, status: 'processing', attempts: 1, lesson_id: 67, stage_number: 1 });
      expect(await row(id)).toMatchObject({ status: 'processing', lease_holder: 'A', attempts: 1 });

      const second = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'B' });
      expect(second).toMatchObject({ claimed: false, reason: 'in_flight' });
      expect(await row(id)).toMatchObject({ lease_holder: 'A', attempts: 1 });

      // The lease runs out (A was killed): B may take it over.
      await t.sql(`update amocrm.sync_events set lease_until = now() - interval '1 second' where id = $1`, [id]);
      const third = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'B' });
      expect(third.claimed).toBe(true);
      expect(third.event.attempts).toBe(2);
      expect(await row(id)).toMatchObject({ lease_holder: 'B' });
      // ...and A, back from the dead, can no longer record anything.
      expect(await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'done' })).toMatchObject({
        recorded: false,
      });
    });

    it('a zero-second lease is reclaimable by the next call', async () => {
      const { id } = await dueEvent();
      expect((await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A', p_lease_seconds: 0 })).claimed).toBe(true);
      const again = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'B', p_lease_seconds: 60 });
      expect(again.claimed).toBe(true);
      expect(await row(id)).toMatchObject({ lease_holder: 'B', attempts: 2 });
    });

    it('a done event answers reason status; an unknown one not_found', async () => {
      const { id } = await dueEvent();
      await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      expect(await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'done' })).toMatchObject({
        recorded: true,
        status: 'done',
      });
      const again = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'B' });
      expect(again).toMatchObject({ claimed: false, reason: 'status', event: { status: 'done' } });
      expect(await row(id)).toMatchObject({ status: 'done', attempts: 1 });
      expect(await rpc('amocrm_claim_event', { p_event_id: 987654321, p_holder: 'B' })).toEqual({
        claimed: false,
        reason: 'not_found',
      });
    });
  });

  describe('amocrm_finish_events (a batch in one call)', () => {
    it('records each like amocrm_finish_event, answers in the given order, and leaves others\' events alone', async () => {
      const [a, b, c] = [await dueEvent(), await dueEvent(), await dueEvent()];
      for (const e of [a, b]) await rpc('amocrm_claim_event', { p_event_id: e.id, p_holder: 'batch' });
      await rpc('amocrm_claim_event', { p_event_id: c.id, p_holder: 'someone-else' });
      const answers = await t.db.rpc<J[]>('amocrm_finish_events', {
        p_holder: 'batch',
        p_outcomes: [
          { event_id: b.id, outcome: 'retry', error_code: 'server_error', retry_in_ms: 20_000, max_attempts: 8 },
          { event_id: c.id, outcome: 'done', lead_id: 7 },
          { event_id: a.id, outcome: 'done', lead_id: 5, contact_id: 6, status_id: 111 },
        ],
      });
      expect(answers).toHaveLength(3);
      expect(answers[0]).toMatchObject({ recorded: true, status: 'failed', became_dead: false });
      expect(answers[1]).toMatchObject({ recorded: false, status: 'processing' });
      expect(answers[2]).toMatchObject({ recorded: true, status: 'done' });
      const rowA = await row(a.id);
      expect([rowA.status, Number(rowA.lead_id), Number(rowA.status_id), rowA.lease_holder]).toEqual(['done', 5, 111, null]);
      expect(await row(b.id)).toMatchObject({ status: 'failed', retryable: true, last_error_code: 'server_error' });
      expect(await row(c.id)).toMatchObject({ status: 'processing', lease_holder: 'someone-else' });
      const [kept] = await t.sql('select lead_id, contact_id from amocrm.student_leads where user_id = $1', [a.user]);
      expect([Number(kept!.lead_id), Number(kept!.contact_id)]).toEqual([5, 6]);
    });

    it('an empty batch records nothing; a batch that is not a list is refused with 22023', async () => {
      expect(await rpc('amocrm_finish_events', { p_holder: 'x', p_outcomes: null })).toEqual([]);
      await expect(t.db.rpc('amocrm_finish_events', { p_holder: 'x', p_outcomes: { event_id: 1 } })).rejects.toMatchObject({ code: '22023' });
    });
  });

  describe('amocrm_remember_leads', () => {
    it('keeps one deal per student and updates a known one', async () => {
      const [u1, u2] = [await createUser(t, uniqueEmail()), await createUser(t, uniqueEmail())];
      await rememberLeads(t.db, [{ userId: u2, leadId: 1, contactId: 9 }]);
      expect(await rpc('amocrm_remember_leads', { p_leads: [{ user_id: u1, lead_id: 10, contact_id: 20, email: 'a@b.kz' }, { user_id: u2, lead_id: 11 }] }))
        .toEqual({ remembered: 2 });
      const rows = await t.sql('select user_id, lead_id::int, contact_id::int from amocrm.student_leads where user_id = any($1::uuid[]) order by lead_id', [[u1, u2]]);
      expect(rows).toEqual([{ user_id: u1, lead_id: 10, contact_id: 20 }, { user_id: u2, lead_id: 11, contact_id: 9 }]);
    });
  });

  describe('amocrm_finish_event', () => {
    it('only the lease holder records', async () => {
      const { id } = await dueEvent();
      await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      expect(await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'B', p_outcome: 'done' })).toMatchObject({
        recorded: false,
        status: 'processing',
      });
      expect(await row(id)).toMatchObject({ status: 'processing', lease_holder: 'A' });
      expect(await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'skipped' })).toMatchObject({
        recorded: true,
        status: 'skipped',
      });
      // Finished: nobody records again, not even the old holder.
      expect(await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'done' })).toMatchObject({
        recorded: false,
        status: 'skipped',
      });
    });

    it('rejects an unknown outcome', async () => {
      const { id } = await dueEvent();
      await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      await expect(rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'maybe' })).rejects.toMatchObject({
        code: '22023',
      });
    });

    it("'retry' leaves it failed, retryable, due in the future", async () => {
      const { id } = await dueEvent();
      await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      const res = await rpc('amocrm_finish_event', {
        p_event_id: id,
        p_holder: 'A',
        p_outcome: 'retry',
        p_error_code: 'http_503',
        p_error: 'amoCRM unavailable',
        p_retry_in_ms: 30_000,
      });
      expect(res).toMatchObject({ recorded: true, status: 'failed', became_dead: false });
      const r = await row(id);
      expect(r).toMatchObject({
        status: 'failed',
        retryable: true,
        last_error_code: 'http_503',
        last_error: 'amoCRM unavailable',
        lease_holder: null,
        lease_until: null,
        finished_at: null,
      });
      // Due p_retry_in_ms after the outcome was recorded (updated_at is set by the same
      // statement), whatever time this test takes to look.
      const inFuture = await t.sql(
        `select extract(epoch from next_attempt_at - updated_at) as s, next_attempt_at > now() as ahead
           from amocrm.sync_events where id = $1`,
        [id],
      );
      expect(Number(inFuture[0]!.s)).toBe(30);
      expect(inFuture[0]!.ahead).toBe(true);
      // Not due yet: the scheduled run leaves it alone.
      const due = await rpc('amocrm_claim_due', { p_holder: 'sched', p_limit: 1000 });
      expect((due as unknown as J[]).map((e) => e.id)).not.toContain(id);
    });

    it("'failed' is a permanent failure: not retryable, finished", async () => {
      const { id } = await dueEvent();
      await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      expect(
        await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'failed', p_error_code: 'no_contact' }),
      ).toMatchObject({ recorded: true, status: 'failed', became_dead: false });
      const r = await row(id);
      expect(r).toMatchObject({ status: 'failed', retryable: false, last_error_code: 'no_contact' });
      expect(r.finished_at).not.toBeNull();
    });

    it("after p_max_attempts attempts 'retry' makes it dead, became_dead true exactly once", async () => {
      const { id } = await dueEvent();
      const outcomes: J[] = [];
      for (let attempt = 1; attempt <= 3; attempt += 1) {
        if (attempt > 1) {
          // A webhook (default: pending only) never takes a failed event: a duplicate
          // delivery must not bypass the backoff or redo a permanent failure.
          expect((await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'webhook' })).claimed).toBe(false);
        }
        const claim = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: `H${attempt}`, p_statuses: ['pending', 'failed'] });
        expect(claim.claimed, `attempt ${attempt}`).toBe(true);
        expect(claim.event.attempts).toBe(attempt);
        outcomes.push(
          await rpc('amocrm_finish_event', {
            p_event_id: id,
            p_holder: `H${attempt}`,
            p_outcome: 'retry',
            p_retry_in_ms: 0,
            p_max_attempts: 3,
          }),
        );
      }
      expect(outcomes.map((o) => [o.status, o.became_dead])).toEqual([
        ['failed', false],
        ['failed', false],
        ['dead', true],
      ]);
      const r = await row(id);
      expect(r).toMatchObject({ status: 'dead', attempts: 3, lease_holder: null });
      expect(r.finished_at).not.toBeNull();

      // Dead is final: a late finish, a claim, or the scheduled run change nothing.
      expect(
        await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'H3', p_outcome: 'retry', p_max_attempts: 3 }),
      ).toMatchObject({ recorded: false, status: 'dead' });
      expect(await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'H4' })).toMatchObject({
        claimed: false,
        reason: 'status',
      });
      const due = (await rpc('amocrm_claim_due', { p_holder: 'sched', p_limit: 1000 })) as unknown as J[];
      expect(due.map((e) => e.id)).not.toContain(id);
    });

    it("'deferred' puts it back to pending without counting the attempt", async () => {
      const { id } = await dueEvent();
      const claim = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      expect(claim.event.attempts).toBe(1);
      expect(
        await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'deferred', p_retry_in_ms: 5000 }),
      ).toMatchObject({ recorded: true, status: 'pending' });
      const r = await row(id);
      expect(r).toMatchObject({ status: 'pending', attempts: 0, lease_holder: null, lease_until: null, finished_at: null });
      // Deferring many times never exhausts the attempts.
      await t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where id = $1`, [id]);
      for (let i = 0; i < 3; i += 1) {
        expect((await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A', p_statuses: ['pending'] })).claimed).toBe(true);
        await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'deferred', p_max_attempts: 1 });
      }
      expect(await row(id)).toMatchObject({ status: 'pending', attempts: 0 });
    });

    it("'parked' waits for an operator (never taken by the scheduled run)", async () => {
      const { id } = await dueEvent();
      await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      expect(
        await rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'A', p_outcome: 'parked', p_error_code: 'auth' }),
      ).toMatchObject({ recorded: true, status: 'parked' });
      const due = (await rpc('amocrm_claim_due', { p_holder: 'sched', p_limit: 1000 })) as unknown as J[];
      expect(due.map((e) => e.id)).not.toContain(id);
      expect(await row(id)).toMatchObject({ status: 'parked' });
    });

    it("'done' remembers the deal; the student's next claim returns cached_lead_id", async () => {
      const { id, user } = await dueEvent(67);
      const claim = await rpc('amocrm_claim_event', { p_event_id: id, p_holder: 'A' });
      expect(claim.event.cached_lead_id).toBeNull();
      expect(
        await rpc('amocrm_finish_event', {
          p_event_id: id,
          p_holder: 'A',
          p_outcome: 'done',
          p_lead_id: 4242,
          p_contact_id: 77,
          p_status_id: 1001,
        }),
      ).toMatchObject({ recorded: true, status: 'done' });
      expect(await row(id)).toMatchObject({ status: 'done', last_error: null, last_error_code: null });
      const leads = await t.sql('select * from amocrm.student_leads where user_id = $1', [user]);
      expect(leads).toHaveLength(1);
      expect(Number(leads[0]!.lead_id)).toBe(4242);
      expect(Number(leads[0]!.contact_id)).toBe(77);

      const next = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 68 });
      const claim2 = await rpc('amocrm_claim_event', { p_event_id: next.event_id, p_holder: 'B' });
      expect(claim2.claimed).toBe(true);
      expect(claim2.event.cached_lead_id).toBe(4242);

      // Forgetting the deal: the next claim has no cached lead.
      expect(await rpc('amocrm_forget_lead', { p_user_id: user, p_lead_id: 4242 })).toEqual({ forgotten: true });
      await rpc('amocrm_finish_event', { p_event_id: next.event_id, p_holder: 'B', p_outcome: 'deferred' });
      const claim3 = await rpc('amocrm_claim_event', { p_event_id: next.event_id, p_holder: 'C' });
      expect(claim3.event.cached_lead_id).toBeNull();
    });
  });

  describe('amocrm_claim_due', () => {
    it('takes due pending, due failed+retryable and expired processing; never the rest', async () => {
      // A clean outbox, so the answer is exactly the set arranged here.
      await t.sql('delete from amocrm.sync_events');
      const user = await createUser(t, uniqueEmail());
      const past = "now() - interval '5 seconds'";
      // One student per event: a student's events are claimed one at a time (tested below).
      const arrange = async (lesson: number, status: string, extra: string) => {
        const id = await insertEvent(t, { user_id: await createUser(t, uniqueEmail()), lesson_id: lesson, status });
        await t.sql(`update amocrm.sync_events set ${extra} where id = $1`, [id]);
        return id;
      };
      const take = {
        pending: await arrange(1, 'pending', `next_attempt_at = ${past}`),
        retryable: await arrange(2, 'failed', `retryable = true, next_attempt_at = ${past}`),
        expired: await arrange(3, 'processing', `lease_holder = 'gone', lease_until = ${past}, next_attempt_at = now() + interval '1 hour'`),
      };
      const leave = {
        fresh: await arrange(10, 'pending', `next_attempt_at = now() + interval '60 seconds'`),
        retryableNotYet: await arrange(11, 'failed', `retryable = true, next_attempt_at = now() + interval '60 seconds'`),
        permanent: await arrange(12, 'failed', `retryable = false, next_attempt_at = ${past}`),
        leased: await arrange(13, 'processing', `lease_holder = 'alive', lease_until = now() + interval '60 seconds', next_attempt_at = ${past}`),
        done: await arrange(14, 'done', `next_attempt_at = ${past}`),
        skipped: await arrange(15, 'skipped', `next_attempt_at = ${past}`),
        parked: await arrange(16, 'parked', `next_attempt_at = ${past}`),
        dead: await arrange(17, 'dead', `next_attempt_at = ${past}`),
      };
      // The trigger path: a freshly recorded event is not due for 60 s.
      const viaRecord = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 67 });

      const claimed = (await rpc('amocrm_claim_due', { p_holder: 'sched', p_limit: 100, p_lease_seconds: 60 })) as unknown as J[];
      expect(claimed.map((e) => e.id).sort((a, b) => a - b)).toEqual(Object.values(take).sort((a, b) => a - b));
      for (const e of claimed) expect(e).toMatchObject({ status: 'processing' });

      const after = await t.sql('select id, status, lease_holder, attempts from amocrm.sync_events order by id');
      const byId = new Map(after.map((r) => [Number(r.id), r]));
      for (const id of Object.values(take)) expect(byId.get(id)).toMatchObject({ status: 'processing', lease_holder: 'sched', attempts: 1 });
      expect(byId.get(leave.leased)).toMatchObject({ lease_holder: 'alive' });
      for (const [name, id] of Object.entries(leave)) expect(byId.get(id)!.lease_holder, name).not.toBe('sched');
      expect(byId.get(Number(viaRecord.event_id))).toMatchObject({ status: 'pending' });

      // Claimed now: a second run finds nothing.
      expect(await rpc('amocrm_claim_due', { p_holder: 'sched-2', p_limit: 100 })).toEqual([]);
    });

    it('respects p_limit, oldest due first', async () => {
      await t.sql('delete from amocrm.sync_events');
      const user = await createUser(t, uniqueEmail());
      const ids: number[] = [];
      for (let i = 0; i < 5; i += 1) {
        const id = await insertEvent(t, { user_id: i === 0 ? user : await createUser(t, uniqueEmail()), lesson_id: 100 + i, status: 'pending' });
        await t.sql(`update amocrm.sync_events set next_attempt_at = now() - make_interval(secs => $2) where id = $1`, [
          id,
          100 - i,
        ]);
        ids.push(id);
      }
      const first = (await rpc('amocrm_claim_due', { p_holder: 'a', p_limit: 2 })) as unknown as J[];
      expect(first.map((e) => e.id)).toEqual(ids.slice(0, 2));
      const rest = (await rpc('amocrm_claim_due', { p_holder: 'b', p_limit: 10 })) as unknown as J[];
      expect(rest.map((e) => e.id)).toEqual(ids.slice(2));
    });

    it("claims one event per student at a time, and none while the student's other event is in flight", async () => {
      await t.sql('delete from amocrm.sync_events');
      const user = await createUser(t, uniqueEmail());
      const other = await createUser(t, uniqueEmail());
      const ids: number[] = [];
      for (const [u, lesson] of [[user, 67], [user, 68], [other, 67]] as const) {
        const id = await insertEvent(t, { user_id: u, lesson_id: lesson, status: 'pending' });
        await t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where id = $1`, [id]);
        ids.push(id);
      }
      const first = (await rpc('amocrm_claim_due', { p_holder: 'a', p_limit: 10 })) as unknown as J[];
      expect(first.map((e) => e.id).sort((a, b) => a - b)).toEqual([ids[0], ids[2]]);
      // The student's lesson 68 waits while lesson 67 is in flight, by either path.
      expect(await rpc('amocrm_claim_due', { p_holder: 'b', p_limit: 10 })).toEqual([]);
      expect(await rpc('amocrm_claim_event', { p_event_id: ids[1], p_holder: 'webhook' })).toMatchObject({ claimed: false, reason: 'student_busy' });
      await rpc('amocrm_finish_event', { p_event_id: ids[0], p_holder: 'a', p_outcome: 'done' });
      expect(await rpc('amocrm_claim_event', { p_event_id: ids[1], p_holder: 'webhook' })).toMatchObject({ claimed: true });
    });
  });
});
