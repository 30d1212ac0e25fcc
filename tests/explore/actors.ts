// The actors of a schedule, each the real entry point of the sync on its own runtime (its
// own holder, its database calls and amoCRM requests as steps): a student completing
// lessons, the lesson webhook (several instances), the drainer, the scheduled run, a
// replay, a sales manager in amoCRM, amoCRM's hook deliveries and the feed reader.
import qs from 'qs';
import { handleCrmEvents } from '../../lib/http/crm-events.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { reconcileFeed } from '../../lib/mirror/feed.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { runReplay, type ReplayRequest } from '../../lib/sync/replay.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { dbWebhookBody, STAGE } from '../helpers/stack.ts';
import { newActor, type Actor } from './gates.ts';
import type { HookPlan, ManagerAction, Scenario } from './scenario.ts';
import type { Captured, World } from './world.ts';

export interface Student { userId: string; leadId: number; email: string }

/** What the actors of one schedule share: the world, the students, actors by kind (for kills). */
export interface Cast {
  w: World;
  students: Student[];
  results: Promise<unknown>[];
  byKind: Record<string, Actor[]>;
  scenario: Scenario;
}

export function actor(cast: Cast, kind: string, name: string): Actor {
  const list = (cast.byKind[kind] ??= []);
  const kill = cast.scenario.kills.find((k) => k.actor === kind && k.which === list.length);
  const a = newActor(name, kill?.atStep);
  list.push(a);
  return a;
}

const text = async (res: Response) => `${res.status} ${(await res.text()).slice(0, 160)}`;

/** A student completes lessons in order; each completion rings the webhook 0, 1 or 2 times. */
export function student(cast: Cast, i: number): void {
  const { w } = cast;
  const st = cast.students[i]!;
  const plan = cast.scenario.students[i]!;
  const me = newActor(`student${i}`);
  const next = async (k: number): Promise<void> => {
    const lesson = plan.lessons[k];
    if (lesson === undefined) return;
    const eventId = await w.g.step(me, `completes lesson ${lesson}`, () => w.s.complete(st.userId, lesson));
    for (let n = 0; n < (plan.webhooks[k] ?? 1); n++) {
      const a = actor(cast, 'webhook', `webhook(s${i} L${lesson}#${n})`);
      w.g.spawn(a, 'invoked', async () => {
        const req = w.s.webhookRequest({ ...dbWebhookBody(st.userId, lesson), event_id: eventId });
        w.g.trace.push(`  ${a.name} → ${await text(await handleLessonCompleted(req, async () => w.runtime(a)))}`);
      }, cast.results);
    }
    await next(k + 1);
  };
  w.g.spawn(me, 'begins', () => next(0), cast.results);
}

export function drainer(cast: Cast): void {
  const a = actor(cast, 'drainer', `drainer${cast.byKind.drainer?.length ?? 0}`);
  cast.w.g.spawn(a, 'woken', async () => {
    const r = await runDrain(cast.w.runtime(a), { budgetMs: 15_000, reserveMs: 1_000, batchSize: 25, lookahead: false });
    cast.w.g.trace.push(`  ${a.name} → claimed=${r.claimed} ${JSON.stringify(r.outcomes)} ${r.stoppedBy}`);
  }, cast.results);
}

export function sweep(cast: Cast): void {
  const a = actor(cast, 'sweep', `sweep${cast.byKind.sweep?.length ?? 0}`);
  cast.w.g.spawn(a, 'scheduled', async () => {
    const r = await runSweep(cast.w.runtime(a), { budgetMs: 20_000, reserveMs: 2_000 });
    cast.w.g.trace.push(`  ${a.name} → claimed=${r.claimed} ${JSON.stringify(r.outcomes)} hooks=${r.hooksApplied} feed=${r.feedChanged}`);
  }, cast.results);
}

