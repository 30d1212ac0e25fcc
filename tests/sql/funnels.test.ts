// Funnels as data (20261208001100): versions with who and when, a stale editor refused, a
// rollback, today's environment saved as version 1 on first use, the lesson trigger
// following the funnels, and the academy's lessons as the checks read them.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { currentFunnels, ensureFunnels, funnelHistory, lessonFacts, rollbackFunnels, setFunnels } from '../../lib/db/funnels.ts';
import type { Funnel } from '../../lib/funnels/model.ts';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';
import { completeLesson, createUser, eventsOf, uniqueEmail } from './support.ts';

const ENV = { pipelineId: 7000001, stageIds: [70011, 70012, 70013] };
const tripwire = (stages = ENV.stageIds): Funnel => ({
  key: 'tripwire', name: 'Tripwire', pipelineId: ENV.pipelineId,
  steps: [{ lessons: [67], stageId: stages[0]! }, { lessons: [68], stageId: stages[1]! }, { lessons: [69], stageId: stages[2]! }],
});
const course: Funnel = {
  key: 'course-b', name: 'Course B', pipelineId: 7000002,
  steps: [{ lessons: [101], stageId: 80011 }, { lessons: [102, 103], stageId: 80012 }],
};

let t: TestDatabase;
beforeEach(async () => {
  t = await createTestDatabase();
  await t.sql(`insert into public.lessons (id, module_id, title) values (101, 12, 'B1'), (102, 12, 'B2'), (103, 12, 'B3')`);
});
afterEach(async () => { await t?.close(); });

const triggerLessons = async () => {
  const [row] = await t.sql(`select pg_get_triggerdef(oid) as def from pg_trigger where tgname = 'amocrm_lesson_completed'`);
  return (String(row!.def).match(/'\{([0-9,]*)\}'/)?.[1] ?? '').split(',').filter(Boolean).map(Number);
};

describe('the configuration in versions', () => {
  it('none saved: null; the first use saves today\'s environment as version 1 once, changed_by env', async () => {
    expect(await currentFunnels(t.db)).toBeNull();
    const [a, b] = await Promise.all([ensureFunnels(t.db, ENV), ensureFunnels(t.db, { pipelineId: 1, stageIds: [1, 2, 3] })]);
    expect(a.version).toBe(1);
    expect(b).toEqual(a);
    expect(a.changedBy).toBe('env');
    expect(a.funnels).toEqual([tripwire()]);
    expect(await funnelHistory(t.db)).toHaveLength(1);
    expect(await triggerLessons()).toEqual([67, 68, 69]);
  });

  it('a stale expected version is refused and nothing changes', async () => {
    await ensureFunnels(t.db, ENV);
    const first = await setFunnels(t.db, { funnels: [tripwire(), course], changedBy: 'ann', expectedVersion: 1, note: 'курс B' });
    expect(first).toEqual({ saved: true, version: 2 });
    const stale = await setFunnels(t.db, { funnels: [course], changedBy: 'bob', expectedVersion: 1 });
    expect(stale).toMatchObject({ saved: false, reason: 'version_conflict', currentVersion: 2 });
    const now = await currentFunnels(t.db);
    expect(now).toMatchObject({ version: 2, changedBy: 'ann', note: 'курс B', funnels: [tripwire(), course] });
    expect((await funnelHistory(t.db)).map((v) => [v.version, v.changedBy])).toEqual([[2, 'ann'], [1, 'env']]);
    expect(await triggerLessons()).toEqual([67, 68, 69, 101, 102, 103]);
  });

  it('a broken shape is refused whoever calls: nothing saved', async () => {
    const bad = [{ ...course, steps: [{ lessons: [101], stageId: 1 }, { lessons: [101], stageId: 2 }] }];
    expect(await setFunnels(t.db, { funnels: bad, changedBy: 'ann', expectedVersion: 0 })).toMatchObject({ saved: false, reason: 'invalid' });
    expect(await setFunnels(t.db, { funnels: [course, course], changedBy: 'ann', expectedVersion: 0 })).toMatchObject({ saved: false, reason: 'invalid' });
    expect(await currentFunnels(t.db)).toBeNull();
  });

  it('a rollback saves the old steps as a new version and the trigger takes back its lessons', async () => {
    await ensureFunnels(t.db, ENV);
    await setFunnels(t.db, { funnels: [course], changedBy: 'ann', expectedVersion: 1 });
    expect(await triggerLessons()).toEqual([101, 102, 103]);
    expect(await rollbackFunnels(t.db, 1, 'bob')).toEqual({ saved: true, version: 3 });
    expect(await currentFunnels(t.db)).toMatchObject({ version: 3, changedBy: 'bob', funnels: [tripwire()] });
    expect(await triggerLessons()).toEqual([67, 68, 69]);
    expect(await rollbackFunnels(t.db, 9, 'bob')).toMatchObject({ saved: false, reason: 'unknown_version' });
  });

  it('the trigger records a new funnel\'s lesson from the next completion on', async () => {
    await ensureFunnels(t.db, ENV);
    const user = await createUser(t, uniqueEmail('newfunnel'));
    await completeLesson(t, user, 102);
    expect(await eventsOf(t, user)).toHaveLength(0);
    await setFunnels(t.db, { funnels: [tripwire(), course], changedBy: 'ann', expectedVersion: 1 });
    await completeLesson(t, user, 103);
    const events = await eventsOf(t, user);
    expect(events.map((e) => [e.lesson_id, e.funnel_key, e.stage_number])).toEqual([[103, 'course-b', 2]]);
  });
});

