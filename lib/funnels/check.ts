// Whether a set of funnels can be saved: every problem a proposed configuration has against
// amoCRM's pipelines (as GET /api/v4/leads/pipelines lists them) and the academy's lessons
// (amocrm_lesson_facts), each naming the funnel and step and saying what to fix. Pure: the
// CLI, the console and the doctor read the facts and all judge with this one function.
import { LOST_STATUS_ID, WON_STATUS_ID } from '../amocrm/resources.ts';
import type { Funnel, FunnelStep } from './model.ts';

/** amoCRM's type of the "unsorted" (incoming) stage; regular stages are type 0. */
const UNSORTED_TYPE = 1;

/** A stage as amoCRM lists it; `type` when the reader kept it. */
export interface StageFacts { id: number; name: string; sort: number; type?: number }
export interface PipelineFacts { id: number; name: string; statuses: readonly StageFacts[] }
/** One row of amocrm_lesson_facts: a lesson absent from the answer counts as not existing. */
export interface LessonFact { id: number; exists: boolean; title: string | null; is_archived: boolean | null }

export interface FunnelProblem {
  /** The funnel's key, or its position ("#2") when it has none. */
  funnel: string;
  /** 1-based, in the funnel's forward order; absent for a problem of the whole funnel. */
  step?: number;
  problem: string;
  fix: string;
}

const PIPELINES_HINT = 'список воронок и этапов: npm run amocrm -- pipelines';

/** The one line a problem is shown as: `воронка «key», шаг 2: … → …`. */
export function formatProblem(p: FunnelProblem): string {
  return `воронка «${p.funnel}»${p.step ? `, шаг ${p.step}` : ''}: ${p.problem} → ${p.fix}`;
}

/** Every lesson the funnels name, once each, for amocrm_lesson_facts. */
export function lessonsOf(funnels: readonly Funnel[]): number[] {
  return [...new Set(funnels.flatMap((f) => f.steps.flatMap((s) => s.lessons)))].sort((a, b) => a - b);
}

/** Every problem of the proposed funnels; an empty list means they can be saved. */
export function checkFunnels(funnels: readonly Funnel[], pipelines: readonly PipelineFacts[], lessons: readonly LessonFact[]): FunnelProblem[] {
  const problems: FunnelProblem[] = [];
  const lessonFacts = new Map(lessons.map((l) => [l.id, l]));
  const keys = new Map<string, number>();
  funnels.forEach((funnel, index) => {
    const name = funnel.key || `#${index + 1}`;
    const first = keys.get(funnel.key);
    if (first !== undefined) {
      problems.push({ funnel: name, problem: `ключ «${funnel.key}» уже у воронки №${first + 1}`, fix: 'дайте каждой воронке свой ключ' });
    } else keys.set(funnel.key, index);
    problems.push(...checkFunnel(funnel, name, pipelines, lessonFacts));
  });
  return problems;
}

function checkFunnel(funnel: Funnel, name: string, pipelines: readonly PipelineFacts[], lessons: Map<number, LessonFact>): FunnelProblem[] {
  const problems: FunnelProblem[] = [];
  const add = (step: number | undefined, problem: string, fix: string) => problems.push({ funnel: name, ...(step ? { step } : {}), problem, fix });
  if (funnel.steps.length === 0) add(undefined, 'нет ни одного шага', 'добавьте шаги: урок(и) и этап, на который они переводят сделку');
  const pipeline = pipelines.find((p) => p.id === funnel.pipelineId);
  if (!pipeline) {
    const known = pipelines.map((p) => `${p.id} «${p.name}»`).join(', ') || 'нет ни одной';
    add(undefined, `воронки amoCRM ${funnel.pipelineId} нет в аккаунте (есть: ${known})`, `укажите pipelineId существующей воронки; ${PIPELINES_HINT}`);
  }
  const seenLessons = new Map<number, number>();
  funnel.steps.forEach((step, i) => {
    const n = i + 1;
    for (const problem of stepShapeProblems(step)) add(n, problem.problem, problem.fix);
    for (const lesson of step.lessons) {
      const earlier = seenLessons.get(lesson);
      if (earlier !== undefined) add(n, `урок ${lesson} уже есть в шаге ${earlier}`, 'оставьте урок в одном шаге воронки');
      else seenLessons.set(lesson, n);
      const problem = lessonProblem(lesson, lessons.get(lesson));
      if (problem) add(n, problem.problem, problem.fix);
    }
    if (pipeline) {
      const problem = stageProblem(step.stageId, pipeline, pipelines);
      if (problem) add(n, problem.problem, problem.fix);
    }
  });
  if (pipeline) for (const p of orderProblems(funnel.steps, pipeline)) add(p.step, p.problem, p.fix);
  return problems;
}

