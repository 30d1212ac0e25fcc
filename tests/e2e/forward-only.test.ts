// Forward-only by construction (issue 15, item 1): a move leaves only while its event's
// claim is held; an expired holder records nothing; a move whose answer never came holds
// the student's next lesson back until amoCRM's late application of it cannot land after
// a newer move. The invariant is checked on amoCRM's own history (the stand-in's events
// feed), not on the code path.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { applyChanges } from '../../lib/db/deal-mirror.ts';
import { claimDue } from '../../lib/db/outbox.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { processEvents } from '../../lib/sync/steps.ts';
import { createStack, dbWebhookBody, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => {
  s = await createStack();
});
afterAll(async () => {
  await s?.close();
});
beforeEach(async () => {
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0;
  await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null, last_woken_at = null, started_at = null`);
});

let seq = 0;
const email = (tag: string) => `${tag}.${++seq}@forward.kz`;
const webhook = (userId: string, lesson: number) =>
  handleLessonCompleted(s.webhookRequest(dbWebhookBody(userId, lesson)), async () => s.rt).then((r) => r.json());
const TRIPWIRE: number[] = [STAGE.lesson1, STAGE.lesson2, STAGE.lesson3];

/** The deal's stages as amoCRM recorded them, oldest first. */
const stagesOf = (leadId: number) =>
  s.amo.leadEvents().filter((e) => e.entity_id === leadId && e.type === 'lead_status_changed').map((e) => e.value_after[0]!.lead_status.id);

/** Never back to an earlier Tripwire stage. */
function expectForwardOnly(leadId: number) {
  const rank = stagesOf(leadId).map((id) => TRIPWIRE.indexOf(id)).filter((i) => i >= 0);
  expect(rank, `stages of deal ${leadId}: ${stagesOf(leadId).join(' → ')}`).toEqual([...rank].sort((a, b) => a - b));
}

/** A student whose deal is at lesson 1's stage, remembered. */
async function studentAtLesson1(tag: string) {
  const st = await s.addStudent(email(tag));
  expect(await webhook(st.userId, 67)).toMatchObject({ outcome: 'done', moved: true });
  return st;
}

const due = () => s.t.sql(`update amocrm.sync_events set next_attempt_at = now(), hold_until = null where status in ('pending', 'failed')`);

describe('a claim that expires before the move', () => {
  it('the batch does not send the move; the newer lesson moved meanwhile stays; the old event is redone from a fresh read', async () => {
    const st = await studentAtLesson1('expired');
    const e68 = await s.complete(st.userId, 68);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where id = $1`, [e68]);
    const inv = s.rt.invocation(10_000);
    const [claimed] = await claimDue(s.t.db, inv.holder, 10);
    expect(claimed!.id).toBe(e68);

    // The batch has read the deal (stage 1) and is slow to reach its PATCH: its claim
    // expires, and the student's lesson 69 is delivered by a webhook meanwhile.
    let raced: unknown;
    const amo = {
      ...inv.sync.amo,
      async getLeads(ids: number[]) {
        const leads = await inv.sync.amo.getLeads(ids);
        await s.t.sql(`update amocrm.sync_events set lease_until = now() - interval '1 second' where id = $1`, [e68]);
        raced = await webhook(st.userId, 69);
        return leads;
      },
    };
    const [outcome] = await processEvents({ ...inv.sync, amo }, [claimed!], inv.holder);
    expect(raced).toMatchObject({ outcome: 'done', moved: true });
    expect(outcome).toMatchObject({ status: 'deferred', moved: false, code: 'lease_lost' });
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson3);
    expectForwardOnly(st.leadId);

    // The next claim of lesson 68 reads the deal afresh: past it, nothing moves back.
    await runDrain(s.rt, { budgetMs: 30_000, reserveMs: 1_000, lookahead: false });
    const [row] = await s.t.sql(`select status, last_error_code from amocrm.sync_events where id = $1`, [e68]);
    expect(row).toEqual({ status: 'skipped', last_error_code: 'would_move_backwards' });
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson3);
    expectForwardOnly(st.leadId);
  });

  it('an expired holder records nothing, even a done', async () => {
    const st = await s.addStudent(email('finish'));
    const id = await s.complete(st.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where id = $1`, [id]);
    await claimDue(s.t.db, 'late-holder', 10);
    await s.t.sql(`update amocrm.sync_events set lease_until = now() - interval '1 second' where id = $1`, [id]);
    const answer = await s.t.db.rpc('amocrm_finish_event', { p_event_id: id, p_holder: 'late-holder', p_outcome: 'done' });
    expect(answer).toMatchObject({ recorded: false, status: 'processing' });
  });
});

describe('a move amoCRM applies after the client gave up', () => {
  it('holds the student: the next lesson waits until the late move has landed, and the deal never goes back', async () => {
    const st = await studentAtLesson1('late');
    // amoCRM takes lesson 68's PATCH and applies it 3 s later; the client's timeout is 2 s.
    s.amo.inject('PATCH /api/v4/leads/:id', { kind: 'late', applyAfterMs: 3_000 });
    expect(await webhook(st.userId, 68)).toMatchObject({ outcome: 'retry', code: 'timeout' });
    // Lesson 69 arrives at once: its webhook must not move the deal before the late move lands.
    const answer69 = await webhook(st.userId, 69);
    expect(answer69).toMatchObject({ outcome: 'queued' });
    await expect.poll(() => s.amo.lead(st.leadId)!.statusId, { timeout: 10_000, interval: 100 }).toBe(STAGE.lesson2);
    expectForwardOnly(st.leadId);

    // Once the hold is over (made due here instead of waiting 2 minutes), both complete.
    await due();
    await runDrain(s.rt, { budgetMs: 30_000, reserveMs: 1_000, lookahead: false });
    await due();
    await runDrain(s.rt, { budgetMs: 30_000, reserveMs: 1_000, lookahead: false });
    const rows = await s.t.sql(`select lesson_id, status from amocrm.sync_events where user_id = $1 order by lesson_id`, [st.userId]);
    expect(rows).toEqual([{ lesson_id: 67, status: 'done' }, { lesson_id: 68, status: 'done' }, { lesson_id: 69, status: 'done' }]);
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson3);
    expectForwardOnly(st.leadId);
  });

  it('a hold outlives a retry that succeeds: the first request may still land late', async () => {
    const st = await studentAtLesson1('retry-ok');
    const e68 = await s.complete(st.userId, 68);
    const [row] = await s.t.sql(`select hold_until from amocrm.sync_events where id = $1`, [e68]);
    expect(row!.hold_until).toBeNull();
    s.amo.inject('PATCH /api/v4/leads/:id', { kind: 'late', applyAfterMs: 60_000 });
    expect(await webhook(st.userId, 68)).toMatchObject({ outcome: 'retry', code: 'timeout' });
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where id = $1`, [e68]);
    await runDrain(s.rt, { budgetMs: 30_000, reserveMs: 1_000, lookahead: false });
    expect((await s.event(e68)).status).toBe('done');
    // Lesson 69 still waits for the first request's hold.
    expect(await webhook(st.userId, 69)).toMatchObject({ outcome: 'queued' });
    const [held] = await s.t.sql(`select hold_until > now() + interval '60 seconds' as held from amocrm.sync_events where id = $1`, [e68]);
    expect(held!.held).toBe(true);
    s.amo.clearFaults();
  });
});