describe('today\'s tripwire_lessons setting', () => {
  it('keeps working while the version in force is the environment\'s; an editor\'s version replaces it', async () => {
    await ensureFunnels(t.db, ENV);
    await t.sql(`update amocrm.system_settings set value = value || '{"70": 3}' where key = 'tripwire_lessons'`);
    expect(await triggerLessons()).toEqual([67, 68, 69, 70]);
    const user = await createUser(t, uniqueEmail('setting'));
    await completeLesson(t, user, 70);
    expect((await eventsOf(t, user)).map((e) => [e.lesson_id, e.funnel_key, e.stage_number])).toEqual([[70, 'tripwire', 3]]);

    await setFunnels(t.db, { funnels: [course], changedBy: 'ann', expectedVersion: 1 });
    await t.sql(`update amocrm.system_settings set value = value || '{"66": 1}' where key = 'tripwire_lessons'`);
    expect(await triggerLessons()).toEqual([101, 102, 103]);
    await completeLesson(t, user, 66);
    await completeLesson(t, user, 101);
    expect((await eventsOf(t, user)).map((e) => [e.lesson_id, e.funnel_key])).toEqual([[70, 'tripwire'], [101, 'course-b']]);
  });
});

describe.runIf(usingPostgres)('two editors at once (PostgreSQL)', () => {
  it('on the same version: exactly one is saved, the other refused', async () => {
    await ensureFunnels(t.db, ENV);
    const dbs = await Promise.all([t.newDb(2), t.newDb(2)]);
    const answers = await Promise.all(dbs.map((db, i) => setFunnels(db, { funnels: i ? [course] : [tripwire(), course], changedBy: `editor${i}`, expectedVersion: 1 })));
    expect(answers.filter((a) => a.saved)).toHaveLength(1);
    expect(answers.filter((a) => !a.saved)).toEqual([expect.objectContaining({ reason: 'version_conflict', currentVersion: 2 })]);
    expect((await funnelHistory(t.db)).map((v) => v.version)).toEqual([2, 1]);
  });
});

describe('the academy\'s lessons', () => {
  it('each lesson: exists, title, archived, in the order asked', async () => {
    await t.sql(`update public.lessons set is_archived = true where id = 68`);
    expect(await lessonFacts(t.db, [68, 67, 5])).toEqual([
      { id: 68, exists: true, title: 'Урок 2. Первый ассистент', is_archived: true },
      { id: 67, exists: true, title: 'Урок 1. Что умеет AI', is_archived: false },
      { id: 5, exists: false, title: null, is_archived: null }]);
  });
});
