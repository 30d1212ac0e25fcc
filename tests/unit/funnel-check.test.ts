// The funnel checks: a valid configuration passes, and every way a configuration can be
// broken against amoCRM's pipelines or the academy's lessons is refused with a problem that
// names the funnel and the step and says what to fix.
import { describe, expect, it } from 'vitest';
import { checkFunnels, formatProblem, lessonsOf, type LessonFact, type PipelineFacts } from '../../lib/funnels/check.ts';
import type { Funnel } from '../../lib/funnels/model.ts';

const PIPELINES: PipelineFacts[] = [
  {
    id: 7000001, name: 'Tripwire',
    statuses: [
      { id: 70001, name: 'Новая заявка', sort: 10 },
      { id: 70011, name: 'Урок 1 пройден', sort: 20 },
      { id: 70012, name: 'Урок 2 пройден', sort: 30 },
      { id: 70013, name: 'Урок 3 пройден', sort: 40 },
      { id: 142, name: 'Успешно реализовано', sort: 10000 },
      { id: 143, name: 'Закрыто и не реализовано', sort: 11000 },
    ],
  },
  {
    id: 7000002, name: 'Партнёры',
    statuses: [
      { id: 80000, name: 'Неразобранное', sort: 10, type: 1 },
      { id: 80001, name: 'Новый партнёр', sort: 20, type: 0 },
      { id: 80002, name: 'Партнёр прошёл урок', sort: 30, type: 0 },
      { id: 142, name: 'Успешно реализовано', sort: 10000 },
      { id: 143, name: 'Закрыто и не реализовано', sort: 11000 },
    ],
  },
];

const LESSONS: LessonFact[] = [
  { id: 67, exists: true, title: 'Урок 1', is_archived: false },
  { id: 68, exists: true, title: 'Урок 2', is_archived: false },
  { id: 69, exists: true, title: 'Урок 3', is_archived: false },
  { id: 70, exists: true, title: 'Старый урок', is_archived: true },
  { id: 71, exists: false, title: null, is_archived: null },
  { id: 90, exists: true, title: 'Партнёрский урок', is_archived: false },
];

const tripwire = (): Funnel => ({
  key: 'tripwire', name: 'Tripwire', pipelineId: 7000001,
  steps: [
    { lessons: [67], stageId: 70011 },
    { lessons: [68], stageId: 70012, note: true },
    { lessons: [69], stageId: 70013, task: { text: 'Позвонить: прошёл урок 3', dueMinutes: 60 } },
  ],
});
const partners = (): Funnel => ({ key: 'partners', name: 'Партнёры', pipelineId: 7000002, steps: [{ lessons: [90, 67], stageId: 80002 }] });

const check = (funnels: Funnel[]) => checkFunnels(funnels, PIPELINES, LESSONS);
/** The one problem a change causes, as the operator reads it. */
const only = (funnels: Funnel[]) => {
  const problems = check(funnels);
  expect(problems, JSON.stringify(problems)).toHaveLength(1);
  return { ...problems[0]!, line: formatProblem(problems[0]!) };
};

