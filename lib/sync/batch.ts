// One batch of claimed events while the sync works on it: each event's outcome once it
// has one, the error boundaries, the stop after a failure that would hit every further
// amoCRM call, and the claims (renewed while the batch works, checked before a move).
//
// Every event is planned inside its own boundary (`guarded`), so one bad event never
// fails its neighbours. Only a call shared by several events (`shared`: a bulk read, a
// bulk PATCH) may fail several, and then with its real classification. After a failure
// that would hit every further call (429, 5xx, network, tokens, account) the batch stops
// calling amoCRM: untried events go back to the queue without counting an attempt, or,
// when a person must act (tokens, account), are parked with that same reason.
import { AmoError } from '../amocrm/errors.ts';
import { holdEvents, holdMoves, LEASE_SECONDS, type ClaimedEvent } from '../db/outbox.ts';
import type { SyncDeps } from './deps.ts';
import { closedByMirrorOutcome, deferredOutcome, failureOutcome, leaseLostOutcome, type Found, type PlannedOutcome } from './outcome.ts';

/** How often a batch's claims are renewed while it searches and reads (a claim lasts LEASE_SECONDS). */
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

export class Batch {
  readonly outcomes = new Map<ClaimedEvent, PlannedOutcome>();
  private stoppedBy: AmoError | undefined;
  /** Aborted when the batch stops: searches whose slot has not come are not sent. */
  private readonly stopped = new AbortController();
  private renewedAt: number;

  constructor(readonly deps: SyncDeps, readonly events: ClaimedEvent[], readonly holder: string) {
    this.renewedAt = deps.clock.now();
  }

  get stopSignal(): AbortSignal {
    return this.stopped.signal;
  }

  /** Events without an outcome yet, in the batch's order. */
  open(): ClaimedEvent[] {
    return this.events.filter((e) => !this.outcomes.has(e));
  }

  settle(event: ClaimedEvent, outcome: PlannedOutcome): void {
    this.outcomes.set(event, outcome);
  }

  /** Runs `step` for one event inside its own boundary; a failure settles that event only. */
  async guarded<T>(event: ClaimedEvent, step: () => Promise<T>, found?: Found, move = false): Promise<T | undefined> {
    if (this.stoppedBy) {
      this.settle(event, this.untried(event, this.stoppedBy, found));
      return undefined;
    }
    try {
      return await step();
    } catch (err) {
      this.settle(event, this.failed(event, err, found, move));
      this.stopAfter(err);
      return undefined;
    }
  }

  /** A call shared by several events: its failure is each one's, with the same classification. */
  async shared<T>(group: ClaimedEvent[], call: () => Promise<T>, move = false): Promise<T | undefined> {
    if (this.stoppedBy) {
      for (const e of group) this.settle(e, this.untried(e, this.stoppedBy));
      return undefined;
    }
    try {
      return await call();
    } catch (err) {
      for (const e of group) this.settle(e, this.failed(e, err, undefined, move));
      this.stopAfter(err);
      return undefined;
    }
  }

  /**
   * Renews the claims on `group` and answers the events still held. A claim that expired
   * is another invocation's now: its event is left alone (nothing sent, nothing recorded).
   */
  async hold(group: ClaimedEvent[]): Promise<ClaimedEvent[]> {
    const live = group.filter((e) => !this.outcomes.has(e));
    const held = live.length ? await this.shared(live, () => holdEvents(this.deps.db, this.holder, live.map((e) => e.id))) : undefined;
    if (!held) return [];
    for (const e of live) if (!held.has(e.id)) this.settle(e, leaseLostOutcome(this.deps, e));
    return live.filter((e) => held.has(e.id));
  }

  /**
   * Right before a PATCH: renews the claims of these moves and answers the ones that may go.
   * A lost claim is left alone (as in hold); a deal the mirror knows a manager closed since
   * it was read is skipped, not moved out of won/lost.
   */
  async holdMoves(moves: { event: ClaimedEvent; found: Found }[]): Promise<ClaimedEvent[]> {
    const live = moves.filter((m) => !this.outcomes.has(m.event));
    const r = live.length
      ? await this.shared(live.map((m) => m.event), () => holdMoves(this.deps.db, this.holder,
        live.map((m) => ({ eventId: m.event.id, leadId: m.found.lead.id, readAt: m.found.lead.updated_at }))))
      : undefined;
    if (!r) return [];
    const may: ClaimedEvent[] = [];
    for (const { event, found } of live) {
      const closed = r.closed.get(event.id);
      if (!r.held.has(event.id)) this.settle(event, leaseLostOutcome(this.deps, event, found));
      else if (closed) this.settle(event, closedByMirrorOutcome(this.deps, event, found.lead.id, closed));
      else may.push(event);
    }
    return may;
  }

  /** Renews every open claim when RENEW_CLAIMS_MS have passed since the last renewal. */
  async keepClaims(): Promise<void> {
    if (this.deps.clock.now() - this.renewedAt < RENEW_CLAIMS_MS) return;
    this.renewedAt = this.deps.clock.now();
    await this.hold(this.open());
  }

  /** For a move's request: aborted once the claim, just renewed, would no longer cover it. */
  sendWindow(): AbortSignal {
    return AbortSignal.timeout(LEASE_SECONDS * 1000 - this.deps.settings.requestTimeoutMs - MOVE_MARGIN_MS);
  }

  private stopAfter(err: unknown): void {
    if (this.stoppedBy || !stopsTheBatch(err)) return;
    this.stoppedBy = err as AmoError;
    this.stopped.abort();
  }

  /** An event the batch gives up on without trying it, for the reason the batch stopped. */
  private untried(event: ClaimedEvent, stop: AmoError, found?: Found): PlannedOutcome {
    return stop.kind === 'operator' ? failureOutcome(this.deps, event, stop, found) : deferredOutcome(this.deps, event, stop, found);
  }

  /** The outcome of a failed step; a move that may have been applied holds the student. */
  private failed(event: ClaimedEvent, err: unknown, found: Found | undefined, move: boolean): PlannedOutcome {
    const cancelled = err instanceof AmoError && err.code === 'cancelled';
    if (cancelled && this.stoppedBy) return this.untried(event, this.stoppedBy, found);
    // Not sent: its slot came too late for the claim to cover the request.
    if (cancelled) return deferredOutcome(this.deps, event, err, found);
    return failureOutcome(this.deps, event, err, found, move && mayHaveApplied(err) ? UNCERTAIN_MOVE_HOLD_MS : undefined);
  }
}