describe('a deal a manager closes after the sync read it', () => {
  it('is not moved out of won/lost when the mirror learned it before the PATCH', async () => {
    const st = await studentAtLesson1('closed-meanwhile');
    const e68 = await s.complete(st.userId, 68);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where id = $1`, [e68]);
    const inv = s.rt.invocation(10_000);
    const [claimed] = await claimDue(s.t.db, inv.holder, 10);
    // The batch has read the deal (lesson 1's stage); a manager marks it lost, and the hook
    // reaches the mirror before the batch's PATCH.
    const amo = {
      ...inv.sync.amo,
      async getLeads(ids: number[]) {
        const leads = await inv.sync.amo.getLeads(ids);
        const lost = s.amo.managerLose(st.leadId);
        await applyChanges(s.t.db, [{ lead_id: st.leadId, action: 'status', pipeline_id: lost.pipelineId, status_id: 143,
          old_pipeline_id: lost.pipelineId, old_status_id: STAGE.lesson1, modified_at: lost.updatedAt }], 'hook', s.rt.config.pipelineId!);
        return leads;
      },
    };
    const [outcome] = await processEvents({ ...inv.sync, amo }, [claimed!], inv.holder);
    expect(outcome).toMatchObject({ status: 'skipped', moved: false, code: 'deal_closed' });
    expect(s.amo.lead(st.leadId)!.statusId).toBe(143);
    expect(stagesOf(st.leadId).at(-1)).toBe(143);
  });
});
