// The sync's steps for claimed events: find each student's deal, decide forward-only,
// move, record. One implementation for one event (the webhook, replay) and for a batch
// (the drainer, the scheduled run): a batch only shares amoCRM calls — remembered deals
// and the deals of searched students are read together (250 per request), moves go 50
// per PATCH. Contact searches go SEARCHES_IN_FLIGHT at a time (each still takes its own
// slot from the shared limiter), and found deals and outcomes are written in one
// database call each. The error boundaries and the claims are the Batch's (batch.ts).
import { AmoError } from '../amocrm/errors.ts';
import { MAX_BATCH_MOVES, type Lead, type PipelineStatus } from '../amocrm/resources.ts';
import { chunks } from '../chunks.ts';
import { forgetLead, rememberLeads, type ClaimedEvent } from '../db/outbox.ts';
import { getCachedPipeline, putCachedPipeline } from '../db/pipeline-cache.ts';
import { errorText } from '../log.ts';
import { Batch } from './batch.ts';
import { decideMove, type MoveDecision } from './decide.ts';
import type { SyncDeps } from './deps.ts';
import { chooseFromSearch, chosenOrThrow, noEmail, rememberedStillUsable, searchStudent, type StudentSearch } from './find-deal.ts';
import { queueNotesOfMoves } from './deal-notes.ts';
import { closedByMirrorOutcome, decisionOutcome, deferredOutcome, recordOutcomes, type EventOutcome, type Found } from './outcome.ts';
import { routeOf, type Route } from './route.ts';

export { UNCERTAIN_MOVE_HOLD_MS } from './batch.ts';

interface Plan {
  event: ClaimedEvent;
  found: Found;
  decision: MoveDecision;
  target: number;
  pipelineId: number;
}

/** Each open event's funnel, pipeline and step; an event without one fails alone. */
type Routes = Map<ClaimedEvent, Route>;

/**
 * Contact searches of one batch in flight together. One at a time, amoCRM's answer time
 * (100–300 ms) and the slot's round trip cap a drainer near 4.4 requests/s; three keep
 * the limiter's 6/s busy. The limiter still spaces every request.
 */
export const SEARCHES_IN_FLIGHT = 3;

export async function processEvents(deps: SyncDeps, events: ClaimedEvent[], holder: string): Promise<EventOutcome[]> {
  const batch = new Batch(deps, events, holder);
  for (const event of events) if (!event.email) await batch.guarded(event, async () => { throw noEmail(); });
  const routes = await routeEvents(batch);
  const found = await readRememberedDeals(batch, routes);
  await searchUnknownStudents(batch, found, routes);
  const plans = await planMoves(batch, found, routes);
  await sendMoves(batch, plans);
  // Nothing to move (already there, or skipped): the decision is the outcome.
  for (const plan of plans) if (!batch.outcomes.has(plan.event)) batch.settle(plan.event, decisionOutcome(deps, plan.event, plan.found, plan.decision, plan.target));
  await queueNotesOfMoves(deps, events.map((e) => ({ eventId: e.id, done: batch.outcomes.get(e)?.write.outcome === 'done', route: routes.get(e) })));
  // Every outcome in one write, then one log line each.
  return recordOutcomes(deps, holder, events.map((e) => batch.outcomes.get(e)!));
}

/**
 * The funnels in force (read again only when the events say a newer version was saved),
 * and each event's route in them: its funnel's pipeline and the step of its lesson.
 */
async function routeEvents(batch: Batch): Promise<Routes> {
  const { settings } = batch.deps;
  const routes: Routes = new Map();
  const open = batch.open();
  if (!open.length) return routes;
  const newest = Math.max(...open.map((e) => e.funnels_version ?? 0));
  const funnels = await batch.shared(open, () => settings.funnels.current(newest || null));
  if (!funnels) return routes;
  for (const event of open) {
    const route = await batch.guarded(event, async () => routeOf(funnels, event));
    if (route) routes.set(event, route);
  }
  return routes;
}

