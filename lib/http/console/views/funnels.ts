// The funnels as configured: each funnel with its own steps (lesson titles, stage names,
// the note and task a step asks for), the edit box with the checks' problems, the saved
// versions with a rollback each, and what funnels, notes and tasks are (the help).
import type { FunnelProblem } from '../../../funnels/check.ts';
import type { FunnelFacts } from '../../../funnels/edit.ts';
import type { Funnel, FunnelConfig, FunnelStep } from '../../../funnels/model.ts';
import { time } from '../format.ts';
import { html, type Html } from '../html.ts';
import { href } from '../query.ts';

const titled = (id: number, title: string | null | undefined) => (title ? html`${id} «${title}»` : html`${id}`);

function stepExtras(step: FunnelStep): Html {
  const parts: Html[] = [];
  if (step.note) parts.push(html`<span class="badge" data-extra="note">заметка в сделке</span>`);
  if (step.task) parts.push(html`<span class="badge" data-extra="task">задача: ${step.task.text} (срок ${step.task.dueMinutes} мин)</span>`);
  return parts.length ? html`${parts.map((p, i) => html`${i ? ' ' : ''}${p}`)}` : html`<span class="muted">—</span>`;
}

/** One funnel and its steps, in forward order, with the names amoCRM and the academy give them. */
export function funnelSteps(funnel: Funnel, facts: FunnelFacts): Html {
  const pipeline = facts.pipelines.find((p) => p.id === funnel.pipelineId);
  const lesson = (id: number) => titled(id, facts.lessons.find((l) => l.id === id)?.title);
  const rows = funnel.steps.map((step, i) => {
    const stage = pipeline?.statuses.find((s) => s.id === step.stageId);
    return html`<tr data-step="${i + 1}" data-stage="${step.stageId}">
<td class="n">${i + 1}</td><td data-field="lessons">${step.lessons.map((id, j) => html`${j ? ', ' : ''}${lesson(id)}`)}</td>
<td data-field="stage">${titled(step.stageId, stage?.name)}</td><td>${stepExtras(step)}</td></tr>`;
  });
  return html`<div class="card" data-funnel="${funnel.key}">
<h3>${funnel.name} <span class="muted mono">${funnel.key}</span></h3>
<p class="muted">Воронка amoCRM: ${titled(funnel.pipelineId, pipeline?.name)}. Сделка двигается только вперёд по этим шагам.</p>
<div class="scroll"><table data-table="funnel-steps"><thead><tr><th class="n">шаг</th><th>уроки</th><th>этап в amoCRM</th><th>менеджеру</th></tr></thead>
<tbody>${rows}</tbody></table></div></div>`;
}

/** The configured funnels, for the funnel page and the funnels page alike. */
export function configuredFunnels(config: FunnelConfig | null, facts: FunnelFacts): Html {
  if (!config) return html`<p class="note warn" data-empty="funnels">Воронки ещё не сохранены.</p>`;
  return html`<p class="muted" data-version="${config.version}">Версия ${config.version}: ${config.changedBy}, ${time(config.changedAt)}${config.note ? html` — ${config.note}` : ''}.</p>
${config.funnels.map((f) => funnelSteps(f, facts))}`;
}

export function problemList(problems: readonly (FunnelProblem | string)[]): Html {
  return html`<ul class="note error" role="alert" data-problems="${problems.length}">${problems.map((p) => typeof p === 'string'
    ? html`<li data-problem>${p}</li>`
    : html`<li data-problem data-funnel="${p.funnel}" data-step="${p.step ?? ''}">воронка «${p.funnel}»${p.step ? `, шаг ${p.step}` : ''}: ${p.problem} → <b>${p.fix}</b></li>`)}</ul>`;
}

export interface EditBox { text: string; version: number; note?: string }

export function editForm(box: EditBox): Html {
  return html`<form method="post" action="${href('/funnels')}" data-form="funnels">
<input type="hidden" name="version" value="${box.version}">
<label for="funnels-json">Воронки (JSON)</label>
<textarea id="funnels-json" name="funnels" rows="18" spellcheck="false" class="mono">${box.text}</textarea>
<label>Зачем изменение (попадёт в историю)<input type="text" name="note" maxlength="500" size="60" value="${box.note ?? ''}"></label>
<div class="actions"><button type="submit" name="step" value="check" class="secondary" data-action="check-funnels">Проверить</button>
<button type="submit" name="step" value="save" data-action="save-funnels">Проверить и сохранить</button></div>
<p class="muted">Перед сохранением каждая воронка и каждый этап проверяются в amoCRM, каждый урок — в public.lessons. Если кто-то сохранил воронки после того, как вы открыли страницу (версия ${box.version}), изменение не сохранится: откройте страницу заново.</p>
</form>`;
}

