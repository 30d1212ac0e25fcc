// The console's views (GET): read through lib/db/console.ts, render with views/.
import { consoleEvent, consoleEvents, consoleFunnel, consoleHealth, consoleStudent } from '../../db/console.ts';
import type { Runtime } from '../../runtime.ts';
import { html } from './html.ts';
import { ConsoleInputError, href, keep, parseBucket, parseEventQuery, parsePeriod } from './query.ts';
import type { RenderContext, Rendered } from './render.ts';
import { eventView } from './views/event.ts';
import { eventsView, filterParams } from './views/events.ts';
import { funnelView } from './views/funnel.ts';
import { configuredFunnels, studentFunnels } from './views/funnels.ts';
import { displayFacts, funnelsInForce } from './funnels.ts';
import { healthView } from './views/health.ts';
import { studentView } from './views/student.ts';

export async function funnelPage(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const period = parsePeriod(ctx.params, ctx.nowMs);
  // The configuration first: the counts name each funnel's steps from the version in force.
  const config = await funnelsInForce(rt);
  const [funnel, facts] = await Promise.all([consoleFunnel(rt.db, { from: period.from, to: period.to }), displayFacts(rt, config?.funnels ?? [])]);
  return {
    title: 'Воронка', view: 'funnel', refreshes: true,
    body: html`${funnelView(funnel, facts, period, keep(ctx.params, ['refresh']))}
<section aria-labelledby="configured"><h2 id="configured">Настроенные воронки</h2>${configuredFunnels(config, facts)}<p><a href="${href('/funnels')}">изменить воронки, история, откат</a></p></section>`,
    data: { period, ...funnel, configuration: config },
  };
}

export async function healthPage(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const period = parsePeriod(ctx.params, ctx.nowMs, '24h');
  const bucket = parseBucket(ctx.params, period);
  const health = await consoleHealth(rt.db, { from: period.from, to: period.to, bucket });
  return {
    title: 'Здоровье', view: 'health', refreshes: true,
    body: healthView(health, period, bucket, keep(ctx.params, ['refresh', 'bucket']), ctx.nowMs),
    data: { period, bucket, ...health },
  };
}

export async function eventsPage(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const q = parseEventQuery(ctx.params, ctx.nowMs);
  const summaryPeriod = q.period ?? parsePeriod(new URLSearchParams(), ctx.nowMs);
  const [list, funnel] = await Promise.all([
    consoleEvents(rt.db, { status: q.status, code: q.code, lesson: q.lesson, from: q.period?.from, to: q.period?.to, q: q.q, beforeId: q.beforeId, limit: q.limit }),
    consoleFunnel(rt.db, { from: summaryPeriod.from, to: summaryPeriod.to }),
  ]);
  const lessons = [...new Set(funnel.funnels.flatMap((f) => f.steps.flatMap((s) => s.lessons)))].sort((a, b) => a - b);
  const refresh = ctx.params.get('refresh')?.trim() || undefined;
  return {
    title: 'События', view: 'events', refreshes: true,
    body: eventsView(rt.config, q, list, funnel, summaryPeriod, lessons, refresh),
    data: {
      filters: filterParams(q), ...list,
      problems: { period: summaryPeriod, stuck: funnel.stuck.filter((s) => ['failed', 'dead', 'parked'].includes(s.status)) },
    },
  };
}

export async function eventPage(rt: Runtime, idText: string): Promise<Rendered | null> {
  if (!/^\d{1,15}$/.test(idText)) return null;
  const detail = await consoleEvent(rt.db, Number(idText));
  if (!detail) return null;
  return { title: `Событие ${detail.event.id}`, view: 'events', refreshes: true, body: eventView(rt.config, detail), data: { ...detail } };
}

export async function studentPage(rt: Runtime, ctx: RenderContext): Promise<Rendered> {
  const q = ctx.params.get('q')?.trim() || undefined;
  if (q && q.length > 200) throw new ConsoleInputError('q', 'не длиннее 200 символов');
  const story = q ? await consoleStudent(rt.db, q) : null;
  const config = story ? await funnelsInForce(rt) : null;
  const facts = story ? await displayFacts(rt, config?.funnels ?? []) : null;
  const inFunnels = story && facts
    ? html`<section aria-labelledby="student-funnels"><h2 id="student-funnels">Воронки студента</h2>${studentFunnels(config, facts, story.events)}</section>` : '';
  return {
    status: !q ? (ctx.asJson ? 400 : 200) : story ? 200 : 404,
    title: story?.email ? `Студент ${story.email}` : 'Студент', view: 'student', refreshes: Boolean(story),
    body: html`${studentView(rt.config, q, story)}${inFunnels}`,
    data: q ? (story ? { ...story } : { error: `no student with e-mail or user id ${q}` }) : { error: 'give q: the exact e-mail or user id' },
  };
}

export const notFound = (what: string): Rendered => ({
  status: 404, title: 'Не найдено', view: 'action',
  body: html`<h1>Не найдено</h1><p class="note warn" data-error>${what}</p>`,
  data: { error: what },
});
