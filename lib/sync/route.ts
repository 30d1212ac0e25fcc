// Where an event's lesson takes the student's deal: its funnel (the event carries the key),
// that funnel's pipeline, and the step the event was recorded at (stage_number, the step's
// position when the lesson was completed). Forward only is judged within the funnel's own
// steps (decide.ts).
import { AmoError } from '../amocrm/errors.ts';
import type { ClaimedEvent } from '../db/outbox.ts';
import { ENV_FUNNEL_KEY, type Funnel } from '../funnels/model.ts';

export interface Route {
  funnelKey: string;
  pipelineId: number;
  /** The funnel's stages in forward order: index 0 = its first step. */
  stageIds: number[];
  /** The step of the event's lesson. */
  targetIndex: number;
}

export const funnelKeyOf = (event: ClaimedEvent) => event.funnel_key ?? ENV_FUNNEL_KEY;

/** The event's route in `funnels`, or the permanent failure that says why it has none. */
export function routeOf(funnels: readonly Funnel[], event: ClaimedEvent): Route {
  const key = funnelKeyOf(event);
  const funnel = funnels.find((f) => f.key === key);
  if (!funnel) {
    throw new AmoError('permanent', 'no_stage', `воронки «${key}» больше нет в настройках`,
      { whatToDo: 'верните воронку (npm run amocrm -- funnels list), затем повторите событие' });
  }
  const stageIds = funnel.steps.map((s) => s.stageId);
  const targetIndex = event.stage_number - 1;
  if (stageIds[targetIndex] === undefined) {
    throw new AmoError('permanent', 'no_stage', `нет этапа для урока ${event.stage_number}: настроено ${stageIds.length}`,
      { whatToDo: key === ENV_FUNNEL_KEY ? 'проверьте tripwire_lessons в amocrm.system_settings: номера этапов 1–3' : `проверьте шаги воронки «${key}»` });
  }
  return { funnelKey: key, pipelineId: funnel.pipelineId, stageIds, targetIndex };
}
