// Pieces several views share: status badges, the period picker, the event table.
import type { Config } from '../../../config.ts';
import type { ConsoleItem } from '../../../db/console.ts';
import { dealUrl, time } from '../format.ts';
import { html, outsideText, trusted, type Html } from '../html.ts';
import { href, PERIOD_PRESETS, type Period } from '../query.ts';
import { OUTCOME_LABEL, STATUS_LABEL } from '../words.ts';

export const badge = (status: string, labels: Record<string, string> = STATUS_LABEL) =>
  html`<span class="badge s-${status.replace(/[^a-z_]/g, '')}" data-status="${status}">${labels[status] ?? status}</span>`;

export const outcomeBadge = (outcome: string) => badge(outcome, OUTCOME_LABEL);

export const code = (value: string | null | undefined) => (value ? html`<span class="mono">${value}</span>` : html`<span class="muted">—</span>`);

export function dealLink(config: Config, leadId: number | null | undefined): Html {
  if (!leadId) return html`<span class="muted">—</span>`;
  return html`<a href="${dealUrl(config, leadId)}" rel="noopener noreferrer" target="_blank" data-deal="${leadId}">${leadId}</a>`;
}

/** Presets as links and a from/to form; `keepParams` are carried over (filters, refresh). */
export function periodPicker(path: string, period: Period, keepParams: Record<string, string | undefined> = {}): Html {
  const presets = Object.entries(PERIOD_PRESETS).map(([key, p]) =>
    key === period.preset
      ? html`<b>${p.label}</b>`
      : html`<a href="${href(path, { ...keepParams, period: key })}">${p.label}</a>`);
  const hidden = Object.entries(keepParams).filter(([, v]) => v).map(([k, v]) => html`<input type="hidden" name="${k}" value="${v}">`);
  return html`<form class="filters" method="get" action="${href(path)}" aria-label="Период">
<span>Период: ${presets.map((p, i) => html`${i ? ' · ' : ''}${p}`)}</span>
<label>с (UTC)<input type="date" name="from" value="${period.fromDay}"></label>
<label>по (UTC, включительно)<input type="date" name="to" value="${period.toDay}"></label>
${hidden}<button type="submit" class="secondary">Показать</button>
<span class="muted">${period.from.replace('T', ' ').slice(0, 16)} — ${period.to.replace('T', ' ').slice(0, 16)} UTC</span>
</form>`;
}

export interface EventTableOptions {
  /** The id of the replay form the checkboxes belong to (absent: no checkboxes). */
  replayForm?: string;
}

export function eventTable(config: Config, items: ConsoleItem[], o: EventTableOptions = {}): Html {
  if (!items.length) return html`<p class="muted" data-empty="events">Событий нет.</p>`;
  const rows = items.map((e) => html`<tr data-event="${e.id}" data-status="${e.status}">
${o.replayForm ? html`<td><input type="checkbox" name="ids" value="${e.id}" form="${o.replayForm}" aria-label="выбрать событие ${e.id}"></td>` : ''}
<td class="n"><a href="${href(`/events/${e.id}`)}">${e.id}</a></td>
<td>${badge(e.status)}</td>
<td class="mono" data-field="email">${e.email ? html`<a href="${href('/student', { q: e.user_id })}">${e.email}</a>` : html`<a href="${href('/student', { q: e.user_id })}" class="muted">${e.user_id}</a>`}</td>
<td class="n">${e.lesson_id}</td>
<td class="n">${e.attempts}</td>
<td>${code(e.code)}</td>
<td class="reason" data-field="reason">${outsideText(e.reason, 200) ?? ''}</td>
<td>${dealLink(config, e.lead_id)}</td>
<td>${time(e.updated_at)}</td>
</tr>`);
  return html`<div class="scroll"><table data-table="events">
<thead><tr>${o.replayForm ? trusted('<th><span class="muted">✓</span></th>') : ''}<th class="n">№</th><th>статус</th><th>e-mail</th><th class="n">урок</th><th class="n">попыток</th><th>код</th><th>причина</th><th>сделка</th><th>обновлено</th></tr></thead>
<tbody>${rows}</tbody></table></div>`;
}