/**
 * Remembered deals: those the mirror knows are closed need no read; the others are read
 * together. A remembered deal that is gone, closed or out of its funnel's pipeline is
 * forgotten and its student searched afresh (left without a found deal here).
 */
async function readRememberedDeals(batch: Batch, routes: Routes): Promise<Map<ClaimedEvent, Found>> {
  const { deps } = batch;
  for (const event of batch.open()) if (event.cached_lead_id && event.cached_lead_closed) batch.settle(event, closedByMirrorOutcome(deps, event));
  const found = new Map<ClaimedEvent, Found>();
  await batch.keepClaims();
  const remembered = batch.open().filter((e) => e.cached_lead_id);
  const leads = remembered.length ? await batch.shared(remembered, () => deps.amo.getLeads(remembered.map((e) => e.cached_lead_id!))) : [];
  const byId = new Map((leads ?? []).map((l) => [l.id, l] as const));
  for (const event of remembered.filter((e) => !batch.outcomes.has(e))) {
    const lead = byId.get(event.cached_lead_id!);
    if (rememberedStillUsable(lead, routes.get(event)!.pipelineId)) found.set(event, { lead: lead! });
    else await batch.guarded(event, () => forgetLead(deps.db, event.user_id, event.cached_lead_id!));
  }
  return found;
}

/** Students with no usable deal: one contact search each, then all their deals in one read. */
async function searchUnknownStudents(batch: Batch, found: Map<ClaimedEvent, Found>, routes: Routes): Promise<void> {
  const { deps } = batch;
  const toSearch = batch.open().filter((e) => !found.has(e));
  const searches = new Map<ClaimedEvent, StudentSearch>();
  const queue = [...toSearch];
  await Promise.all(Array.from({ length: Math.min(SEARCHES_IN_FLIGHT, queue.length) }, async () => {
    for (let event = queue.shift(); event; event = queue.shift()) {
      await batch.keepClaims();
      if (batch.outcomes.has(event)) continue;
      const search = await batch.guarded(event, () => searchStudent(deps.amo, event!.email!, batch.stopSignal));
      if (search) searches.set(event, search);
    }
  }));
  // In the batch's order, whatever order the searches came back in.
  const searched = toSearch.filter((e) => searches.has(e) && !batch.outcomes.has(e));
  await batch.keepClaims();
  const candidateIds = searched.flatMap((e) => searches.get(e)!.exactLeadIds);
  const candidates = candidateIds.length ? await batch.shared(searched, () => deps.amo.getLeads(candidateIds)) : [];
  const chosenNow: Parameters<typeof rememberLeads>[1] = [];
  for (const event of searched.filter((e) => !batch.outcomes.has(e))) {
    const { pipelineId } = routes.get(event)!;
    const chosen = await batch.guarded(event, async () => chosenOrThrow(chooseFromSearch(searches.get(event)!, candidates ?? [], pipelineId)));
    if (!chosen) continue;
    found.set(event, chosen);
    chosenNow.push({ userId: event.user_id, pipelineId, leadId: chosen.lead.id, contactId: chosen.contactId, email: event.email });
  }
  // Kept now, all in one call: a deferred, retried or failed event never pays its search
  // again. Losing this write costs only that (a done event records its deal anyway).
  await rememberLeads(deps.db, chosenNow).catch((err) => deps.log.warn('Найденные сделки не сохранены: при повторе поиск будет сделан снова', { error: errorText(err).slice(0, 120) }));
}

/**
 * The forward-only decision for each found deal; the stage order is read at most once, and
 * only if needed. Two students on one deal: the later event waits for the next run, so no
 * two moves of one deal are planned from the same read.
 */