type Finding = { problem: string; fix: string };

function stepShapeProblems(step: FunnelStep): Finding[] {
  const found: Finding[] = [];
  if (step.lessons.length === 0) found.push({ problem: 'в шаге нет ни одного урока', fix: 'укажите хотя бы один урок (lessons)' });
  if (step.task) {
    if (!step.task.text?.trim()) found.push({ problem: 'у задачи нет текста', fix: 'напишите, что сделать менеджеру (task.text), или уберите задачу' });
    if (!Number.isFinite(step.task.dueMinutes) || step.task.dueMinutes <= 0) {
      found.push({ problem: `срок задачи ${step.task.dueMinutes} мин — не положительное число`, fix: 'укажите task.dueMinutes больше нуля, например 60' });
    }
  }
  return found;
}

function lessonProblem(id: number, fact: LessonFact | undefined): Finding | null {
  if (!fact?.exists) return { problem: `урока ${id} нет в public.lessons`, fix: 'укажите id существующего урока' };
  if (fact.is_archived) return { problem: `урок ${id} «${fact.title ?? ''}» в архиве`, fix: 'укажите действующий урок или верните этот из архива' };
  return null;
}

/** The stage a deal is moved to must be a regular stage of the funnel's own pipeline. */
function stageProblem(stageId: number, pipeline: PipelineFacts, pipelines: readonly PipelineFacts[]): Finding | null {
  const where = `воронки amoCRM ${pipeline.id} «${pipeline.name}»`;
  if (stageId === WON_STATUS_ID || stageId === LOST_STATUS_ID) {
    return {
      problem: `этап ${stageId} — системный «${stageId === WON_STATUS_ID ? 'успешно реализовано' : 'закрыто и не реализовано'}», туда сделки не переводятся`,
      fix: `выберите обычный этап ${where}; ${PIPELINES_HINT}`,
    };
  }
  const own = pipeline.statuses.find((s) => s.id === stageId);
  if (!own) {
    const owner = pipelines.find((p) => p.statuses.some((s) => s.id === stageId));
    return {
      problem: owner ? `этап ${stageId} из другой воронки amoCRM: ${owner.id} «${owner.name}»` : `этапа ${stageId} нет ни в одной воронке amoCRM`,
      fix: `выберите этап ${where}; ${PIPELINES_HINT}`,
    };
  }
  if (own.type === UNSORTED_TYPE || own === entryStage(pipeline)) {
    return {
      problem: `этап ${stageId} «${own.name}» — входящий этап воронки, с него сделки только начинают`,
      fix: `выберите этап после него; ${PIPELINES_HINT}`,
    };
  }
  return null;
}

/** The stage deals come in at: amoCRM's "unsorted" when it is on, else the first by sort. */
function entryStage(pipeline: PipelineFacts): StageFacts | undefined {
  const regular = pipeline.statuses.filter((s) => s.id !== WON_STATUS_ID && s.id !== LOST_STATUS_ID);
  return regular.find((s) => s.type === UNSORTED_TYPE) ?? [...regular].sort((a, b) => a.sort - b.sort)[0];
}

/** Forward-only follows amoCRM's order: each step's stage must come after the previous step's. */
function orderProblems(steps: readonly FunnelStep[], pipeline: PipelineFacts): (Finding & { step: number })[] {
  const found: (Finding & { step: number })[] = [];
  let previous: { step: number; stage: StageFacts } | undefined;
  steps.forEach((step, i) => {
    const stage = pipeline.statuses.find((s) => s.id === step.stageId);
    if (!stage || stage.id === WON_STATUS_ID || stage.id === LOST_STATUS_ID) return;
    if (previous && stage.sort <= previous.stage.sort) {
      found.push({
        step: i + 1,
        problem: stage.id === previous.stage.id
          ? `этап ${stage.id} «${stage.name}» тот же, что у шага ${previous.step}`
          : `этап ${stage.id} «${stage.name}» стоит в amoCRM раньше этапа шага ${previous.step} ${previous.stage.id} «${previous.stage.name}»`,
        fix: 'шаги идут в порядке этапов воронки amoCRM: поменяйте шаги местами или выберите этап дальше',
      });
      return;
    }
    previous = { step: i + 1, stage };
  });
  return found;
}
