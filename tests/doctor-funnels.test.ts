// The doctor checks every funnel in force with the checks a change must pass: each saved
// funnel is one ✅ line with its steps, or one ❌ line per problem amoCRM or the lessons
// have with it now (a stage deleted or reordered since, a lesson archived since), with what
// to fix; before anything is saved, the funnel the variables give is checked the same way.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { setFunnels } from '../lib/db/funnels.ts';
import type { Funnel } from '../lib/funnels/model.ts';
import { exitCodeOf, formatCheck, runDoctor, type CheckResult } from '../lib/ops/doctor/index.ts';
import { createStack, PIPELINE, STAGE, type Stack } from './helpers/stack.ts';

const COURSE_PIPELINE = 5_000_004;
const course = (statuses = [
  { id: 801, name: 'Записался', sort: 10 },
  { id: 811, name: 'Прошёл модуль 1', sort: 20 },
  { id: 812, name: 'Прошёл модуль 2', sort: 30 },
]) => ({ id: COURSE_PIPELINE, name: 'Курс', statuses });

const FUNNELS: Funnel[] = [
  { key: 'tripwire', name: 'Tripwire', pipelineId: PIPELINE, steps: [{ lessons: [67], stageId: STAGE.lesson1 }, { lessons: [68, 69], stageId: STAGE.lesson3 }] },
  { key: 'course', name: 'Курс', pipelineId: COURSE_PIPELINE, steps: [{ lessons: [66], stageId: 811 }, { lessons: [70], stageId: 812, note: true }] },
];

const lines = (results: CheckResult[], check: string) => results.filter((r) => r.check === check).map(formatCheck);

let s: Stack;
beforeAll(async () => {
  s = await createStack();
  await s.storeTokens();
  s.amo.addPipeline(course());
});
afterAll(async () => {
  await s?.close();
});

describe('doctor: funnels', () => {
  it('nothing saved: the variables\' funnel is checked, ✅, and nothing is saved by the doctor', async () => {
    const fresh = await createStack();
    try {
      await fresh.storeTokens();
      const results = await runDoctor({ env: fresh.env, db: fresh.t.db });
      expect(lines(results, 'funnel tripwire')).toEqual([
        `✅ funnel tripwire: 'Tripwire' in 'Tripwire' (${PIPELINE}), from the variables, saved on the first event: 67 → ${STAGE.lesson1} 'Урок 1 пройден', 68 → ${STAGE.lesson2} 'Урок 2 пройден', 69 → ${STAGE.lesson3} 'Урок 3 пройден'`,
      ]);
      expect(await fresh.t.sql('select version from amocrm.funnel_versions')).toEqual([]);
    } finally {
      await fresh.close();
    }
  });

  it('every saved funnel: one ✅ line each; a stage deleted, then reordered, in amoCRM is ❌ with what to fix', async () => {
    const saved = await setFunnels(s.t.db, { funnels: FUNNELS, changedBy: 'test', expectedVersion: await currentVersion() });
    expect(saved.saved).toBe(true);
    const version = saved.saved ? saved.version : 0;
    const fine = await runDoctor({ env: s.env, db: s.t.db });
    expect(lines(fine, 'funnel tripwire')).toEqual([`✅ funnel tripwire: 'Tripwire' in 'Tripwire' (${PIPELINE}), version ${version}: 67 → ${STAGE.lesson1} 'Урок 1 пройден', 68+69 → ${STAGE.lesson3} 'Урок 3 пройден'`]);
    expect(lines(fine, 'funnel course')).toEqual([`✅ funnel course: 'Курс' in 'Курс' (${COURSE_PIPELINE}), version ${version}: 66 → 811 'Прошёл модуль 1', 70 → 812 'Прошёл модуль 2'`]);
    const othersFailing = fine.filter((r) => r.status === 'fail').map((r) => r.check);
    expect(othersFailing.filter((c) => c.startsWith('funnel'))).toEqual([]);
    try {
      s.amo.addPipeline(course([{ id: 801, name: 'Записался', sort: 10 }, { id: 811, name: 'Прошёл модуль 1', sort: 20 }]));
      const deleted = await runDoctor({ env: s.env, db: s.t.db });
      expect(lines(deleted, 'funnel course')).toEqual([
        `❌ funnel course: шаг 2: этапа 812 нет ни в одной воронке amoCRM → выберите этап воронки amoCRM ${COURSE_PIPELINE} «Курс»; список воронок и этапов: npm run amocrm -- pipelines; fix the funnel and save it: npm run amocrm -- funnels set <file.json> (or roll back: funnels history)`,
      ]);
      expect(lines(deleted, 'funnel tripwire')[0]).toMatch(/^✅ /);
      expect(exitCodeOf(deleted)).toBe(1);
      expect(deleted.filter((r) => r.status === 'fail').map((r) => r.check)).toEqual([...othersFailing, 'funnel course']);

      s.amo.addPipeline(course([{ id: 801, name: 'Записался', sort: 10 }, { id: 812, name: 'Прошёл модуль 2', sort: 20 }, { id: 811, name: 'Прошёл модуль 1', sort: 30 }]));
      const reordered = lines(await runDoctor({ env: s.env, db: s.t.db }), 'funnel course');
      expect(reordered).toHaveLength(1);
      expect(reordered[0]).toMatch(/^❌ funnel course: шаг 2: этап 812 «Прошёл модуль 2» стоит в amoCRM раньше этапа шага 1 811 «Прошёл модуль 1» → /);
    } finally {
      s.amo.addPipeline(course());
    }
  });

  it('a lesson archived since the funnel was saved: one ❌ line per problem, naming the funnel and step', async () => {
    const saved = await setFunnels(s.t.db, { funnels: FUNNELS, changedBy: 'test', expectedVersion: await currentVersion() });
    expect(saved.saved).toBe(true);
    await s.t.sql('update public.lessons set is_archived = true where id in (66, 69)');
    try {
      const results = await runDoctor({ env: s.env, db: s.t.db });
      expect(lines(results, 'funnel course')).toEqual([expect.stringMatching(/^❌ funnel course: шаг 1: урок 66 «Вводный урок» в архиве → /)]);
      expect(lines(results, 'funnel tripwire')).toEqual([expect.stringMatching(/^❌ funnel tripwire: шаг 2: урок 69 «Урок 3\. Автоматизация» в архиве → /)]);
    } finally {
      await s.t.sql('update public.lessons set is_archived = false where id in (66, 69)');
    }
  });
});

async function currentVersion(): Promise<number> {
  const [row] = await s.t.sql('select coalesce(max(version), 0)::int as v from amocrm.funnel_versions');
  return row!.v as number;
}
