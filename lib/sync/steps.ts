// The sync's steps for claimed events: find each student's deal, decide forward-only,
// move, record. One implementation for one event (the webhook, replay) and for a batch
// (the scheduled run): a batch only shares amoCRM calls — remembered deals and the deals
// of searched students are read together (250 per request), moves go 50 per PATCH.
//
// A batch runs at the rate limit: its contact searches go SEARCHES_IN_FLIGHT at a time
// (each still takes its own slot from the shared limiter), and its found deals and its
// outcomes are written in one database call each.
//
// Every event is planned inside its own error boundary, so one bad event never fails
// its neighbours. Only a shared call (a bulk read, a bulk PATCH) may fail several events,
// and then with its real classification. After a failure that would hit every further
// call (429, 5xx, network, tokens, account), the batch stops calling amoCRM: untried
// events go back to the queue without counting an attempt, or, when a person must act
// (tokens, account), are parked with that same reason.
import { AmoError } from '../amocrm/errors.ts';
import { MAX_BATCH_MOVES, type Lead, type PipelineStatus } from '../amocrm/resources.ts';
import { forgetLead, holdEvents, LEASE_SECONDS, rememberLeads, type ClaimedEvent } from '../db/outbox.ts';
import { getCachedPipeline, putCachedPipeline } from '../db/settings.ts';
import { decideMove, type MoveDecision } from './decide.ts';
import type { EventOutcome, SyncDeps } from './deps.ts';
import { chooseFromSearch, chosenOrThrow, noEmail, rememberedStillUsable, searchStudent, type StudentSearch } from './find-deal.ts';
import { closedByMirrorOutcome, decisionOutcome, deferredOutcome, failureOutcome, leaseLostOutcome, recordOutcomes, type Found, type PlannedOutcome } from './outcome.ts';

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

const chunks = <T>(items: T[], size: number): T[][] =>
  Array.from({ length: Math.ceil(items.length / size) }, (_, i) => items.slice(i * size, (i + 1) * size));

/** How often a batch's claims are renewed while it searches and reads (the claim lasts LEASE_SECONDS). */
const RENEW_CLAIMS_MS = 30_000;
/**
 * A move leaves only if its claim, renewed just before, still has the request's timeout
 * and this margin left: the claim outlives every move sent under it.
 */
const MOVE_MARGIN_MS = 5_000;
/**
 * A move sent and never answered (timeout, reset, 5xx) may still be applied by amoCRM.
 * The student's other events wait this long, so a newer move cannot land before it.
 */
export const UNCERTAIN_MOVE_HOLD_MS = 120_000;

/** Failures after which a sent move may still have been applied. */
const mayHaveApplied = (err: unknown) =>
  err instanceof AmoError && err.kind === 'retryable' && ['timeout', 'network', 'server_error'].includes(err.code);

/** A failure that the next amoCRM call would meet too: stop calling, give the rest back. */
const stopsTheBatch = (err: unknown) =>
  err instanceof AmoError && (err.kind === 'operator' || (err.kind === 'retryable' && err.code !== 'internal'));

