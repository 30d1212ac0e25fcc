// Funnels as data, end to end: two funnels in two pipelines for one student (each deal found
// and moved in its own pipeline), a lesson in both funnels moving both deals, forward only
// within each funnel whatever order the lessons come in and however often they are
// replayed, and today's variables becoming the first funnel on first use. Checked on what
// amoCRM applied (the stand-in's history of each deal), not on the code path.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { applyChanges } from '../../lib/db/deal-mirror.ts';
import { currentFunnels, funnelHistory, setFunnels } from '../../lib/db/funnels.ts';
import type { Funnel } from '../../lib/funnels/model.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { runLookahead } from '../../lib/sync/lookahead.ts';
import { runReplay } from '../../lib/sync/replay.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { createStack, dbWebhookBody, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

const COURSE = 5_000_003;
const B = { incoming: 701, step1: 711, step2: 712, step3: 713, paid: 720 } as const;

const tripwire: Funnel = {
  key: 'tripwire', name: 'Tripwire', pipelineId: PIPELINE,
  steps: [{ lessons: [67], stageId: STAGE.lesson1 }, { lessons: [68], stageId: STAGE.lesson2 }, { lessons: [69], stageId: STAGE.lesson3 }],
};
// Lesson 69 is in both funnels: it moves both deals.
const course: Funnel = {
  key: 'course-b', name: 'Курс B', pipelineId: COURSE,
  steps: [{ lessons: [101], stageId: B.step1 }, { lessons: [102, 69], stageId: B.step2 }, { lessons: [103], stageId: B.step3 }],
};

let seq = 0;
const email = (tag: string) => `${tag}.${++seq}@funnels.kz`;

/** The stages amoCRM applied to a deal, oldest first, with their pipelines. */
const historyOf = (s: Stack, leadId: number) => s.amo.leadEvents()
  .filter((e) => e.entity_id === leadId && e.type === 'lead_status_changed')
  .map((e) => [e.value_after[0]!.lead_status.pipeline_id, e.value_after[0]!.lead_status.id]);

const eventsOf = (s: Stack, userId: string) =>
  s.t.sql(`select id, lesson_id, funnel_key, stage_number, status, last_error_code as code, lead_id from amocrm.sync_events
            where user_id = $1 order by id`, [userId]);

