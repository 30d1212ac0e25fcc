// Health over time: attempts per hour/day by outcome (server-drawn SVG), commit→move
// latency, the queue, 429s and the shared rate, retries and dead events, the token, the
// drainer, amoCRM's hooks and the events feed behind them (its lag); with the one operator
// action that belongs here (resume parked).
import type { Health } from '../../../db/console.ts';
import { stackedBars, type Column } from '../chart.ts';
import { count, duration, share, time } from '../format.ts';
import { html, outsideText, type Html, type Part } from '../html.ts';
import { href, type Period } from '../query.ts';
import { periodPicker } from './parts.ts';

const SERIES = [
  { key: 'done', label: 'сделано', color: '#16a34a' },
  { key: 'skipped', label: 'пропущено', color: '#9ca3af' },
  { key: 'deferred', label: 'отложено', color: '#60a5fa' },
  { key: 'failed', label: 'ошибка / ждёт оператора', color: '#f59e0b' },
  { key: 'dead', label: 'попытки исчерпаны', color: '#dc2626' },
];

const BUCKET_MS = { hour: 3_600_000, day: 86_400_000 };
const MAX_COLUMNS = 24 * 14;

/** Every bucket of the period, empty ones included, so gaps show as gaps. */
export function columnsOf(health: Health, period: Period, bucket: 'hour' | 'day'): Column[] {
  const size = BUCKET_MS[bucket];
  const byStart = new Map(health.buckets.map((b) => [Math.floor(Date.parse(b.at) / size) * size, b]));
  const first = Math.floor(Date.parse(period.from) / size) * size;
  const end = Date.parse(period.to);
  const columns: Column[] = [];
  for (let at = first; at < end && columns.length < MAX_COLUMNS; at += size) {
    const b = byStart.get(at);
    const iso = new Date(at).toISOString();
    columns.push({
      label: bucket === 'hour' ? iso.slice(5, 13).replace('T', ' ') + ':00' : iso.slice(5, 10),
      title: `${iso.replace('T', ' ').slice(0, bucket === 'hour' ? 16 : 10)} UTC`,
      values: b ? { done: b.done, skipped: b.skipped, deferred: b.deferred, failed: b.failed, dead: b.dead } : {},
    });
  }
  return columns;
}

const stat = (key: string, label: string, value: Part, detail: Part = '') =>
  html`<div class="stat" data-metric="${key}"><div class="l">${label}</div><div class="v">${value}</div>${detail ? html`<div class="muted">${detail}</div>` : ''}</div>`;

function tokenStat(token: Health['token'], nowMs: number): Html {
  if (!token) return stat('token', 'Токен amoCRM', html`<span class="badge s-dead">нет</span>`, 'в базе нет токенов: npm run amocrm -- exchange-code <код>');
  const left = token.expires_at ? Date.parse(token.expires_at) - nowMs : null;
  const ok = token.auth_state === 'ok';
  const state = ok ? html`<span class="badge s-done">в порядке</span>` : html`<span class="badge s-dead">${token.auth_state}</span>`;
  const expiry = left === null ? 'без срока' : left > 0 ? html`истекает через ${duration(left)} (${time(token.expires_at)})` : html`истёк ${time(token.expires_at)}`;
  return stat('token', `Токен amoCRM (${token.kind})`, state, html`${expiry}${token.auth_problem ? html`<br>${outsideText(token.auth_problem, 300)}` : ''}`);
}

/** Scheduled runs every 2 minutes, each window re-reading 2 minutes: a feed keeping up lags under this. */
const FEED_LAG_OK_SECONDS = 600;
const unixTime = (seconds: number | null) => time(seconds === null ? null : new Date(seconds * 1000).toISOString());

function feedStat(feed: Health['feed']): Html {
  if (!feed) return stat('feed', 'Лента событий amoCRM', html`<span class="badge s-skipped">не читалась</span>`, 'её читает плановый запуск, когда задан AMOCRM_HOOK_SECRET');
  const behind = feed.lag_seconds > FEED_LAG_OK_SECONDS;
  const where = feed.from !== null && feed.to !== null
    ? html`читается окно ${unixTime(feed.from)} — ${unixTime(feed.to)}, дальше со страницы ${count(feed.page)}`
    : html`прочитана до ${unixTime(feed.read_through)}`;
  return stat('feed', 'Лента событий amoCRM', html`отстаёт на <span data-value="${feed.lag_seconds}">${duration(feed.lag_seconds * 1000)}</span>`,
    html`${behind ? html`<span class="badge s-parked">догоняет</span> ` : ''}${where}; обновлено ${time(feed.updated_at)}`);
}

