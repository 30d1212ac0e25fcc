// One event: what it is, what happened at each attempt, the deal (with its page in
// amoCRM) and its stage changes, what to do, and replay.
import type { Config } from '../../../config.ts';
import type { consoleEvent } from '../../../db/console.ts';
import { dealUrl, stageName, time } from '../format.ts';
import { html, outsideText, type Html } from '../html.ts';
import { href } from '../query.ts';
import { adviceFor } from '../words.ts';
import { badge, code, dealLink, outcomeBadge } from './parts.ts';

export type EventDetail = NonNullable<Awaited<ReturnType<typeof consoleEvent>>>;
export type Deal = EventDetail['deal'];
export type History = EventDetail['history'];

export function dealSection(config: Config, deal: Deal, history: History, fallbackLeadId: number | null): Html {
  const leadId = deal?.lead_id ?? fallbackLeadId;
  const summary = deal
    ? html`<table><tbody>
<tr><th>сделка</th><td>${dealLink(config, deal.lead_id)} <a href="${dealUrl(config, deal.lead_id)}" rel="noopener noreferrer" target="_blank">открыть в amoCRM ↗</a></td></tr>
<tr><th>воронка</th><td>${deal.pipeline_id ?? '—'}${deal.pipeline_id === config.pipelineId ? ' (Tripwire)' : ''}</td></tr>
<tr><th>этап</th><td data-field="deal-stage">${stageName(config, deal.status_id)}</td></tr>
<tr><th>закрыта</th><td>${deal.closed === 'won' ? 'успешно' : deal.closed === 'lost' ? 'не реализована' : 'нет'}${deal.deleted ? ' · удалена в amoCRM' : ''}</td></tr>
<tr><th>изменена в amoCRM</th><td>${time(deal.modified_at)}</td></tr>
</tbody></table>`
    : leadId
      ? html`<p>Сделка ${dealLink(config, leadId)} (<a href="${dealUrl(config, leadId)}" rel="noopener noreferrer" target="_blank">открыть в amoCRM ↗</a>). Её изменения в amoCRM сюда ещё не приходили.</p>`
      : html`<p class="muted">Сделка ещё не найдена.</p>`;
  const changes = history.length
    ? html`<h3>Смены этапа</h3><div class="scroll"><table data-table="history"><thead><tr><th>когда</th><th>с этапа</th><th>на этап</th><th>кто</th><th>откуда известно</th></tr></thead><tbody>
${history.map((h) => html`<tr><td>${time(h.changed_at)}</td><td>${stageName(config, h.old_status_id)}</td><td>${stageName(config, h.status_id)}</td><td>${h.changed_by ?? '—'}</td><td>${h.source}</td></tr>`)}
</tbody></table></div>`
    : '';
  return html`<section aria-labelledby="deal"><h2 id="deal">Сделка</h2>${summary}${changes}</section>`;
}

export function attemptTimeline(attempts: { attempt: number; at: string; outcome: string; code: string | null; message: string | null; event_id?: number }[]): Html {
  if (!attempts.length) return html`<p class="muted">Попыток ещё не было.</p>`;
  return html`<ol class="timeline" data-list="attempts">${attempts.map((a) => html`<li data-attempt="${a.attempt}">
${time(a.at)} · ${a.event_id ? html`<a href="${href(`/events/${a.event_id}`)}">событие ${a.event_id}</a> · ` : ''}попытка ${a.attempt} · ${outcomeBadge(a.outcome)} ${a.code ? code(a.code) : ''}
${a.message ? html`<div class="reason" data-field="message">${outsideText(a.message)}</div>` : ''}</li>`)}</ol>`;
}

export function replayButton(eventId: number, status: string): Html {
  // Replay takes failed, dead, parked, skipped and pending events as they are; done ones only with force.
  const force = status === 'done';
  return html`<form method="post" action="${href('/replay')}" class="actions">
<input type="hidden" name="ids" value="${eventId}">
${force ? html`<label><input type="checkbox" name="force" value="1"> и если сделано (force)</label>` : ''}
<button type="submit" data-action="replay-event">Пробный повтор события</button>
<span class="muted">покажет, что будет сделано; повтор — после подтверждения</span></form>`;
}

export function eventView(config: Config, d: EventDetail): Html {
  const e = d.event;
  const stage = e.funnel_key === undefined || e.funnel_key === 'tripwire' ? config.stageIds?.[e.stage_number - 1] : undefined;
  return html`<h1>Событие ${e.id} ${badge(e.status)}</h1>
<section aria-labelledby="what"><h2 id="what">Что делать</h2><p class="note${e.status === 'done' ? '' : ' warn'}" data-field="advice">${adviceFor(e.status, e.code)}</p>
${replayButton(e.id, e.status)}</section>
<section aria-labelledby="facts"><h2 id="facts">Событие</h2><div class="scroll"><table><tbody>
<tr><th>студент</th><td class="mono" data-field="email"><a href="${href('/student', { q: e.user_id })}">${e.email ?? '(нет e-mail)'}</a> <span class="muted">${e.user_id}</span></td></tr>
<tr><th>урок → этап</th><td>${e.lesson_id} → этап ${e.stage_number}${stage ? ` (${stage})` : ' (не настроен)'}</td></tr>
<tr><th>статус</th><td>${badge(e.status)}${e.retryable === true ? ' · будет повторено' : e.retryable === false ? ' · без повторов' : ''}</td></tr>
<tr><th>код</th><td>${code(e.code)}</td></tr>
<tr><th>причина</th><td class="reason" data-field="reason">${outsideText(e.reason) ?? '—'}</td></tr>
<tr><th>попыток</th><td>${e.attempts}</td></tr>
<tr><th>записано</th><td>${time(e.created_at)}</td></tr>
<tr><th>обновлено</th><td>${time(e.updated_at)}</td></tr>
<tr><th>дошло до этапа</th><td>${time(e.done_at)}</td></tr>
${['pending', 'failed'].includes(e.status) ? html`<tr><th>следующая попытка</th><td>${time(e.next_attempt_at)}</td></tr>` : ''}
<tr><th>контакт / этап при записи</th><td>${e.contact_id ?? '—'} / ${stageName(config, e.status_id)}</td></tr>
</tbody></table></div></section>
<section aria-labelledby="attempts"><h2 id="attempts">Попытки</h2>${attemptTimeline(d.attempts)}</section>
${dealSection(config, d.deal, d.history, e.lead_id)}`;
}
