// The funnel of a period, per funnel: each funnel's own steps (the lessons and the stage of
// the version in force) with the lessons completed and the deals moved at each, the
// conversion from each step to the next, the deals won and lost in its pipeline, and where
// its students are stuck and why. A lesson in two funnels is counted in each, apart.
import type { Funnel, FunnelCounts, FunnelStepCounts } from '../../../db/console.ts';
import type { FunnelFacts } from '../../../funnels/edit.ts';
import { meterBar } from '../chart.ts';
import { count, share } from '../format.ts';
import { html, type Html } from '../html.ts';
import { href, type Period } from '../query.ts';
import { adviceFor } from '../words.ts';
import { badge, code, periodPicker } from './parts.ts';

interface Step { key: string; stage?: number; label: Html; value: number; color: string; link?: string }
interface Range { from: string; to: string }

const titled = (id: number, title: string | null | undefined) => (title ? html`${id} «${title}»` : html`${id}`);

/** The lessons a step's events can be listed by: one lesson that no other funnel shown has (else the list would mix funnels). */
function listableLesson(step: FunnelStepCounts, shared: ReadonlySet<number>): number | undefined {
  return step.lessons.length === 1 && !shared.has(step.lessons[0]!) ? step.lessons[0] : undefined;
}

function stepRows(f: FunnelCounts, facts: FunnelFacts, range: Range, shared: ReadonlySet<number>): Html[] {
  const pipeline = facts.pipelines.find((p) => p.id === f.pipeline_id);
  const lessonName = (id: number) => titled(id, facts.lessons.find((l) => l.id === id)?.title);
  const steps: Step[] = f.steps.flatMap((s) => {
    const lessons = s.lessons.length ? html`${s.lessons.length > 1 ? 'уроки' : 'урок'} ${s.lessons.map((id, i) => html`${i ? ', ' : ''}${lessonName(id)}`)}` : html`урок шага ${s.stage_number}`;
    const stage = s.stage_id ? titled(s.stage_id, pipeline?.statuses.find((st) => st.id === s.stage_id)?.name) : html`шага ${s.stage_number}`;
    const lesson = listableLesson(s, shared);
    return [
      { key: 'completed', stage: s.stage_number, label: html`Прошли ${lessons}`, value: s.completed, color: '#60a5fa', link: lesson ? href('/events', { lesson, ...range }) : undefined },
      { key: 'moved', stage: s.stage_number, label: html`Сделка на этапе ${stage}`, value: s.moved, color: '#16a34a', link: lesson ? href('/events', { lesson, status: 'done', ...range }) : undefined },
    ];
  });
  steps.push({ key: 'won', label: html`Сделка успешна (оплата)`, value: f.won, color: '#15803d' });
  const max = Math.max(1, ...steps.map((s) => s.value));
  return steps.map((s, i) => {
    const prev = steps[i - 1];
    return html`<tr data-step="${s.key}" data-stage="${s.stage ?? ''}">
<td>${s.link ? html`<a href="${s.link}">${s.label}</a>` : s.label}</td>
<td class="n" data-value="${s.value}">${count(s.value)}</td>
<td class="n" data-conversion>${prev ? share(s.value, prev.value) : '—'}</td>
<td>${meterBar(s.value, max, s.color)}</td></tr>`;
  });
}

function lessonRows(f: FunnelCounts, range: Range, shared: ReadonlySet<number>): Html[] {
  return f.steps.map((s) => {
    const lesson = listableLesson(s, shared);
    // Only where one filter shows exactly these events ('' = all of the lesson).
    const cell = (key: string, n: number, status?: string) => {
      const url = status === undefined || !lesson ? undefined : href('/events', { lesson, status: status || undefined, ...range });
      return html`<td class="n" data-k="${key}" data-value="${n}">${url && n ? html`<a href="${url}">${count(n)}</a>` : count(n)}</td>`;
    };
    return html`<tr data-lesson="${s.lessons.join(',')}" data-stage="${s.stage_number}">
<td>${s.lessons.length ? s.lessons.join(', ') : '—'}</td><td class="n">${s.stage_number}</td>
${cell('completed', s.completed, '')}${cell('moved', s.moved, 'done')}${cell('skipped', s.skipped, 'skipped')}${cell('failed', s.failed)}${cell('waiting', s.waiting)}
<td class="n">${share(s.moved, s.completed)}</td></tr>`;
  });
}

