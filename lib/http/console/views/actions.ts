// What an action shows: the dry run of a replay with its confirmation, the replay's
// results, resuming parked events, and a refused or malformed request (the actions
// themselves: ../actions.ts).
import type { Config } from '../../../config.ts';
import type { ReplayRequest, ReplayResult } from '../../../sync/replay.ts';
import { count } from '../format.ts';
import { html, outsideText, type Html } from '../html.ts';
import { href } from '../query.ts';
import { STATUS_LABEL } from '../words.ts';
import { badge, code, dealLink } from './parts.ts';

const OUTCOME_WORDS: Record<string, string> = {
  would_replay: 'будет повторено',
  not_found: 'нет такого события',
  not_replayed: 'не повторено',
};

function outcomeCell(outcome: string): Html {
  if (OUTCOME_WORDS[outcome]) return html`<span class="badge ${outcome === 'would_replay' ? 's-pending' : 's-skipped'}" data-outcome="${outcome}">${OUTCOME_WORDS[outcome]}</span>`;
  if (outcome.startsWith('not_replayable')) return html`<span class="badge s-skipped" data-outcome="not_replayable">не повторяется: ${outcome.replace(/^not_replayable:\s*/, '')}</span>`;
  return html`<span data-outcome="${outcome}">${badge(outcome)}</span>`;
}

function resultTable(config: Config, result: ReplayResult): Html {
  return html`<div class="scroll"><table data-table="replay"><thead><tr><th class="n">событие</th><th>было</th><th>итог</th><th>код</th><th>сообщение</th><th>сделка</th></tr></thead><tbody>
${result.results.map((r) => html`<tr data-event="${r.id}" data-outcome="${r.outcome}">
<td class="n">${r.before === 'none' ? r.id : html`<a href="${href(`/events/${r.id}`)}">${r.id}</a>`}</td><td>${r.before === 'none' ? '—' : badge(r.before)}</td><td>${outcomeCell(r.outcome)}</td>
<td>${code(r.code)}</td><td class="reason">${outsideText(r.message, 300) ?? ''}</td><td>${dealLink(config, r.lead_id)}</td></tr>`)}
</tbody></table></div>`;
}

/** Describes the selection in words: which events the request names. */
export function selectionWords(req: ReplayRequest): string {
  if (req.ids) return `события ${req.ids.slice(0, 20).join(', ')}${req.ids.length > 20 ? ` и ещё ${req.ids.length - 20}` : ''}`;
  const period = req.from || req.to ? ` за ${req.from ?? '…'} — ${req.to ?? '…'}` : '';
  return `все «${STATUS_LABEL[req.status!] ?? req.status}»${period}, не больше ${req.limit}`;
}

export function dryRunView(config: Config, req: ReplayRequest, result: ReplayResult): Html {
  const will = result.results.filter((r) => r.outcome === 'would_replay').map((r) => r.id);
  const confirm = will.length
    ? html`<form method="post" action="${href('/replay')}" class="actions">
${will.map((id) => html`<input type="hidden" name="ids" value="${id}">`)}
${req.force ? html`<input type="hidden" name="force" value="1">` : ''}
<input type="hidden" name="step" value="confirm">
<button type="submit" class="danger" data-action="confirm-replay">Подтвердить: повторить ${count(will.length)}</button>
<a href="${href('/events')}">отмена</a></form>
<p class="muted">Повторены будут ровно эти события. Сделанное не переделывается: сделки двигаются только вперёд.</p>`
    : html`<p class="note warn" data-empty="replay">Повторять нечего: ни одно из выбранных событий не подходит для повтора.</p>`;
  const more = result.next
    ? html`<form method="post" action="${href('/replay')}" class="actions">
<input type="hidden" name="status" value="${req.status ?? ''}">${req.from ? html`<input type="hidden" name="from" value="${req.from}">` : ''}${req.to ? html`<input type="hidden" name="to" value="${req.to}">` : ''}
<input type="hidden" name="afterId" value="${result.next.afterId}"><input type="hidden" name="limit" value="${req.limit}">
<button type="submit" class="secondary">Есть ещё: пробный прогон следующих ${req.limit}</button></form>`
    : '';
  return html`<h1>Пробный повтор</h1>
<p>Выбрано: ${selectionWords(req)}. Найдено событий: <b data-value="${result.selected}">${count(result.selected)}</b>, будет повторено: <b data-metric="would-replay" data-value="${will.length}">${count(will.length)}</b>. Ничего ещё не отправлено.</p>
${confirm}
${resultTable(config, result)}
${more}`;
}

export function replayResultView(config: Config, result: ReplayResult): Html {
  const unfinished = !result.complete && result.next
    ? html`<p class="note warn">Не всё успели за один запрос: повторите пробный прогон, чтобы продолжить.</p>` : '';
  return html`<h1>Повтор выполнен</h1>
<p>Повторено событий: <b data-metric="replayed" data-value="${result.replayed}">${count(result.replayed)}</b> из ${count(result.selected)}.</p>
${unfinished}
${resultTable(config, result)}
<p><a href="${href('/events')}">к списку событий</a></p>`;
}

export function resumeResultView(resumed: number): Html {
  return html`<h1>Возврат в очередь</h1>
<p class="note" data-metric="resumed" data-value="${resumed}">${resumed ? `Возвращено в очередь событий: ${count(resumed)}. Их обработает вебхук или плановый запуск.` : 'Событий, ждущих оператора, нет.'}</p>
<p><a href="${href('/health')}">к здоровью</a> · <a href="${href('/events', { status: 'pending' })}">ожидающие события</a></p>`;
}

export function problemView(title: string, message: string, back = href('')): Html {
  return html`<h1>${title}</h1><p class="note error" role="alert" data-error>${message}</p><p><a href="${back}">назад в консоль</a></p>`;
}
