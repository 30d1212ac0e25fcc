// The event list, problems first: what needs a look in the period at the top (counts per
// problem status and code, each a link to its filtered list), then the filtered list,
// newest first, paged by id, with replay of chosen events.
import type { Config } from '../../../config.ts';
import type { ConsoleItem, Funnel } from '../../../db/console.ts';
import { count } from '../format.ts';
import { html, type Html } from '../html.ts';
import { href, type EventQuery, type Period } from '../query.ts';
import { EVENT_STATUSES, KNOWN_CODES, PROBLEM_STATUSES, REPLAYABLE_STATUSES, STATUS_LABEL } from '../words.ts';
import { badge, eventTable } from './parts.ts';

export interface EventListData {
  items: ConsoleItem[];
  next_before_id: number | null;
}

/** The filters as link parameters (the cursor left out). */
export function filterParams(q: EventQuery, refresh?: string): Record<string, string | number | undefined> {
  return {
    status: q.status, code: q.code, lesson: q.lesson, q: q.q,
    from: q.period?.preset === 'custom' ? q.period.from : undefined,
    to: q.period?.preset === 'custom' ? q.period.to : undefined,
    period: q.period && q.period.preset !== 'custom' ? q.period.preset : undefined,
    limit: q.limit !== 50 ? q.limit : undefined,
    refresh,
  };
}

function problems(funnel: Funnel, summaryPeriod: Period): Html {
  const range = { from: summaryPeriod.from, to: summaryPeriod.to };
  const chips = PROBLEM_STATUSES.map((status) => {
    const rows = funnel.stuck.filter((s) => s.status === status);
    const total = rows.reduce((n, s) => n + s.count, 0);
    const codes = new Map<string, number>();
    for (const r of rows) codes.set(r.code ?? '', (codes.get(r.code ?? '') ?? 0) + r.count);
    const codeLinks = [...codes].sort((a, b) => b[1] - a[1]).slice(0, 4).map(([c, n]) =>
      html` <a class="mono" href="${href('/events', { status, code: c || undefined, ...range })}">${c || 'без кода'}: ${n}</a>`);
    return html`<div class="stat" data-problem="${status}"><div class="l">${STATUS_LABEL[status]}</div>
<div class="v"><a href="${href('/events', { status, ...range })}" data-value="${total}">${count(total)}</a></div><div class="muted">${codeLinks}</div></div>`;
  });
  return html`<section aria-labelledby="problems"><h2 id="problems">Проблемы за ${summaryPeriod.preset === 'custom' ? 'выбранный период' : 'последние 7 дней'}</h2><div class="grid">${chips}</div></section>`;
}

export function eventsView(config: Config, q: EventQuery, data: EventListData, funnel: Funnel, summaryPeriod: Period, lessons: number[], refresh: string | undefined): Html {
  const filters = filterParams(q, refresh);
  const statusOptions = ['', ...EVENT_STATUSES].map((s) =>
    html`<option value="${s}"${s === (q.status ?? '') ? html` selected` : ''}>${s ? `${STATUS_LABEL[s]} (${s})` : 'все'}</option>`);
  const filterForm = html`<form class="filters" method="get" action="${href('/events')}" aria-label="Фильтры" id="filters">
<label>статус<select name="status">${statusOptions}</select></label>
<label>код<input name="code" value="${q.code ?? ''}" list="codes" size="18" placeholder="contact_not_found"></label>
<datalist id="codes">${KNOWN_CODES.map((c) => html`<option value="${c}">`)}</datalist>
<label>урок<input name="lesson" value="${q.lesson ?? ''}" list="lessons" size="5" inputmode="numeric"></label>
<datalist id="lessons">${lessons.map((l) => html`<option value="${l}">`)}</datalist>
<label>с (UTC)<input type="date" name="from" value="${q.period?.fromDay ?? ''}"></label>
<label>по (UTC)<input type="date" name="to" value="${q.period?.toDay ?? ''}"></label>
<label>e-mail (начало) или id пользователя<input type="search" name="q" value="${q.q ?? ''}" size="28"></label>
${refresh ? html`<input type="hidden" name="refresh" value="${refresh}">` : ''}
<button type="submit">Найти</button> <a href="${href('/events', { refresh })}">сбросить</a>
</form>`;

  const replayable = q.status && (REPLAYABLE_STATUSES as readonly string[]).includes(q.status);
  const replayAll = replayable && !q.code && !q.lesson && !q.q
    ? html`<form method="post" action="${href('/replay')}">
<input type="hidden" name="status" value="${q.status}">${q.period ? html`<input type="hidden" name="from" value="${q.period.from}"><input type="hidden" name="to" value="${q.period.to}">` : ''}
<button type="submit" class="secondary" data-action="replay-all">Пробный повтор всех «${STATUS_LABEL[q.status!]}»${q.period ? ' за период' : ''}</button></form>`
    : '';
  const resume = q.status === 'parked' && data.items.length
    ? html`<form method="post" action="${href('/resume')}"><button type="submit" class="secondary" data-action="resume">Вернуть в очередь все ждущие оператора</button></form>`
    : '';
  const actions = data.items.length
    ? html`<div class="actions"><form method="post" action="${href('/replay')}" id="replay"><button type="submit" data-action="replay-selected">Пробный повтор выбранных</button></form>${replayAll}${resume}
<span class="muted">Сначала пробный прогон: он покажет, что будет сделано; повтор — после подтверждения.</span></div>`
    : '';

  const pager = html`<nav class="pager">${q.beforeId ? html`<a href="${href('/events', filters)}">← к новейшим</a>` : ''}${data.next_before_id
    ? html`<a href="${href('/events', { ...filters, before: data.next_before_id })}" rel="next" data-pager="next">более ранние →</a>` : ''}</nav>`;

  const active = [q.status && html`статус ${badge(q.status)}`, q.code && html`код <span class="mono">${q.code}</span>`, q.lesson && html`урок ${q.lesson}`, q.q && html`поиск «${q.q}»`]
    .filter(Boolean) as Html[];
  return html`<h1>События</h1>
${problems(funnel, summaryPeriod)}
<section aria-labelledby="list"><h2 id="list">Список${active.length ? html`: ${active.map((a, i) => html`${i ? ', ' : ''}${a}`)}` : ''}</h2>
${filterForm}
${actions}
${eventTable(config, data.items, { replayForm: data.items.length ? 'replay' : undefined })}
${pager}
</section>`;
}