export async function processEvents(deps: SyncDeps, events: ClaimedEvent[], holder: string): Promise<EventOutcome[]> {
  const { amo, settings, db } = deps;
  const outcomes = new Map<ClaimedEvent, PlannedOutcome>();
  const open = () => events.filter((e) => !outcomes.has(e));
  let stoppedBy: AmoError | undefined;
  // Searches in flight when the batch stops are not sent (if their slot has not come yet).
  const stopSearches = new AbortController();
  const stop = (err: AmoError) => {
    stoppedBy = err;
    stopSearches.abort();
  };
  const cancelled = (err: unknown) => stoppedBy !== undefined && err instanceof AmoError && err.code === 'cancelled';

  /** An event the batch gives up on without trying it, for the reason the batch stopped. */
  const untried = (event: ClaimedEvent, stop: AmoError, found?: Found) => stop.kind === 'operator'
    ? failureOutcome(deps, event, stop, found)
    : deferredOutcome(deps, event, stop, found);
  /** The outcome of a failed step; a move that may have been applied holds the student. */
  const failed = (event: ClaimedEvent, err: unknown, found: Found | undefined, move: boolean): PlannedOutcome => {
    if (cancelled(err)) return untried(event, stoppedBy!, found);
    // Not sent: its slot came too late for the claim to cover the request.
    if (err instanceof AmoError && err.code === 'cancelled') return deferredOutcome(deps, event, err, found);
    return failureOutcome(deps, event, err, found, move && mayHaveApplied(err) ? UNCERTAIN_MOVE_HOLD_MS : undefined);
  };
  /** Runs `step` for one event inside its own boundary; a failure settles that event only. */
  const guarded = async <T>(event: ClaimedEvent, step: () => Promise<T>, found?: Found, move = false): Promise<T | undefined> => {
    if (stoppedBy) {
      outcomes.set(event, untried(event, stoppedBy, found));
      return undefined;
    }
    try {
      return await step();
    } catch (err) {
      outcomes.set(event, failed(event, err, found, move));
      if (!stoppedBy && stopsTheBatch(err)) stop(err as AmoError);
      return undefined;
    }
  };
  /** A call shared by several events: its failure is each one's, with the same classification. */
  const shared = async <T>(group: ClaimedEvent[], call: () => Promise<T>, move = false): Promise<T | undefined> => {
    if (stoppedBy) {
      for (const e of group) outcomes.set(e, untried(e, stoppedBy));
      return undefined;
    }
    try {
      return await call();
    } catch (err) {
      for (const e of group) outcomes.set(e, failed(e, err, undefined, move));
      if (!stoppedBy && stopsTheBatch(err)) stop(err as AmoError);
      return undefined;
    }
  };

  // Claims: renewed while the batch works, and checked right before every move. A claim
  // that expired is another invocation's now: its event is left alone.
  const hold = async (group: ClaimedEvent[], found?: (e: ClaimedEvent) => Found | undefined): Promise<ClaimedEvent[]> => {
    const live = group.filter((e) => !outcomes.has(e));
    const held = live.length ? await shared(live, () => holdEvents(db, holder, live.map((e) => e.id))) : undefined;
    if (!held) return [];
    for (const e of live) if (!held.has(e.id)) outcomes.set(e, leaseLostOutcome(deps, e, found?.(e)));
    return live.filter((e) => held.has(e.id));
  };
  let renewedAt = deps.clock.now();
  const keepClaims = async () => {
    if (deps.clock.now() - renewedAt < RENEW_CLAIMS_MS) return;
    renewedAt = deps.clock.now();
    await hold(open());
  };
  /** A move's request may leave only while the claim, just renewed, covers its timeout. */
  const sendWindow = () => AbortSignal.timeout(LEASE_SECONDS * 1000 - settings.requestTimeoutMs - MOVE_MARGIN_MS);

  // 1. Students without an e-mail cannot be searched: each fails on its own.
  for (const event of events) if (!event.email) await guarded(event, async () => { throw noEmail(); });

  // 2. Remembered deals the mirror knows are closed need no read; the others are read together.
  for (const event of open()) if (event.cached_lead_id && event.cached_lead_closed) outcomes.set(event, closedByMirrorOutcome(deps, event));
  const found = new Map<ClaimedEvent, Found>();
  await keepClaims();
  const remembered = open().filter((e) => e.cached_lead_id);
  const rememberedLeads = remembered.length
    ? await shared(remembered, () => amo.getLeads(remembered.map((e) => e.cached_lead_id!)))
    : [];
  const byId = new Map((rememberedLeads ?? []).map((l) => [l.id, l] as const));
  const toSearch: ClaimedEvent[] = [];
  for (const event of open()) {
    const lead = event.cached_lead_id ? byId.get(event.cached_lead_id) : undefined;
    if (rememberedStillUsable(lead, settings.pipelineId)) found.set(event, { lead });
    else {
      if (event.cached_lead_id) await guarded(event, () => forgetLead(db, event.user_id, event.cached_lead_id!));
      toSearch.push(event);
    }
  }

  // 3. Students with no usable deal: one contact search each, then all their deals in one read.
  const searches = new Map<ClaimedEvent, StudentSearch>();
  const searchQueue = toSearch.filter((e) => !outcomes.has(e));
  await Promise.all(Array.from({ length: Math.min(SEARCHES_IN_FLIGHT, searchQueue.length) }, async () => {
    for (let event = searchQueue.shift(); event; event = searchQueue.shift()) {
      await keepClaims();
      if (outcomes.has(event)) continue;
      const search = await guarded(event, () => searchStudent(amo, event!.email!, stopSearches.signal));
      if (search) searches.set(event, search);
    }
  }));
  // In the batch's order, whatever order the searches came back in.
  const searched = toSearch.filter((e) => searches.has(e) && !outcomes.has(e));
  await keepClaims();
  const candidateIds = searched.flatMap((e) => searches.get(e)!.exactLeadIds);
  const candidates = candidateIds.length ? await shared(searched, () => amo.getLeads(candidateIds)) : [];
  const chosenNow: Parameters<typeof rememberLeads>[1] = [];
  for (const event of searched.filter((e) => !outcomes.has(e))) {
    const chosen = await guarded(event, async () => chosenOrThrow(chooseFromSearch(searches.get(event)!, candidates ?? [], settings.pipelineId)));
    if (!chosen) continue;
    found.set(event, chosen);
    chosenNow.push({ userId: event.user_id, leadId: chosen.lead.id, contactId: chosen.contactId, email: event.email });
  }
  // Kept now, all in one call: a deferred, retried or failed event never pays its search
  // again. Losing this write costs only that (a done event records its deal anyway).
  await rememberLeads(db, chosenNow).catch((err) => deps.log.warn('Найденные сделки не сохранены: при повторе поиск будет сделан снова', { error: String((err as Error)?.message ?? err).slice(0, 120) }));

  // 4. Decide each (forward only). The stage order is read at most once, and only if needed.
  let order: Promise<PipelineStatus[] | undefined> | undefined;
  const stageOrder = () => (order ??= pipelineOrder(deps));
  await keepClaims();
  const plans: Plan[] = [];
  for (const event of open()) {
    const f = found.get(event);
    if (!f) continue;
    const planned = await guarded(event, async () => ({ event, found: f, ...(await decide(deps, event, f.lead, stageOrder)) }), f);
    if (planned) plans.push(planned);
  }

  // 5. Two students on one deal: the later event waits for the next run, so no two moves
  // of one deal are planned from the same read.
  const byLead = new Map<number, Plan>();
  for (const plan of plans) {
    if (byLead.has(plan.found.lead.id)) {
      outcomes.set(plan.event, deferredOutcome(deps, plan.event, new AmoError('retryable', 'deal_shared', 'другое событие этой сделки в том же пакете'), plan.found));
    } else byLead.set(plan.found.lead.id, plan);
  }

  // 6. Moves, 50 per PATCH; a batch amoCRM refuses is retried one by one to find the culprit.
  // Each PATCH is sent only for claims held just before it (see hold).
  const moves = [...byLead.values()].filter((p) => p.decision.action === 'move');
  const planOf = new Map(moves.map((p) => [p.event, p] as const));
  const holdPlans = async (group: Plan[]) => (await hold(group.map((p) => p.event), (e) => planOf.get(e)?.found)).map((e) => planOf.get(e)!);
  const moveOne = (plan: Plan) => guarded(plan.event, async () => {
    await amo.moveLead(plan.found.lead.id, settings.pipelineId, plan.target, sendWindow());
    return true;
  }, plan.found, true);
  for (const chunk of chunks(moves, MAX_BATCH_MOVES)) {
    const live = await holdPlans(chunk);
    if (!live.length) continue;
    const result = live.length === 1 ? 'one_by_one'
      : await shared(live.map((p) => p.event), () => amo.moveLeads(live.map((p) => ({ id: p.found.lead.id, statusId: p.target })), settings.pipelineId, sendWindow()), true);
    for (const plan of live) {
      if (outcomes.has(plan.event)) continue;
      const moved = result === 'ok'
        || (result === 'one_by_one' ? await moveOne(plan) : (await holdPlans([plan])).length > 0 && await moveOne(plan));
      if (moved) outcomes.set(plan.event, decisionOutcome(deps, plan.event, plan.found, plan.decision, plan.target));
    }
  }

  // 7. Nothing to move (already there, or skipped): record the decision.
  for (const plan of byLead.values()) {
    if (!outcomes.has(plan.event)) outcomes.set(plan.event, decisionOutcome(deps, plan.event, plan.found, plan.decision, plan.target));
  }

  // 8. Every outcome in one write, then one log line each.
  return recordOutcomes(deps, holder, events.map((e) => outcomes.get(e)!));
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