const drain = (s: Stack) => runDrain(s.rt, { budgetMs: 30_000, reserveMs: 1_000, lookahead: false });
const dueNow = (s: Stack) => s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status in ('pending', 'failed')`);

describe('two funnels in two pipelines', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await createStack();
    s.amo.addPipeline({
      id: COURSE, name: 'Курс B',
      statuses: [{ id: B.incoming, name: 'Новая заявка', sort: 10 }, { id: B.step1, name: 'B: урок 1', sort: 20 },
        { id: B.step2, name: 'B: урок 2', sort: 30 }, { id: B.step3, name: 'B: урок 3', sort: 40 }, { id: B.paid, name: 'Оплата', sort: 50 }],
    });
    await s.t.sql(`insert into public.lessons (id, module_id, title) values (101, 12, 'B1'), (102, 12, 'B2'), (103, 12, 'B3')`);
    await s.storeTokens();
    expect(await setFunnels(s.t.db, { funnels: [tripwire, course], changedBy: 'test', expectedVersion: 0 })).toEqual({ saved: true, version: 1 });
  });
  afterAll(async () => { await s?.close(); });
  beforeEach(async () => {
    s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0;
    await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  });

  /** A student whose one contact has a deal in each pipeline, at its incoming stage. */
  const twoDeals = async (tag: string) => {
    const st = await s.addStudent(email(tag), { leads: [{ statusId: STAGE.incoming, pipelineId: PIPELINE }, { statusId: B.incoming, pipelineId: COURSE }] });
    const [tripwireLead, courseLead] = st.leadIds as [number, number];
    return { ...st, tripwireLead, courseLead };
  };

  it('each funnel finds the student\'s deal in its own pipeline and moves it there; a lesson in both moves both', async () => {
    const st = await twoDeals('both');
    await s.complete(st.userId, 67);
    await s.complete(st.userId, 101);
    await dueNow(s);
    await drain(s);
    await dueNow(s); // one event per student per batch: the second funnel's goes next
    await drain(s);
    expect(s.amo.lead(st.tripwireLead)!.statusId).toBe(STAGE.lesson1);
    expect(s.amo.lead(st.courseLead)!.statusId).toBe(B.step1);
    const remembered = await s.t.sql(`select pipeline_id, lead_id from amocrm.student_leads where user_id = $1 order by pipeline_id`, [st.userId]);
    expect(remembered.map((r) => [Number(r.pipeline_id), Number(r.lead_id)])).toEqual([[PIPELINE, st.tripwireLead], [COURSE, st.courseLead]]);

    // Lesson 69: one event per funnel, each delivered by its own webhook.
    await s.t.asRole('authenticated', 'insert into public.lesson_progress (user_id, lesson_id) values ($1, 69)', [st.userId], st.userId);
    const of69 = (await eventsOf(s, st.userId)).filter((e) => e.lesson_id === 69);
    expect(of69.map((e) => [e.funnel_key, e.stage_number])).toEqual([['tripwire', 3], ['course-b', 2]]);
    for (const e of of69) {
      const answer = await handleLessonCompleted(s.webhookRequest({ ...dbWebhookBody(st.userId, 69), event_id: Number(e.id) }), async () => s.rt);
      expect(await answer.json()).toMatchObject({ outcome: 'done', moved: true });
    }
    expect(historyOf(s, st.tripwireLead)).toEqual([[PIPELINE, STAGE.lesson1], [PIPELINE, STAGE.lesson3]]);
    expect(historyOf(s, st.courseLead)).toEqual([[COURSE, B.step1], [COURSE, B.step2]]);
    expect((await eventsOf(s, st.userId)).map((e) => [e.lesson_id, e.funnel_key, e.status, Number(e.lead_id)])).toEqual([
      [67, 'tripwire', 'done', st.tripwireLead], [101, 'course-b', 'done', st.courseLead],
      [69, 'tripwire', 'done', st.tripwireLead], [69, 'course-b', 'done', st.courseLead]]);
  });

  it('a plain Database Webhook for a lesson in both funnels records and moves both deals', async () => {
    const st = await twoDeals('dbhook');
    const answer = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(st.userId, 69)), async () => s.rt);
    expect(await answer.json()).toMatchObject({ outcome: 'done', moved: true });
    expect(historyOf(s, st.tripwireLead)).toEqual([[PIPELINE, STAGE.lesson3]]);
    expect(historyOf(s, st.courseLead)).toEqual([[COURSE, B.step2]]);
    expect((await eventsOf(s, st.userId)).map((e) => [e.funnel_key, e.status])).toEqual([['tripwire', 'done'], ['course-b', 'done']]);
  });

  it('forward only within each funnel: B\'s step 2 before its step 1, and a forced replay of the older step, never move B\'s deal back', async () => {
    const st = await twoDeals('reorder');
    await s.complete(st.userId, 67);
    await s.complete(st.userId, 102);
    for (let i = 0; i < 2; i++) { await dueNow(s); await drain(s); }
    await s.complete(st.userId, 101);
    await dueNow(s);
    await drain(s);
    const events = await eventsOf(s, st.userId);
    expect(events.map((e) => [e.lesson_id, e.status, e.code])).toEqual([[67, 'done', null], [102, 'done', null], [101, 'skipped', 'would_move_backwards']]);
    expect(s.amo.lead(st.courseLead)!.statusId).toBe(B.step2);

    // Replays of the older step, forced too: still nothing moves back.
    const e101 = Number(events[2]!.id);
    await runReplay(s.rt, { ids: [e101], force: true, limit: 50, dryRun: false, afterId: 0 });
    const e102 = Number(events[1]!.id);
    await runReplay(s.rt, { ids: [e102], force: true, limit: 50, dryRun: false, afterId: 0 });
    await runReplay(s.rt, { ids: [e101], force: true, limit: 50, dryRun: false, afterId: 0 });
    expect(historyOf(s, st.courseLead)).toEqual([[COURSE, B.step2]]);
    expect(historyOf(s, st.tripwireLead)).toEqual([[PIPELINE, STAGE.lesson1]]);
    // The Tripwire deal is further in its own funnel than B's step 1 says nothing about.
    expect(s.amo.lead(st.tripwireLead)!.statusId).toBe(STAGE.lesson1);
  });

  it('a deal past the funnel\'s stages in its pipeline is left alone; the other funnel\'s deal still moves', async () => {
    const st = await s.addStudent(email('past'), { leads: [{ statusId: STAGE.lesson1, pipelineId: PIPELINE }, { statusId: B.paid, pipelineId: COURSE }] });
    const [tripwireLead, courseLead] = st.leadIds as [number, number];
    await s.complete(st.userId, 101);
    await s.complete(st.userId, 68);
    for (let i = 0; i < 2; i++) { await dueNow(s); await drain(s); }
    expect((await eventsOf(s, st.userId)).map((e) => [e.lesson_id, e.status, e.code])).toEqual([[101, 'skipped', 'past_tripwire'], [68, 'done', null]]);
    expect(s.amo.lead(courseLead)!.statusId).toBe(B.paid);
    expect(s.amo.lead(tripwireLead)!.statusId).toBe(STAGE.lesson2);
  });

  it('amoCRM\'s change of a deal in the second funnel\'s pipeline keeps it remembered; leaving that pipeline forgets it', async () => {
    const st = await twoDeals('mirror');
    await s.complete(st.userId, 101);
    await dueNow(s);
    await drain(s);
    const remembered = () => s.t.sql(`select pipeline_id from amocrm.student_leads where user_id = $1 order by pipeline_id`, [st.userId])
      .then((rows) => rows.map((r) => Number(r.pipeline_id)));
    expect(await remembered()).toEqual([COURSE]);
    const at = Math.floor(Date.now() / 1000);
    // The mirror is told with the Tripwire pipeline as AMOCRM_PIPELINE_ID, as the sync calls it.
    await applyChanges(s.t.db, [{ lead_id: st.courseLead, action: 'status', pipeline_id: COURSE, status_id: B.step3, old_status_id: B.step1, modified_at: at }], 'feed', PIPELINE);
    expect(await remembered()).toEqual([COURSE]);
    await applyChanges(s.t.db, [{ lead_id: st.courseLead, action: 'status', pipeline_id: PIPELINE, status_id: STAGE.incoming, old_pipeline_id: COURSE, old_status_id: B.step3, modified_at: at + 1 }], 'feed', PIPELINE);
    expect(await remembered()).toEqual([]);
  });

  it('look-ahead remembers the student\'s deal in every funnel\'s pipeline', async () => {
    await s.t.sql(`update amocrm.system_settings set value = 'true' where key = 'lookahead_enabled'`);
    try {
      const st = await s.addStudent(email('ahead'), { leads: [{ statusId: STAGE.incoming, pipelineId: PIPELINE }, { statusId: B.incoming, pipelineId: COURSE }] });
      await s.t.sql(`update amocrm.lookahead_jobs set next_attempt_at = now() where user_id <> $1`, [st.userId]);
      await s.t.sql(`update amocrm.lookahead_jobs set status = 'failed' where user_id <> $1`, [st.userId]);
      expect(await runLookahead(s.rt)).toMatchObject({ found: 1 });
      const remembered = await s.t.sql(`select pipeline_id, lead_id from amocrm.student_leads where user_id = $1 order by pipeline_id`, [st.userId]);
      expect(remembered.map((r) => [Number(r.pipeline_id), Number(r.lead_id)])).toEqual([[PIPELINE, st.leadIds[0]], [COURSE, st.leadIds[1]]]);
    } finally {
      await s.t.sql(`update amocrm.system_settings set value = 'false' where key = 'lookahead_enabled'`);
    }
  });
});

describe('today\'s variables become the first funnel', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await createStack();
    await s.storeTokens();
  });
  afterAll(async () => { await s?.close(); });

  it('with no funnel saved, the first event saves them as version 1 (changed_by env) and moves the deal as before', async () => {
    expect(await currentFunnels(s.t.db)).toBeNull();
    const st = await s.addStudent(email('env'));
    const eventId = await s.complete(st.userId, 67);
    const answer = await handleLessonCompleted(s.webhookRequest({ ...dbWebhookBody(st.userId, 67), event_id: eventId }), async () => s.rt);
    expect(await answer.json()).toMatchObject({ outcome: 'done', moved: true });
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson1);
    expect(await funnelHistory(s.t.db)).toEqual([expect.objectContaining({ version: 1, changedBy: 'env', funnels: [tripwire] })]);
    // The scheduled run finds it saved: no second version.
    await runSweep(s.rt, { budgetMs: 5_000 });
    expect(await funnelHistory(s.t.db)).toHaveLength(1);
  });
});