export function healthView(health: Health, period: Period, bucket: 'hour' | 'day', keepParams: Record<string, string | undefined>, nowMs: number): Html {
  const { queue, latency, rate, drain } = health;
  const columns = columnsOf(health, period, bucket);
  const otherBucket = bucket === 'hour' ? 'day' : 'hour';
  const attempts = health.buckets.reduce((n, b) => n + b.done + b.skipped + b.failed + b.dead + b.deferred, 0);
  const rateStat = rate
    ? stat('rate', 'Лимит amoCRM', html`${Math.round(rate.rate_factor * 100)}% скорости`,
      html`429 за период: <b data-value="${rate.rate_limited_in_period}">${count(rate.rate_limited_in_period)}</b> (${share(rate.rate_limited_in_period, attempts)} попыток), всего ${count(rate.rate_limited_total)}${rate.paused_until ? html`<br>пауза до ${time(rate.paused_until)}` : ''}${rate.requests_in_period !== null ? html`<br>запросов за период: ${count(rate.requests_in_period)}` : ''}`)
    : stat('rate', 'Лимит amoCRM', '—', 'ещё не было запросов');
  const drainStat = drain
    ? stat('drain', 'Разбор очереди', drain.active ? html`<span class="badge s-processing">идёт</span>` : html`<span class="badge s-skipped">не идёт</span>`,
      html`${drain.active ? html`начат ${time(drain.started_at)}, аренда до ${time(drain.lease_until)}<br>` : ''}последний запуск: ${time(drain.last_woken_at)}; разобрано всего: ${count(drain.drained_total)}`)
    : stat('drain', 'Разбор очереди', html`<span class="badge s-skipped">не запускался</span>`);
  const resume = queue.parked > 0
    ? html`<form method="post" action="${href('/resume')}" class="actions"><button type="submit" data-action="resume">Вернуть в очередь ${count(queue.parked)} ждущих оператора</button><span class="muted">после того как причина устранена (токен, оплата): события пойдут в обработку снова</span></form>`
    : '';
  return html`<h1>Здоровье синхронизации</h1>
${periodPicker('/health', period, keepParams)}
<section aria-labelledby="chart"><h2 id="chart">Попытки по ${bucket === 'hour' ? 'часам' : 'дням'} <a class="muted" href="${href('/health', { ...keepParams, bucket: otherBucket })}">(по ${otherBucket === 'hour' ? 'часам' : 'дням'})</a></h2>
${stackedBars(columns, SERIES, `Исходы попыток по ${bucket === 'hour' ? 'часам' : 'дням'}, UTC`)}
</section>
<div class="grid">
${stat('queue', 'Очередь', html`<span data-value="${queue.waiting}">${count(queue.waiting)}</span> ждут`, html`к отправке сейчас: ${count(queue.due)}; в обработке: ${count(queue.processing)}`)}
${stat('oldest', 'Старейшее ожидающее', queue.oldest_waiting_seconds === null ? 'нет' : duration(queue.oldest_waiting_seconds * 1000))}
${stat('parked', 'Ждут оператора', html`<a href="${href('/events', { status: 'parked' })}" data-value="${queue.parked}">${count(queue.parked)}</a>`)}
${stat('latency', 'От урока до этапа', html`p50 ${duration(latency.p50_ms)}`, html`p95 ${duration(latency.p95_ms)}; событий: ${count(latency.n)}`)}
${stat('retries', 'Повторы за период', html`<span data-value="${health.retries_in_period}">${count(health.retries_in_period)}</span>`)}
${stat('dead', 'Попытки исчерпаны (всего)', html`<a href="${href('/events', { status: 'dead' })}" data-value="${health.dead_total}">${count(health.dead_total)}</a>`)}
${rateStat}
${tokenStat(health.token, nowMs)}
${drainStat}
${stat('hooks', 'Хуки amoCRM', html`${count(health.hooks.pending)} ждут`, html`не разобраны (нужен оператор): ${count(health.hooks.flagged)}`)}
${feedStat(health.feed)}
</div>
${resume}`;
}
