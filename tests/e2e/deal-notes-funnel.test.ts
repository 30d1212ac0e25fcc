// Notes and tasks as a funnel's steps ask for them, through the real paths: the webhook, the
// drain, a duplicate delivery, a forced replay, a move whose answer was lost. Exactly one note
// and one task per event in amoCRM (the stand-in's record), none for a step that asks for none.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { setFunnels } from '../../lib/db/funnels.ts';
import type { Funnel } from '../../lib/funnels/model.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { replayRequestSchema, runReplay } from '../../lib/sync/replay.ts';
import { createStack, dbWebhookBody, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

const tripwire: Funnel = {
  key: 'tripwire', name: 'Tripwire', pipelineId: PIPELINE,
  steps: [
    { lessons: [67], stageId: STAGE.lesson1, note: true, task: { text: 'Позвонить: прошёл урок 1', dueMinutes: 60 } },
    { lessons: [68], stageId: STAGE.lesson2, note: true },
    { lessons: [69], stageId: STAGE.lesson3 },
  ],
};

let s: Stack;
beforeAll(async () => {
  s = await createStack();
  await s.storeTokens();
  expect(await setFunnels(s.t.db, { funnels: [tripwire], changedBy: 'test', expectedVersion: 0 })).toMatchObject({ saved: true });
});
afterAll(async () => {
  await s?.close();
});
beforeEach(async () => {
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0;
  await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  await s.t.sql(`update amocrm.deal_notes set status = 'failed' where status in ('pending', 'sending')`);
});

let seq = 0;
const email = () => `funnel-notes.${++seq}.${Date.now().toString(36)}@notes.kz`;
const webhook = (userId: string, lesson: number) => handleLessonCompleted(s.webhookRequest(dbWebhookBody(userId, lesson)), async () => s.rt);
const drain = async () => {
  await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status in ('pending', 'failed')`);
  await s.t.sql(`update amocrm.deal_notes set next_attempt_at = now() where status = 'pending'`);
  return runDrain(s.rt, { budgetMs: 30_000, reserveMs: 1_000, lookahead: false });
};
const counts = (leadId: number) => [s.amo.notes(leadId).length, s.amo.tasks(leadId).length];

describe('a funnel step asks for a note and a task', () => {
  it('a lesson moved by its webhook, delivered twice: one move, one note, one task (sent by the next drain)', async () => {
    const st = await s.addStudent(email());
    await s.complete(st.userId, 67);
    await Promise.all([webhook(st.userId, 67), webhook(st.userId, 67)]);
    await webhook(st.userId, 67);
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson1);
    await drain();
    await drain();
    expect(counts(st.leadId)).toEqual([1, 1]);
    expect(s.amo.notes(st.leadId)[0]!.text).toMatch(/^Студент прошёл урок 1 «Урок 1\. Что умеет AI» \d\d\.\d\d \d\d:\d\d$/);
    expect(s.amo.tasks(st.leadId)[0]!.text).toBe('Позвонить: прошёл урок 1');
  });

  it('a step with a note only, and a step with neither', async () => {
    const st = await s.addStudent(email());
    await s.complete(st.userId, 67);
    await drain();
    await s.complete(st.userId, 68);
    await drain();
    await s.complete(st.userId, 69);
    await drain();
    await drain();
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson3);
    expect(s.amo.notes(st.leadId).map((n) => n.text.split(' «')[0])).toEqual(['Студент прошёл урок 1', 'Студент прошёл урок 2']);
    expect(s.amo.tasks(st.leadId)).toHaveLength(1);
  });

  it('a forced replay of a done event adds nothing', async () => {
    const st = await s.addStudent(email());
    const id = await s.complete(st.userId, 67);
    await drain();
    expect(counts(st.leadId)).toEqual([1, 1]);
    const replayed = await runReplay(s.rt, replayRequestSchema.parse({ ids: [id], force: true }));
    expect(replayed).toMatchObject({ replayed: 1, results: [{ id, before: 'done', outcome: 'done' }] });
    await drain();
    await drain();
    expect((await s.event(id)).status).toBe('done');
    expect(counts(st.leadId)).toEqual([1, 1]);
  });

  it('a move amoCRM applied but whose answer was lost: the retry finds the deal moved, and the note still comes, once', async () => {
    const st = await s.addStudent(email());
    const id = await s.complete(st.userId, 67);
    s.amo.inject('PATCH /api/v4/leads/:id', { kind: 'after', status: 504 });
    s.amo.inject('PATCH /api/v4/leads', { kind: 'after', status: 504 });
    await drain();
    expect(s.amo.lead(st.leadId)!.statusId).toBe(STAGE.lesson1);
    expect((await s.event(id)).status).not.toBe('done');
    await s.t.sql(`update amocrm.sync_events set hold_until = null where id = $1`, [id]);
    await drain();
    await drain();
    expect((await s.event(id)).status).toBe('done');
    expect(counts(st.leadId)).toEqual([1, 1]);
  });
});