export function historyTable(versions: readonly FunnelConfig[]): Html {
  const current = versions[0]?.version;
  const rows = versions.map((v) => html`<tr data-version="${v.version}">
<td class="n">${v.version}</td><td>${time(v.changedAt)}</td><td>${v.changedBy}</td><td class="mono">${v.funnels.map((f) => f.key).join(', ')}</td><td>${v.note ?? ''}</td>
<td>${v.version === current ? html`<span class="muted">действует</span>` : html`<form method="post" action="${href('/funnels/rollback')}">
<input type="hidden" name="version" value="${v.version}"><button type="submit" class="secondary" data-action="rollback" data-version="${v.version}">Вернуть эту версию</button></form>`}</td></tr>`);
  return html`<div class="scroll"><table data-table="funnel-history"><thead><tr><th class="n">версия</th><th>когда</th><th>кто</th><th>воронки</th><th>зачем</th><th></th></tr></thead>
<tbody>${rows}</tbody></table></div>`;
}

export const FUNNELS_HELP = html`<details data-help="funnels"><summary>Как устроены воронки, заметки и задачи</summary>
<p><b>Воронка</b> — это воронка amoCRM (pipelineId) и шаги по порядку. Шаг — урок платформы (или несколько) и этап, на который сделка переходит, когда студент проходит урок. Воронок может быть несколько: у каждой своя воронка amoCRM, и сделка студента ищется в ней. Сделка двигается только вперёд: шаги идут в порядке этапов amoCRM, а успешные, проигранные и ушедшие дальше сделки не трогаются.</p>
<p><b>Заметка</b> (<span class="mono">"note": true</span>) — запись в ленте сделки: «Студент прошёл урок 2 «…» 07.12 14:05». <b>Задача</b> (<span class="mono">"task": {"text": "Позвонить: прошёл урок 1", "dueMinutes": 60}</span>) — задача ответственному менеджеру сделки со сроком через столько минут. Заметки и задачи создаются один раз на событие, после перемещения сделки, и только если шаг их просит.</p>
<p>Изменение сохраняется новой версией с автором и временем; любую прежнюю версию можно вернуть. Первая версия — из переменных AMOCRM_PIPELINE_ID и AMOCRM_STAGE_LESSON_1..3. То же из командной строки: <span class="mono">npm run amocrm -- funnels list|show|set|check|history|rollback</span>.</p>
<pre class="mono">{"funnels": [{"key": "tripwire", "name": "Tripwire", "pipelineId": 7000001,
  "steps": [{"lessons": [67], "stageId": 70011},
            {"lessons": [68], "stageId": 70012, "note": true},
            {"lessons": [69], "stageId": 70013, "task": {"text": "Позвонить", "dueMinutes": 60}}]}]}</pre>
</details>`;

/** The funnels page: what is in force, the edit box (with the problems of the last try), the history. */
export function funnelsView(o: { config: FunnelConfig | null; facts: FunnelFacts; box: EditBox; problems?: readonly (FunnelProblem | string)[]; message?: Html; versions: readonly FunnelConfig[] }): Html {
  return html`<h1>Настройка воронок</h1>
${o.message ?? ''}${o.problems?.length ? problemList(o.problems) : ''}
<section aria-labelledby="in-force"><h2 id="in-force">Действующие воронки</h2>${configuredFunnels(o.config, o.facts)}</section>
<section aria-labelledby="edit"><h2 id="edit">Изменить</h2>${FUNNELS_HELP}${editForm(o.box)}</section>
<section aria-labelledby="history"><h2 id="history">История</h2>${historyTable(o.versions)}</section>`;
}

/** The editor's text for a configuration: the file format of `funnels set`. */
export const configText = (funnels: readonly Funnel[]) => JSON.stringify({ funnels }, null, 2);

/**
 * The funnels a student is in: those with a step holding a lesson the student completed,
 * with the furthest such step (each funnel moves the deal in its own pipeline).
 */
export function studentFunnels(config: FunnelConfig | null, facts: FunnelFacts, events: readonly { lesson_id: number; status: string }[]): Html {
  const done = new Map<number, string>();
  for (const e of events) if (!done.has(e.lesson_id) || e.status === 'done') done.set(e.lesson_id, e.status);
  const rows = (config?.funnels ?? []).flatMap((f) => {
    const reached = f.steps.map((s, i) => ({ s, i })).filter(({ s }) => s.lessons.some((l) => done.has(l)));
    if (!reached.length) return [];
    const { s, i } = reached.at(-1)!;
    const pipeline = facts.pipelines.find((p) => p.id === f.pipelineId);
    const stage = pipeline?.statuses.find((st) => st.id === s.stageId);
    const lessons = s.lessons.filter((l) => done.has(l)).map((l) => html`${titled(l, facts.lessons.find((x) => x.id === l)?.title)}`);
    return [html`<tr data-student-funnel="${f.key}" data-step="${i + 1}">
<td>${f.name} <span class="muted mono">${f.key}</span></td><td>${titled(f.pipelineId, pipeline?.name)}</td>
<td class="n">${i + 1} из ${f.steps.length}</td><td>${lessons.map((l, j) => html`${j ? ', ' : ''}${l}`)}</td><td>${titled(s.stageId, stage?.name)}</td></tr>`];
  });
  if (!rows.length) return html`<p class="muted" data-empty="student-funnels">Студент не проходил уроков ни одной из настроенных воронок.</p>`;
  return html`<div class="scroll"><table data-table="student-funnels"><thead><tr><th>воронка</th><th>воронка amoCRM</th><th class="n">дальний шаг</th><th>пройденные уроки шага</th><th>этап шага</th></tr></thead>
<tbody>${rows}</tbody></table></div>`;
}
