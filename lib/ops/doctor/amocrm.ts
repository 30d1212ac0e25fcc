// amoCRM as the configuration names it: the account answers, the pipeline exists, and the
// three lesson stages are regular stages of it, in lesson order.
import { AmoError } from '../../amocrm/errors.ts';
import { LOST_STATUS_ID, WON_STATUS_ID, type Pipeline } from '../../amocrm/resources.ts';
import { PLACEHOLDER_STAGE_IDS, STAGE_VARS } from '../../config.ts';
import type { Runtime } from '../../runtime.ts';
import { failureText } from '../failure.ts';
import type { Add } from './report.ts';

/**
 * Checks the account, and the variables' pipeline and stages while they make the funnel
 * (`funnelVarsInUse`: set, and no funnel saved yet); returns whether the account answered.
 */
export async function checkAmo(runtime: Runtime, add: Add, funnelVarsInUse = true): Promise<boolean> {
  const { config } = runtime;
  const amo = runtime.invocation(10_000).amo;
  try {
    const account = await amo.getAccount();
    add('ok', 'amoCRM', `account '${account.name}' (${account.subdomain}, id ${account.id}) at ${config.amocrm.baseUrl}`);
  } catch (err) {
    const whatToDo = err instanceof AmoError ? err.details.whatToDo : undefined;
    const network = err instanceof AmoError && (err.code === 'network' || err.code === 'timeout');
    add('fail', 'amoCRM', `GET /api/v4/account at ${config.amocrm.baseUrl} failed: ${failureText(err)}`,
      whatToDo ?? (network ? 'check AMOCRM_SUBDOMAIN / AMOCRM_BASE_DOMAIN (or AMOCRM_BASE_URL)' : 'see the error; retry later'));
    return false;
  }
  if (!funnelVarsInUse || config.pipelineId === undefined || !config.stageIds) return true;
  let pipelines: Pipeline[];
  try {
    pipelines = await amo.listPipelines();
  } catch (err) {
    add('fail', 'pipeline', `GET /api/v4/leads/pipelines failed: ${failureText(err)}`, 'retry; check the integration has access to deals');
    return true;
  }
  const pipeline = pipelines.find((p) => p.id === config.pipelineId);
  if (!pipeline) {
    const known = pipelines.map((p) => `'${p.name}' (${p.id})`).join(', ') || 'none';
    add('fail', 'AMOCRM_PIPELINE_ID', `pipeline ${config.pipelineId} not found in the account (pipelines: ${known})`,
      'set AMOCRM_PIPELINE_ID to the Tripwire pipeline: npm run amocrm -- pipelines');
    return true;
  }
  checkStages(config.stageIds, pipeline, pipelines, add);
  return true;
}

function checkStages(stageIds: readonly number[], pipeline: Pipeline, pipelines: Pipeline[], add: Add): void {
  let stageProblems = 0;
  const found: { index: number; id: number; name: string; sort: number }[] = [];
  stageIds.forEach((id, index) => {
    const variable = STAGE_VARS[index]!;
    const own = pipeline.statuses.find((s) => s.id === id);
    if (id === WON_STATUS_ID || id === LOST_STATUS_ID) {
      stageProblems++;
      add('fail', variable, `stage ${id} is the system '${id === WON_STATUS_ID ? 'won' : 'lost'}' stage, deals are never moved there`,
        `use a regular stage of pipeline '${pipeline.name}': npm run amocrm -- pipelines`);
      return;
    }
    if (own) {
      found.push({ index, id, name: own.name, sort: own.sort });
      return;
    }
    stageProblems++;
    if (PLACEHOLDER_STAGE_IDS.includes(id)) return; // already reported as the placeholder it is
    const owner = pipelines.find((p) => p.statuses.some((s) => s.id === id));
    add('fail', variable,
      owner ? `stage ${id} belongs to pipeline '${owner.name}', not ${pipeline.id}` : `stage ${id} not found in any pipeline`,
      `use a stage of pipeline '${pipeline.name}' (${pipeline.id}): npm run amocrm -- pipelines`);
  });
  if (stageProblems) return;
  const list = found.map((s) => `lesson ${s.index + 1} → ${s.id} '${s.name}'`).join(', ');
  const ordered = found.every((s, i) => i === 0 || s.sort > found[i - 1]!.sort);
  if (!ordered) {
    add('warn', 'pipeline', `'${pipeline.name}' (${pipeline.id}): ${list}; the stages are not in lesson order in the pipeline, so forward-only moves will skip some lessons`);
  } else {
    add('ok', 'pipeline', `'${pipeline.name}' (${pipeline.id}): ${list}`);
  }
}
