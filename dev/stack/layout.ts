// The amoCRM account a stack starts with: a Tripwire pipeline with the three lesson stages,
// and a partner pipeline (so "a deal in another pipeline" can be arranged, and a second
// funnel can move a deal there: `npm start` shows one).
import type { AmoStandin } from '../amocrm-standin/index.ts';

export interface StackLayout {
  pipelineId: number;
  otherPipelineId: number;
  stages: {
    incoming: number; lesson1: number; lesson2: number; lesson3: number; paid: number; otherPipelineStage: number;
    /** A stage after the partner pipeline's first, for a second funnel's step. */
    otherPipelineStep?: number;
  };
  /** Deals and contacts a stack adds are numbered from here, one after the other. */
  firstLeadId: number;
  firstContactId: number;
}

/** The embedded default's account (`npm start`, `--embedded`); the README quotes these ids. */
export const LOCAL_LAYOUT: StackLayout = {
  pipelineId: 7_000_001,
  otherPipelineId: 7_000_002,
  stages: { incoming: 70_001, lesson1: 70_011, lesson2: 70_012, lesson3: 70_013, paid: 70_020, otherPipelineStage: 80_001, otherPipelineStep: 80_011 },
  firstLeadId: 31_000_001,
  firstContactId: 41_000_001,
};

/** Local-only secrets, documented in the README; never used outside this machine. */
export const LOCAL_SECRETS = {
  webhookSecret: 'local-demo-webhook-secret',
  replayToken: 'local-demo-replay-token',
  hookSecret: 'local-demo-hook-secret-0123456789',
};

export function addPipelines(amo: AmoStandin, { pipelineId, otherPipelineId, stages }: StackLayout): void {
  amo.addPipeline({
    id: pipelineId, name: 'Tripwire',
    statuses: [
      { id: stages.incoming, name: 'Новая заявка', sort: 10 },
      { id: stages.lesson1, name: 'Урок 1 пройден', sort: 20 },
      { id: stages.lesson2, name: 'Урок 2 пройден', sort: 30 },
      { id: stages.lesson3, name: 'Урок 3 пройден', sort: 40 },
      { id: stages.paid, name: 'Оплата основного курса', sort: 50 },
    ],
  });
  amo.addPipeline({
    id: otherPipelineId, name: 'Партнёры',
    statuses: [
      { id: stages.otherPipelineStage, name: 'Новый партнёр', sort: 10 },
      ...(stages.otherPipelineStep ? [{ id: stages.otherPipelineStep, name: 'Бонусный урок пройден', sort: 20 }] : []),
    ],
  });
}

/** The environment the runtime reads, pointing at the stand-in. */
export function stackEnv(amoUrl: string, { pipelineId, stages }: StackLayout): Record<string, string> {
  return {
    AMOCRM_BASE_URL: amoUrl,
    AMOCRM_CLIENT_ID: 'standin-client-id',
    AMOCRM_CLIENT_SECRET: 'standin-client-secret',
    AMOCRM_REDIRECT_URI: 'https://example.test/oauth',
    AMOCRM_PIPELINE_ID: String(pipelineId),
    AMOCRM_STAGE_LESSON_1: String(stages.lesson1),
    AMOCRM_STAGE_LESSON_2: String(stages.lesson2),
    AMOCRM_STAGE_LESSON_3: String(stages.lesson3),
    AMOCRM_WEBHOOK_SECRET: LOCAL_SECRETS.webhookSecret,
    AMOCRM_REPLAY_TOKEN: LOCAL_SECRETS.replayToken,
  };
}
