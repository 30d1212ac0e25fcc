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
import { closedByMirrorOutcome, decisionOutcome, deferredOutcome, recordOutcomes, type EventOutcome, type Found } from './outcome.ts';

export { UNCERTAIN_MOVE_HOLD_MS } from './batch.ts';

interface Plan {
  event: ClaimedEvent;
  found: Found;
  decision: MoveDecision;
  target: number;
}

/**
 * Contact searches of one batch in flight together. One at a time, amoCRM's answer time
 * (100–300 ms) and the slot's round trip cap a drainer near 4.4 requests/s; three keep
 * the limiter's 6/s busy. The limiter still spaces every request.
 */
export const SEARCHES_IN_FLIGHT = 3;

export async function processEvents(deps: SyncDeps, events: ClaimedEvent[], holder: string): Promise<EventOutcome[]> {
  const batch = new Batch(deps, events, holder);
  for (const event of events) if (!event.email) await batch.guarded(event, async () => { throw noEmail(); });
  const found = await readRememberedDeals(batch);
  await searchUnknownStudents(batch, found);
  const plans = await planMoves(batch, found);
  await sendMoves(batch, plans);
  // Nothing to move (already there, or skipped): the decision is the outcome.
  for (const plan of plans) if (!batch.outcomes.has(plan.event)) batch.settle(plan.event, decisionOutcome(deps, plan.event, plan.found, plan.decision, plan.target));
  // Every outcome in one write, then one log line each.
  return recordOutcomes(deps, holder, events.map((e) => batch.outcomes.get(e)!));
}

/**
 * Remembered deals: those the mirror knows are closed need no read; the others are read
 * together. A remembered deal that is gone, closed or out of the pipeline is forgotten
 * and its student searched afresh (left without a found deal here).
 */
async function readRememberedDeals(batch: Batch): Promise<Map<ClaimedEvent, Found>> {
  const { deps } = batch;
  for (const event of batch.open()) if (event.cached_lead_id && event.cached_lead_closed) batch.settle(event, closedByMirrorOutcome(deps, event));
  const found = new Map<ClaimedEvent, Found>();
  await batch.keepClaims();
  const remembered = batch.open().filter((e) => e.cached_lead_id);
  const leads = remembered.length ? await batch.shared(remembered, () => deps.amo.getLeads(remembered.map((e) => e.cached_lead_id!))) : [];
  const byId = new Map((leads ?? []).map((l) => [l.id, l] as const));
  for (const event of remembered.filter((e) => !batch.outcomes.has(e))) {
    const lead = byId.get(event.cached_lead_id!);
    if (rememberedStillUsable(lead, deps.settings.pipelineId)) found.set(event, { lead: lead! });
    else await batch.guarded(event, () => forgetLead(deps.db, event.user_id, event.cached_lead_id!));
  }
  return found;
}

/** Students with no usable deal: one contact search each, then all their deals in one read. */
async function searchUnknownStudents(batch: Batch, found: Map<ClaimedEvent, Found>): Promise<void> {
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
    const chosen = await batch.guarded(event, async () => chosenOrThrow(chooseFromSearch(searches.get(event)!, candidates ?? [], deps.settings.pipelineId)));
    if (!chosen) continue;
    found.set(event, chosen);
    chosenNow.push({ userId: event.user_id, leadId: chosen.lead.id, contactId: chosen.contactId, email: event.email });
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
async function planMoves(batch: Batch, found: Map<ClaimedEvent, Found>): Promise<Plan[]> {
  const { deps } = batch;
  let order: Promise<PipelineStatus[] | undefined> | undefined;
  const stageOrder = () => (order ??= pipelineOrder(deps));
  await batch.keepClaims();
  const byLead = new Map<number, Plan>();
  for (const event of batch.open()) {
    const f = found.get(event);
    if (!f) continue;
    const plan = await batch.guarded(event, async () => ({ event, found: f, ...(await decide(deps, event, f.lead, stageOrder)) }), f);
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
  const { amo, settings } = deps;
  const moves = plans.filter((p) => p.decision.action === 'move');
  const planOf = new Map(moves.map((p) => [p.event, p] as const));
  const held = async (group: Plan[]) => (await batch.holdMoves(group)).map((e) => planOf.get(e)!);
  const moveOne = (plan: Plan) => batch.guarded(plan.event, async () => {
    await amo.moveLead(plan.found.lead.id, settings.pipelineId, plan.target, batch.sendWindow());
    return true;
  }, plan.found, true);
  for (const chunk of chunks(moves, MAX_BATCH_MOVES)) {
    const live = await held(chunk);
    if (!live.length) continue;
    const result = live.length === 1 ? 'one_by_one'
      : await batch.shared(live.map((p) => p.event), () => amo.moveLeads(live.map((p) => ({ id: p.found.lead.id, statusId: p.target })), settings.pipelineId, batch.sendWindow()), true);
    for (const plan of live) {
      if (batch.outcomes.has(plan.event)) continue;
      const moved = result === 'ok'
        || (result === 'one_by_one' ? await moveOne(plan) : (await held([plan])).length > 0 && await moveOne(plan));
      if (moved) batch.settle(plan.event, decisionOutcome(deps, plan.event, plan.found, plan.decision, plan.target));
    }
  }
}

/** The forward-only decision for this event's lesson against the deal's current stage. */
async function decide(
  deps: SyncDeps, event: ClaimedEvent, lead: Lead, stageOrder: () => Promise<PipelineStatus[] | undefined>,
): Promise<{ target: number; decision: MoveDecision }> {
  const { stageIds } = deps.settings;
  const targetIndex = event.stage_number - 1;
  const target = stageIds[targetIndex];
  if (target === undefined) {
    throw new AmoError('permanent', 'no_stage', `нет этапа для урока ${event.stage_number}: настроено ${stageIds.length}`,
      { whatToDo: 'проверьте tripwire_lessons в amocrm.system_settings: номера этапов 1–3' });
  }
  const order = stageIds.includes(lead.status_id) ? undefined : await stageOrder();
  return { target, decision: decideMove(lead.status_id, targetIndex, stageIds, order) };
}

/** The pipeline's stage order, cached in the database for an hour (one read per hour, not per event). */
export async function pipelineOrder(deps: SyncDeps): Promise<PipelineStatus[] | undefined> {
  const { db, amo, settings } = deps;
  const cached = await getCachedPipeline(db, settings.pipelineId);
  if (cached) return cached;
  const pipeline = await amo.getPipeline(settings.pipelineId);
  if (!pipeline) return undefined;
  await putCachedPipeline(db, settings.pipelineId, { statuses: pipeline.statuses, name: pipeline.name });
  return pipeline.statuses;
}
