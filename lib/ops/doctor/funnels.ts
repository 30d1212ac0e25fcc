// Every funnel in force checked against amoCRM and the lessons as they are now, with the
// same checks a change must pass before it is saved (lib/funnels/check.ts): a stage deleted
// or reordered in amoCRM, or a lesson archived, since the funnel was saved is one ❌ line per
// problem; a funnel with none is one ✅ line with its steps. While none is saved, the funnel
// in force is the one the sync will save from the variables on its first event.
import { FUNNEL_VARS } from '../../config.ts';
import type { Db } from '../../db/port.ts';
import { currentFunnels } from '../../db/funnels.ts';
import { checkFunnels, type PipelineFacts } from '../../funnels/check.ts';
import { readFacts } from '../../funnels/edit.ts';
import { ENV_FUNNEL_KEY, type Funnel, type FunnelConfig } from '../../funnels/model.ts';
import { failureText } from '../failure.ts';
import type { Add } from './report.ts';

const FIX_HINT = 'fix the funnel and save it: npm run amocrm -- funnels set <file.json> (or roll back: funnels history)';

/** The funnel amocrm_ensure_funnels saves from the variables: tripwire_lessons' lessons per stage number. */
export function envFunnel(pipelineId: number, stageIds: readonly number[], tripwireLessons: Record<string, number> | null): Funnel {
  const lessons = Object.entries(tripwireLessons ?? {});
  return {
    key: ENV_FUNNEL_KEY, name: 'Tripwire', pipelineId,
    steps: stageIds.map((stageId, i) => ({ stageId, lessons: lessons.filter(([, n]) => Number(n) === i + 1).map(([id]) => Number(id)).sort((a, b) => a - b) })),
  };
}

/** `fromEnv`: the funnel AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3 give, null when they are unset. */
export async function checkSavedFunnels(db: Db, listPipelines: () => Promise<PipelineFacts[]>, fromEnv: Funnel | null, add: Add): Promise<void> {
  let saved: FunnelConfig | null;
  try {
    saved = await currentFunnels(db);
  } catch (err) {
    add('fail', 'funnels', `cannot read the saved funnels: ${failureText(err)}`, 'apply the migrations in supabase/migrations');
    return;
  }
  if (!saved && !fromEnv) {
    add('fail', 'funnels', `no funnel is saved and ${FUNNEL_VARS.join(', ')} are unset: the sync has no funnel to move deals in`,
      `save the funnels: npm run amocrm -- funnels set <file.json> (or set ${FUNNEL_VARS.join(', ')}: they become the first funnel)`);
    return;
  }
  if (saved && fromEnv) unusedVariables(saved, fromEnv, add);
  const config = saved ?? { version: 0, funnels: [fromEnv!], changedBy: 'env', changedAt: '' };
  let facts;
  try {
    facts = await readFacts({ db, listPipelines }, config.funnels);
  } catch (err) {
    add('fail', 'funnels', `not checked: ${failureText(err)}`, 'retry; check the integration has access to deals');
    return;
  }
  for (const funnel of config.funnels) {
    const check = `funnel ${funnel.key}`;
    const problems = checkFunnels([funnel], facts.pipelines, facts.lessons);
    // Unsaved, the funnel is the variables', whose own lines above say what to fix: a warning.
    for (const p of problems) {
      const where = `${p.step ? `шаг ${p.step}: ` : ''}${p.problem}`;
      if (saved) add('fail', check, where, `${p.fix}; ${FIX_HINT}`);
      else add('warn', check, `from the variables: ${where} → ${p.fix}`);
    }
    if (problems.length) continue;
    const pipeline = facts.pipelines.find((p) => p.id === funnel.pipelineId)!;
    const steps = funnel.steps.map((s) => `${s.lessons.join('+')} → ${s.stageId} '${pipeline.statuses.find((st) => st.id === s.stageId)?.name ?? ''}'`);
    const version = saved ? `version ${config.version}` : 'from the variables, saved on the first event';
    add('ok', check, `'${funnel.name}' in '${pipeline.name}' (${pipeline.id}), ${version}: ${steps.join(', ')}`);
  }
}

/** Once a funnel is saved the variables are no longer read: said plainly, and louder when they disagree with it. */
function unusedVariables(saved: FunnelConfig, fromEnv: Funnel, add: Add): void {
  const same = saved.funnels.find((f) => f.key === fromEnv.key);
  const agrees = same !== undefined && same.pipelineId === fromEnv.pipelineId
    && same.steps.map((s) => s.stageId).join(',') === fromEnv.steps.map((s) => s.stageId).join(',');
  const vars = FUNNEL_VARS.join(', ');
  if (agrees) {
    add('ok', 'funnel variables', `${vars} are no longer used: the funnels are saved (version ${saved.version}); they may be removed`);
  } else {
    add('warn', 'funnel variables', `${vars} are no longer used and disagree with the saved funnels (version ${saved.version}: ${saved.funnels.map((f) => `${f.key} in pipeline ${f.pipelineId}`).join(', ')}; the variables: pipeline ${fromEnv.pipelineId}, stages ${fromEnv.steps.map((s) => s.stageId).join(', ')}): the sync follows the saved funnels → remove the variables (or change the funnels: npm run amocrm -- funnels set <file.json>)`);
  }
}