describe('checkFunnels', () => {
  it('passes a valid configuration of two funnels, one lesson in both', () => {
    expect(check([tripwire(), partners()])).toEqual([]);
    expect(lessonsOf([tripwire(), partners()])).toEqual([67, 68, 69, 90]);
  });

  it('refuses an unknown pipeline, naming the pipelines there are', () => {
    const p = only([{ ...tripwire(), pipelineId: 7000099 }]);
    expect(p.funnel).toBe('tripwire');
    expect(p.step).toBeUndefined();
    expect(p.line).toMatch(/^воронка «tripwire»: воронки amoCRM 7000099 нет в аккаунте \(есть: 7000001 «Tripwire», 7000002 «Партнёры»\) → укажите pipelineId/);
  });

  it('refuses an unknown stage', () => {
    const f = tripwire();
    f.steps[1]!.stageId = 79999;
    const p = only([f]);
    expect(p.step).toBe(2);
    expect(p.line).toMatch(/^воронка «tripwire», шаг 2: этапа 79999 нет ни в одной воронке amoCRM → выберите этап воронки amoCRM 7000001 «Tripwire»/);
  });

  it('refuses a stage of another pipeline', () => {
    const f = tripwire();
    f.steps[2]!.stageId = 80002;
    const p = only([f]);
    expect(p.step).toBe(3);
    expect(p.problem).toBe('этап 80002 из другой воронки amoCRM: 7000002 «Партнёры»');
  });

  it.each([[142, 'успешно реализовано'], [143, 'закрыто и не реализовано']])('refuses the closing stage %i', (stageId, label) => {
    const f = tripwire();
    f.steps[2]!.stageId = stageId;
    const p = only([f]);
    expect(p.step).toBe(3);
    expect(p.problem).toContain(`системный «${label}»`);
  });

  it('refuses amoCRM\'s unsorted stage', () => {
    const p = only([{ ...partners(), steps: [{ lessons: [90], stageId: 80000 }] }]);
    expect(p).toMatchObject({ funnel: 'partners', step: 1 });
    expect(p.problem).toMatch(/этап 80000 «Неразобранное» — входящий этап/);
  });

  it('refuses the incoming (first) stage of a pipeline without an unsorted one', () => {
    const f = tripwire();
    f.steps.unshift({ lessons: [90], stageId: 70001 });
    const p = only([f]);
    expect(p.step).toBe(1);
    expect(p.problem).toMatch(/этап 70001 «Новая заявка» — входящий этап/);
  });

  it('refuses steps out of amoCRM\'s stage order, and the same stage twice', () => {
    const swapped = tripwire();
    [swapped.steps[1]!.stageId, swapped.steps[2]!.stageId] = [70013, 70012];
    const p = only([swapped]);
    expect(p.step).toBe(3);
    expect(p.problem).toBe('этап 70012 «Урок 2 пройден» стоит в amoCRM раньше этапа шага 2 70013 «Урок 3 пройден»');

    const repeated = tripwire();
    repeated.steps[2]!.stageId = 70012;
    expect(only([repeated]).problem).toBe('этап 70012 «Урок 2 пройден» тот же, что у шага 2');
  });

  it('refuses a lesson that does not exist, and one the facts do not mention', () => {
    const f = tripwire();
    f.steps[0]!.lessons = [67, 71];
    expect(only([f]).line).toMatch(/^воронка «tripwire», шаг 1: урока 71 нет в public\.lessons → /);
    f.steps[0]!.lessons = [67, 555];
    expect(only([f]).problem).toBe('урока 555 нет в public.lessons');
  });

  it('refuses an archived lesson', () => {
    const f = tripwire();
    f.steps[1]!.lessons = [68, 70];
    const p = only([f]);
    expect(p.step).toBe(2);
    expect(p.problem).toBe('урок 70 «Старый урок» в архиве');
  });

  it('refuses a lesson twice in one funnel (in one step or two)', () => {
    const f = tripwire();
    f.steps[2]!.lessons = [69, 67];
    expect(only([f]).line).toMatch(/^воронка «tripwire», шаг 3: урок 67 уже есть в шаге 1 → /);
    const g = tripwire();
    g.steps[0]!.lessons = [67, 67];
    expect(only([g]).step).toBe(1);
  });

  it('refuses duplicate keys', () => {
    const p = only([tripwire(), { ...partners(), key: 'tripwire' }]);
    expect(p.line).toBe('воронка «tripwire»: ключ «tripwire» уже у воронки №1 → дайте каждой воронке свой ключ');
  });

  it('refuses a task without text', () => {
    const f = tripwire();
    f.steps[2]!.task = { text: '  ', dueMinutes: 30 };
    const p = only([f]);
    expect(p.step).toBe(3);
    expect(p.problem).toBe('у задачи нет текста');
  });

  it.each([0, -15, Number.NaN])('refuses a task due in %s minutes', (dueMinutes) => {
    const f = tripwire();
    f.steps[0]!.task = { text: 'Позвонить', dueMinutes };
    const p = only([f]);
    expect(p.step).toBe(1);
    expect(p.problem).toMatch(/^срок задачи .* мин — не положительное число$/);
  });

  it('refuses a funnel without steps and a step without lessons', () => {
    expect(only([{ ...tripwire(), steps: [] }]).problem).toBe('нет ни одного шага');
    const f = tripwire();
    f.steps[1]!.lessons = [];
    expect(only([f]).problem).toBe('в шаге нет ни одного урока');
  });

  it('lists every problem at once, across funnels', () => {
    const f = tripwire();
    f.steps[0]!.stageId = 142;
    f.steps[1]!.lessons = [70];
    const g = { ...partners(), pipelineId: 1 };
    const lines = check([f, g]).map(formatProblem);
    expect(lines).toHaveLength(3);
    expect(lines.filter((l) => l.startsWith('воронка «tripwire», шаг 1:'))).toHaveLength(1);
    expect(lines.filter((l) => l.startsWith('воронка «tripwire», шаг 2:'))).toHaveLength(1);
    expect(lines.filter((l) => l.startsWith('воронка «partners»:'))).toHaveLength(1);
  });
});
