// `pipelines`: every pipeline and stage with its id, the configured ones marked, so an
// operator can fill AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3.
import { LOST_STATUS_ID, WON_STATUS_ID } from '../amocrm/resources.ts';
import { failed, finish, type CommandContext, type CommandResult } from './command.ts';
import { commandRuntime } from './lenient-runtime.ts';
import { STAGE_VARS } from './variables.ts';

export async function pipelinesCommand(ctx: CommandContext): Promise<CommandResult> {
  try {
    const { runtime, configured } = commandRuntime(ctx);
    const { config } = runtime;
    const pipelines = await runtime.invocation(10_000).amo.listPipelines();
    if (pipelines.length === 0) return finish(1, ['❌ amoCRM returned no pipelines → check that the integration has access to deals']);
    const lines: string[] = [`Pipelines of ${config.amocrm.baseUrl}:`];
    for (const p of pipelines) {
      const mark = configured.pipeline && p.id === config.pipelineId ? '   ← AMOCRM_PIPELINE_ID' : '';
      lines.push('', `pipeline ${p.id}  '${p.name}'${mark}`);
      for (const s of [...p.statuses].sort((a, b) => a.sort - b.sort)) {
        const marks = (config.stageIds ?? [])
          .map((id, i) => (configured.stages[i] && id === s.id ? STAGE_VARS[i] : undefined))
          .filter(Boolean);
        const system = s.id === WON_STATUS_ID ? ' (system: won)' : s.id === LOST_STATUS_ID ? ' (system: lost)' : '';
        lines.push(`  ${String(s.id).padEnd(10)} ${s.name}${system}${marks.length ? `   ← ${marks.join(', ')}` : ''}`);
      }
    }
    lines.push('');
    if (!configured.pipeline || configured.stages.includes(false)) {
      lines.push('Save the funnels with these ids (npm run amocrm -- funnels set <file.json>), or, while none is saved, set AMOCRM_PIPELINE_ID and AMOCRM_STAGE_LESSON_1..3 to the first funnel\'s pipeline and three lesson stages.');
    } else {
      const pipeline = pipelines.find((p) => p.id === config.pipelineId);
      const stageIds = config.stageIds ?? [];
      const missing = stageIds.filter((id) => !pipeline?.statuses.some((s) => s.id === id));
      if (!pipeline) lines.push(`⚠️ AMOCRM_PIPELINE_ID ${config.pipelineId} is not one of these pipelines`);
      else if (missing.length) lines.push(`⚠️ configured stage(s) ${missing.join(', ')} are not in pipeline '${pipeline.name}' (${pipeline.id})`);
      else lines.push(`✅ configured: pipeline '${pipeline.name}' (${pipeline.id}), stages ${stageIds.join(', ')}`);
    }
    return finish(0, lines);
  } catch (err) {
    return failed(err);
  }
}
