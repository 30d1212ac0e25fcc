// How `npm run amocrm -- funnels` shows funnels: one line per funnel (list), one line per
// step with the lesson titles and stage names amoCRM and the academy give them (show), one
// line per saved version (history).
import type { FunnelFacts } from '../funnels/edit.ts';
import type { Funnel, FunnelConfig, FunnelStep } from '../funnels/model.ts';
import { iso } from './time-words.ts';

/** A saved version's time as the other commands print times (ISO, to the second, UTC). */
const when = (at: string) => (Number.isFinite(Date.parse(at)) ? iso(Date.parse(at)) : at);
const quoted = (name: string | null | undefined) => (name ? ` '${name}'` : '');

export function describeConfig(config: FunnelConfig): string[] {
  const lines = [`Funnels, version ${config.version} (changed by ${config.changedBy} at ${when(config.changedAt)}${config.note ? `: ${config.note}` : ''}):`];
  for (const f of config.funnels) {
    const lessons = f.steps.flatMap((s) => s.lessons).join(', ');
    lines.push(`  ${f.key.padEnd(16)} '${f.name}'  pipeline ${f.pipelineId}  ${f.steps.length} step(s)  lessons ${lessons || '—'}`);
  }
  return lines;
}

/** What a step asks of the manager's deal card, besides the move. */
export function stepExtras(step: FunnelStep): string {
  const extras = [step.note ? 'note' : '', step.task ? `task '${step.task.text}' due in ${step.task.dueMinutes} min` : ''].filter(Boolean);
  return extras.length ? `   + ${extras.join(', ')}` : '';
}

export function describeFunnel(funnel: Funnel, facts: FunnelFacts): string[] {
  const pipeline = facts.pipelines.find((p) => p.id === funnel.pipelineId);
  const lines = [`funnel ${funnel.key} '${funnel.name}' in pipeline ${funnel.pipelineId}${quoted(pipeline?.name)}:`];
  funnel.steps.forEach((step, i) => {
    const lessons = step.lessons.map((id) => `${id}${quoted(facts.lessons.find((l) => l.id === id)?.title)}`).join(', ');
    const stage = pipeline?.statuses.find((s) => s.id === step.stageId);
    lines.push(`  ${i + 1}. lesson ${lessons} → stage ${step.stageId}${quoted(stage?.name)}${stepExtras(step)}`);
  });
  return lines;
}

export function describeVersion(v: FunnelConfig, current: boolean): string {
  const keys = v.funnels.map((f) => f.key).join(', ') || 'no funnels';
  return `  ${String(v.version).padStart(4)}  ${when(v.changedAt)}  by ${v.changedBy}  ${keys}${v.note ? `  — ${v.note}` : ''}${current ? '   ← current' : ''}`;
}