export function replay(cast: Cast, which: number, force: boolean): void {
  const st = cast.students[which % cast.students.length]!;
  const a = actor(cast, 'replay', 'replay');
  cast.w.g.spawn(a, 'requested', async () => {
    const rows = await cast.w.g.step(a, 'selects the student\'s events', () => cast.w.sql('select id from amocrm.sync_events where user_id = $1 order by id', [st.userId]));
    if (!rows.length) return;
    const req: ReplayRequest = { ids: rows.map((r) => Number(r.id)), force, limit: 50, dryRun: false, afterId: 0 };
    const r = await runReplay(cast.w.runtime(a), req);
    cast.w.g.trace.push(`  replay → ${r.results.map((x) => `${x.id}:${x.before}→${x.outcome}`).join(' ')}`);
  }, cast.results);
}

export function manager(cast: Cast, i: number, action: ManagerAction): void {
  const { w } = cast;
  const st = cast.students[i]!;
  const a = newActor(`manager(s${i})`);
  w.g.spawn(a, 'opens the deal', () => w.g.step(a, `${action} deal ${st.leadId}`, async () => {
    w.clock.step();
    if (action === 'win') w.s.amo.managerWin(st.leadId);
    else if (action === 'lose') w.s.amo.managerLose(st.leadId);
    else w.s.amo.managerMove(st.leadId, { statusId: action === 'paid' ? STAGE.paid : STAGE.incoming });
    await w.collectHooks();
  }), cast.results);
}

export function feedReader(cast: Cast): void {
  const a = actor(cast, 'feed', `feed${cast.byKind.feed?.length ?? 0}`);
  cast.w.g.spawn(a, 'reads the events feed', async () => {
    const r = await reconcileFeed(cast.w.runtime(a));
    cast.w.g.trace.push(`  ${a.name} → read=${r.read} changed=${r.changed}`);
  }, cast.results);
}

/** amoCRM's short status form: no name, no modification time (as some deliveries come). */
export function shortForm(body: string): string {
  const parsed = qs.parse(body) as { leads?: { status?: Record<string, Record<string, unknown>> }; account?: Record<string, unknown> };
  const items = Object.values(parsed.leads?.status ?? {}).map((l) => ({
    id: l.id, status_id: l.status_id, pipeline_id: l.pipeline_id, old_status_id: l.old_status_id, old_pipeline_id: l.old_pipeline_id,
  }));
  const account = { subdomain: parsed.account?.subdomain, id: parsed.account?.id };
  return qs.stringify({ leads: { status: items }, account }, { arrayFormat: 'indices', format: 'RFC1738' });
}

/** One copy of a hook delivery, posted to the real endpoint and applied after the answer. */
export async function postHook(w: World, a: Actor | undefined, c: Captured, plan: HookPlan, copy: number): Promise<string> {
  const short = plan.form === 'short' && c.attempt.action === 'status';
  const body = short ? shortForm(c.attempt.body) : c.attempt.body;
  const requestId = plan.sameId || copy === 0 ? c.attempt.requestId : `${c.attempt.requestId}-again${copy}`;
  const after: Promise<unknown>[] = [];
  const req = new Request(`http://localhost/api/amocrm/crm-events/${encodeURIComponent(w.config.hooks.secret!)}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'user-agent': 'amoCRM-Webhooks/3.0', 'x-amocrm-requestid': requestId },
    body,
  });
  const res = await handleCrmEvents(req, async () => w.runtime(a), { params: { secret: w.config.hooks.secret! }, waitUntil: (p: Promise<unknown>) => void after.push(p) } as never);
  await Promise.all(after);
  return `${res.status}${short ? ' (short form)' : ''}`;
}

/** During a schedule: each delivery amoCRM makes is lost, or posted once or more at moments the scheduler picks. */
export function hookDeliveries(cast: Cast): void {
  const plans = cast.scenario.hooks;
  cast.w.onHook = (c) => {
    const plan = plans[c.index % plans.length]!;
    const what = `${c.attempt.action} ${c.attempt.leadIds.join(',')}`;
    if (plan.copies === 0) cast.w.g.trace.push(`  ✉ hook#${c.index} (${what}) lost`);
    for (let copy = 0; copy < plan.copies; copy++) {
      const a = newActor(`hook#${c.index}.${copy} (${what})`);
      cast.w.g.spawn(a, 'delivered', async () => {
        cast.w.g.trace.push(`  ${a.name} → ${await postHook(cast.w, a, c, plan, copy)}`);
      }, cast.w.spawned);
    }
  };
}