function stuckRows(f: FunnelCounts, range: Range, shared: ReadonlySet<number>): Html[] {
  return f.stuck.map((s) => {
    const step = f.steps.find((x) => x.stage_number === s.stage_number);
    const lesson = step && listableLesson(step, shared);
    const url = href('/events', { lesson, status: s.status, code: s.code ?? undefined, ...range });
    return html`<tr data-stuck="${s.stage_number}:${s.status}:${s.code ?? ''}">
<td>${step?.lessons.length ? step.lessons.join(', ') : '—'} <span class="muted">(шаг ${s.stage_number})</span></td><td>${badge(s.status)}</td><td>${code(s.code)}</td>
<td class="n" data-value="${s.count}"><a href="${url}">${count(s.count)}</a></td><td>${adviceFor(s.status, s.code)}</td></tr>`;
  });
}

function funnelSection(f: FunnelCounts, facts: FunnelFacts, range: Range, shared: ReadonlySet<number>): Html {
  const id = `funnel-${f.key}`;
  const pipeline = f.pipeline_id ? facts.pipelines.find((p) => p.id === f.pipeline_id) : undefined;
  const stuck = stuckRows(f, range, shared);
  return html`<section aria-labelledby="${id}" data-funnel-counts="${f.key}" data-configured="${f.configured}">
<h2 id="${id}">${f.name} <span class="muted mono">${f.key}</span></h2>
<p class="muted">${f.configured ? html`Воронка amoCRM: ${f.pipeline_id ? titled(f.pipeline_id, pipeline?.name) : '—'}.` : html`Этой воронки больше нет в действующей версии: показаны события периода.`}</p>
<div class="scroll"><table data-table="funnel"><thead><tr><th>шаг</th><th class="n">студентов</th><th class="n">от предыдущего шага</th><th></th></tr></thead>
<tbody>${stepRows(f, facts, range, shared)}</tbody></table></div>
<p class="muted">Сделок воронки закрыто как «не реализовано» за период: <b data-value="${f.lost}" data-metric="lost">${count(f.lost)}</b>.</p>
<h3>По шагам</h3>
<div class="scroll"><table data-table="lessons"><thead><tr><th>уроки</th><th class="n">шаг</th><th class="n">прошли</th><th class="n">сделка перемещена</th><th class="n">пропущено</th><th class="n">ошибки</th><th class="n">ждут</th><th class="n">доля перемещённых</th></tr></thead>
<tbody>${lessonRows(f, range, shared)}</tbody></table></div>
<h3>Где застряли и почему</h3>
${stuck.length ? html`<div class="scroll"><table data-table="stuck"><thead><tr><th>уроки</th><th>статус</th><th>код</th><th class="n">событий</th><th>что делать</th></tr></thead><tbody>${stuck}</tbody></table></div>`
    : html`<p class="muted" data-empty="stuck">Все события периода дошли до своих этапов.</p>`}
</section>`;
}

/** Lessons that are steps of more than one of the funnels shown. */
function sharedLessons(funnels: readonly FunnelCounts[]): Set<number> {
  const seen = new Map<number, number>();
  for (const f of funnels) for (const l of new Set(f.steps.flatMap((s) => s.lessons))) seen.set(l, (seen.get(l) ?? 0) + 1);
  return new Set([...seen].filter(([, n]) => n > 1).map(([l]) => l));
}

export function funnelView(funnel: Funnel, facts: FunnelFacts, period: Period, keepParams: Record<string, string | undefined>): Html {
  const range = { from: period.from, to: period.to };
  const shared = sharedLessons(funnel.funnels);
  return html`<h1>Воронка: уроки и сделки</h1>
${periodPicker('', period, keepParams)}
<p class="muted">Каждая воронка считается отдельно, по своим шагам: урок, который есть в двух воронках, — два события, по одному в каждой. «Прошли урок» — события, записанные за период; «сделка на этапе» — те из них, что дошли до этапа шага; успешные и проигранные — изменения сделок в воронке amoCRM этой воронки за период (всего за период: успешных <b data-metric="won-total" data-value="${funnel.won}">${count(funnel.won)}</b>, не реализовано <b data-metric="lost-total" data-value="${funnel.lost}">${count(funnel.lost)}</b>).</p>
${funnel.funnels.length ? funnel.funnels.map((f) => funnelSection(f, facts, range, shared)) : html`<p class="note warn" data-empty="funnels">Воронки ещё не настроены.</p>`}`;
}
