// The funnel of a period: lessons completed, deals moved to each stage, won and lost, the
// conversion from each step to the next, and where students are stuck and why.
import type { Config } from '../../../config.ts';
import type { Funnel, FunnelLesson } from '../../../db/console.ts';
import { meterBar } from '../chart.ts';
import { count, share } from '../format.ts';
import { html, type Html } from '../html.ts';
import { href, type Period } from '../query.ts';
import { adviceFor } from '../words.ts';
import { badge, code, periodPicker } from './parts.ts';

interface Step { key: string; stage?: number; label: string; value: number; color: string; link?: string }

/** The lessons of the funnel in stage order, with zeros for a stage nobody reached. */
export function funnelLessons(config: Config, funnel: Funnel): (FunnelLesson & { known: boolean })[] {
  return config.stageIds.map((_, i) => {
    const found = funnel.lessons.find((l) => l.stage_number === i + 1);
    return found
      ? { ...found, known: true }
      : { stage_number: i + 1, lesson_id: 0, completed: 0, moved: 0, skipped: 0, failed: 0, waiting: 0, known: false };
  });
}

export function funnelView(config: Config, funnel: Funnel, period: Period, keepParams: Record<string, string | undefined>): Html {
  const lessons = funnelLessons(config, funnel);
  const range = { from: period.from, to: period.to };
  const steps: Step[] = lessons.flatMap((l) => {
    const lesson = l.known ? `урок ${l.lesson_id}` : `урок этапа ${l.stage_number}`;
    return [
      { key: 'completed', stage: l.stage_number, label: `Прошли ${lesson}`, value: l.completed, color: '#60a5fa', link: l.known ? href('/events', { lesson: l.lesson_id, ...range }) : undefined },
      { key: 'moved', stage: l.stage_number, label: `Сделка на этапе ${l.stage_number}`, value: l.moved, color: '#16a34a', link: l.known ? href('/events', { lesson: l.lesson_id, status: 'done', ...range }) : undefined },
    ];
  });
  steps.push({ key: 'won', label: 'Сделка успешна (оплата)', value: funnel.won, color: '#15803d' });
  const max = Math.max(1, ...steps.map((s) => s.value));
  const stepRows = steps.map((s, i) => {
    const prev = steps[i - 1];
    return html`<tr data-step="${s.key}" data-stage="${s.stage ?? ''}">
<td>${s.link ? html`<a href="${s.link}">${s.label}</a>` : s.label}</td>
<td class="n" data-value="${s.value}">${count(s.value)}</td>
<td class="n" data-conversion>${prev ? share(s.value, prev.value) : '—'}</td>
<td>${meterBar(s.value, max, s.color)}</td></tr>`;
  });

  const byLesson = lessons.map((l) => {
    const link = (status?: string) => (l.known ? href('/events', { lesson: l.lesson_id, status, ...range }) : undefined);
    // Only where one filter shows exactly these events ('' = all of the lesson).
    const cell = (key: string, n: number, status?: string) => {
      const url = status === undefined ? undefined : link(status || undefined);
      return html`<td class="n" data-k="${key}" data-value="${n}">${url && n ? html`<a href="${url}">${count(n)}</a>` : count(n)}</td>`;
    };
    return html`<tr data-lesson="${l.known ? l.lesson_id : ''}" data-stage="${l.stage_number}">
<td>${l.known ? l.lesson_id : '—'}</td><td class="n">${l.stage_number}</td>
${cell('completed', l.completed, '')}${cell('moved', l.moved, 'done')}${cell('skipped', l.skipped, 'skipped')}${cell('failed', l.failed)}${cell('waiting', l.waiting)}
<td class="n">${share(l.moved, l.completed)}</td></tr>`;
  });

  const lessonOf = new Map(lessons.filter((l) => l.known).map((l) => [l.stage_number, l.lesson_id]));
  const stuck = funnel.stuck.map((s) => {
    const lesson = lessonOf.get(s.stage_number);
    const url = href('/events', { lesson, status: s.status, code: s.code ?? undefined, ...range });
    return html`<tr data-stuck="${s.stage_number}:${s.status}:${s.code ?? ''}">
<td>${lesson ?? '—'} <span class="muted">(этап ${s.stage_number})</span></td><td>${badge(s.status)}</td><td>${code(s.code)}</td>
<td class="n" data-value="${s.count}"><a href="${url}">${count(s.count)}</a></td><td>${adviceFor(s.status, s.code)}</td></tr>`;
  });

  return html`<h1>Воронка: уроки и сделки</h1>
${periodPicker('', period, keepParams)}
<section aria-labelledby="steps"><h2 id="steps">Шаги</h2>
<div class="scroll"><table data-table="funnel"><thead><tr><th>шаг</th><th class="n">студентов</th><th class="n">от предыдущего шага</th><th></th></tr></thead>
<tbody>${stepRows}</tbody></table></div>
<p class="muted">Сделок закрыто как «не реализовано» за период: <b data-value="${funnel.lost}" data-metric="lost">${count(funnel.lost)}</b>. «Прошли урок» — события, записанные за период; «сделка на этапе» — те из них, что дошли до этапа урока; успешные и проигранные — изменения сделок из amoCRM за период.</p>
</section>
<section aria-labelledby="lessons"><h2 id="lessons">По урокам</h2>
<div class="scroll"><table data-table="lessons"><thead><tr><th>урок</th><th class="n">этап</th><th class="n">прошли</th><th class="n">сделка перемещена</th><th class="n">пропущено</th><th class="n">ошибки</th><th class="n">ждут</th><th class="n">доля перемещённых</th></tr></thead>
<tbody>${byLesson}</tbody></table></div></section>
<section aria-labelledby="stuck"><h2 id="stuck">Где застряли и почему</h2>
${stuck.length ? html`<div class="scroll"><table data-table="stuck"><thead><tr><th>урок</th><th>статус</th><th>код</th><th class="n">событий</th><th>что делать</th></tr></thead><tbody>${stuck}</tbody></table></div>`
    : html`<p class="muted" data-empty="stuck">Все события периода дошли до своих этапов.</p>`}
</section>`;
}
