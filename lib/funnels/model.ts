// Funnels as data: a funnel is an amoCRM pipeline and an ordered list of steps, each step
// the platform lessons that move a student's deal to one stage of that pipeline. The
// configuration is kept in the database in versions (amocrm.funnel_versions); this module
// only says what one looks like. Whether its pipelines, stages and lessons exist is
// checked against amoCRM and the academy elsewhere (check.ts); here only the shape.
import { z } from 'zod';

export interface FunnelTask { text: string; dueMinutes: number }

export interface FunnelStep {
  lessons: number[];
  stageId: number;
  /** A note in the deal's timeline when a lesson of this step moves it. */
  note?: boolean;
  /** A task for the deal's responsible manager when a lesson of this step moves it. */
  task?: FunnelTask | null;
}

export interface Funnel {
  /** Stable slug: lesson events carry it, so it is never reused for another funnel. */
  key: string;
  name: string;
  pipelineId: number;
  /** In forward order: a deal only ever moves to a later step. */
  steps: FunnelStep[];
}

export interface FunnelConfig {
  version: number;
  funnels: Funnel[];
  changedBy: string;
  changedAt: string;
  note?: string;
}

/** The funnel the environment describes (AMOCRM_PIPELINE_ID, AMOCRM_STAGE_LESSON_1..3): version 1. */
export const ENV_FUNNEL_KEY = 'tripwire';
export const ENV_CHANGED_BY = 'env';
/** The lesson events' stage_number column holds a step's position (1..9). */
export const MAX_STEPS = 9;

const id = z.number().int().positive().max(2 ** 53);

export const funnelStepSchema = z.object({
  lessons: z.array(z.number().int().positive().max(2 ** 31 - 1)).min(1, 'a step needs at least one lesson'),
  stageId: id,
  note: z.boolean().optional(),
  task: z.object({
    text: z.string().trim().min(1, 'a task needs its text').max(500),
    dueMinutes: z.number().int().positive().max(60 * 24 * 30),
  }).nullable().optional(),
});

export const funnelSchema = z.object({
  key: z.string().regex(/^[a-z0-9][a-z0-9_-]{0,62}$/, 'a key is a slug: lower-case letters, digits, - and _'),
  name: z.string().trim().min(1, 'a funnel needs a name').max(200),
  pipelineId: id,
  steps: z.array(funnelStepSchema).min(1, 'a funnel needs at least one step').max(MAX_STEPS),
}).superRefine((f, ctx) => {
  const seen = new Set<number>();
  f.steps.forEach((step, i) => step.lessons.forEach((lesson) => {
    if (seen.has(lesson)) ctx.addIssue({ code: 'custom', path: ['steps', i, 'lessons'], message: `lesson ${lesson} is in funnel ${f.key} more than once` });
    seen.add(lesson);
  }));
});

export const funnelsSchema = z.array(funnelSchema).superRefine((funnels, ctx) => {
  const keys = new Set<string>();
  funnels.forEach((f, i) => {
    if (keys.has(f.key)) ctx.addIssue({ code: 'custom', path: [i, 'key'], message: `funnel key ${f.key} is used twice` });
    keys.add(f.key);
  });
});

/** The step a lesson belongs to in a funnel (its index, forward order), or -1. */
export const stepOfLesson = (funnel: Funnel, lessonId: number): number =>
  funnel.steps.findIndex((s) => s.lessons.includes(lessonId));