async function planMoves(batch: Batch, found: Map<ClaimedEvent, Found>, routes: Routes): Promise<Plan[]> {
  const { deps } = batch;
  const orders = new Map<number, Promise<PipelineStatus[] | undefined>>();
  const stageOrder = (pipelineId: number) => () => {
    if (!orders.has(pipelineId)) orders.set(pipelineId, pipelineOrder(deps, pipelineId));
    return orders.get(pipelineId)!;
  };
  await batch.keepClaims();
  const byLead = new Map<number, Plan>();
  for (const event of batch.open()) {
    const f = found.get(event);
    if (!f) continue;
    const route = routes.get(event)!;
    const plan = await batch.guarded(event, async () => ({ event, found: f, pipelineId: route.pipelineId, ...(await decide(route, f.lead, stageOrder(route.pipelineId))) }), f);
    if (!plan) continue;
    if (byLead.has(plan.found.lead.id)) {
      batch.settle(event, deferredOutcome(deps, event, new AmoError('retryable', 'deal_shared', 'другое событие этой сделки в том же пакете'), f));
    } else byLead.set(plan.found.lead.id, plan);
  }
  return [...byLead.values()];
}

/**
 * Moves, 50 per PATCH; a batch amoCRM refuses is retried one by one to find the culprit.
 * Each PATCH is sent only for claims held just before it, inside the claim's window, and
 * never to a deal the mirror knows a manager closed since it was read.
 */
async function sendMoves(batch: Batch, plans: Plan[]): Promise<void> {
  const { deps } = batch;
  const { amo } = deps;
  const moves = plans.filter((p) => p.decision.action === 'move');
  const planOf = new Map(moves.map((p) => [p.event, p] as const));
  const held = async (group: Plan[]) => (await batch.holdMoves(group)).map((e) => planOf.get(e)!);
  const moveOne = (plan: Plan) => batch.guarded(plan.event, async () => {
    await amo.moveLead(plan.found.lead.id, plan.pipelineId, plan.target, batch.sendWindow());
    return true;
  }, plan.found, true);
  for (const chunk of chunks(moves, MAX_BATCH_MOVES)) {
    const live = await held(chunk);
    if (!live.length) continue;
    const result = live.length === 1 ? 'one_by_one'
      : await batch.shared(live.map((p) => p.event), () => amo.moveLeads(live.map((p) => ({ id: p.found.lead.id, statusId: p.target, pipelineId: p.pipelineId })), live[0]!.pipelineId, batch.sendWindow()), true);
    for (const plan of live) {
      if (batch.outcomes.has(plan.event)) continue;
      const moved = result === 'ok'
        || (result === 'one_by_one' ? await moveOne(plan) : (await held([plan])).length > 0 && await moveOne(plan));
      if (moved) batch.settle(plan.event, decisionOutcome(deps, plan.event, plan.found, plan.decision, plan.target));
    }
  }
}

/** The forward-only decision for this event's lesson against the deal's current stage, within its funnel. */
async function decide(
  route: Route, lead: Lead, stageOrder: () => Promise<PipelineStatus[] | undefined>,
): Promise<{ target: number; decision: MoveDecision }> {
  const { stageIds, targetIndex } = route;
  const target = stageIds[targetIndex]!;
  const order = stageIds.includes(lead.status_id) ? undefined : await stageOrder();
  return { target, decision: decideMove(lead.status_id, targetIndex, stageIds, order) };
}

/** A pipeline's stage order, cached in the database for an hour (one read per hour, not per event). */
export async function pipelineOrder(deps: SyncDeps, pipelineId: number): Promise<PipelineStatus[] | undefined> {
  const { db, amo } = deps;
  const cached = await getCachedPipeline(db, pipelineId);
  if (cached) return cached;
  const pipeline = await amo.getPipeline(pipelineId);
  if (!pipeline) return undefined;
  await putCachedPipeline(db, pipelineId, { statuses: pipeline.statuses, name: pipeline.name });
  return pipeline.statuses;
}
