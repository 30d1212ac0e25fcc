// The outbox (amocrm.sync_events) as the sync sees it: claims with leases, outcomes,
// the deal remembered per student, replay selection. The only module that names these
// database functions; their contracts are in supabase/migrations/.
import type { Db } from './port.ts';

export interface ClaimedEvent {
  id: number;
  user_id: string;
  email: string | null;
  lesson_id: number;
  stage_number: number;
  /** The funnel whose step the lesson is (absent: today's single funnel). */
  funnel_key?: string;
  /** The funnels' version in force when the event was claimed (null: none saved yet). */
  funnels_version?: number | null;
  status: string;
  attempts: number;
  /** The deal remembered for this student in the funnel's pipeline, if any. */
  cached_lead_id: number | null;
  /** The mirror (amoCRM's hooks) knows the remembered deal is closed: no read needed. */
  cached_lead_closed?: 'won' | 'lost' | null;
  created_at: string;
}

export type ClaimRefusal = 'not_found' | 'in_flight' | 'status' | 'student_busy';

export type ClaimResult =
  | { claimed: true; event: ClaimedEvent }
  | { claimed: false; reason: ClaimRefusal; event?: ClaimedEvent };

export const LEASE_SECONDS = 90;

/**
 * Right before a PATCH: renews these claims as holdEvents does, and answers which moves
 * still may go (`held`) and which deals the mirror knows a manager closed since they were
 * read (`closed`, by event id): amoCRM has no conditional update.
 */
export async function holdMoves(db: Db, holder: string, moves: { eventId: number; leadId: number; readAt: number }[]):
  Promise<{ held: Set<number>; closed: Map<number, 'won' | 'lost'> }> {
  if (!moves.length) return { held: new Set(), closed: new Map() };
  const r = await db.rpc<{ held: number[]; closed: { event_id: number; closed: 'won' | 'lost' }[] }>('amocrm_hold_moves', {
    p_holder: holder, p_lease_seconds: LEASE_SECONDS,
    p_moves: moves.map((m) => ({ event_id: m.eventId, lead_id: m.leadId, read_at: m.readAt })),
  });
  return { held: new Set(r.held.map(Number)), closed: new Map(r.closed.map((c) => [Number(c.event_id), c.closed])) };
}

/**
 * Extends this holder's live claims on these events (and its drain lease) to
 * LEASE_SECONDS from now; answers the ids still held. An expired claim is not revived.
 */
export async function holdEvents(db: Db, holder: string, eventIds: number[]): Promise<Set<number>> {
  if (!eventIds.length) return new Set();
  const r = await db.rpc<{ held: number[] }>('amocrm_hold_events', { p_holder: holder, p_event_ids: eventIds, p_lease_seconds: LEASE_SECONDS });
  return new Set(r.held.map(Number));
}

/** Claims one event by id; only events in `statuses` (or with an expired lease) are taken. */
export async function claimEvent(db: Db, eventId: number, holder: string, statuses: string[]): Promise<ClaimResult> {
  const r = await db.rpc<{ claimed: boolean; reason?: ClaimRefusal; event?: ClaimedEvent }>('amocrm_claim_event', {
    p_event_id: eventId, p_holder: holder, p_lease_seconds: LEASE_SECONDS, p_statuses: statuses,
  });
  return r.claimed ? { claimed: true, event: r.event! } : { claimed: false, reason: r.reason ?? 'status', event: r.event };
}

/**
 * Claims up to `limit` due events, at most one per student, oldest due first; of them at
 * most `maxUnknown` students without a remembered deal (each costs a contact search).
 */
export function claimDue(db: Db, holder: string, limit: number, maxUnknown?: number): Promise<ClaimedEvent[]> {
  return db.rpc<ClaimedEvent[]>('amocrm_claim_due', { p_holder: holder, p_limit: limit, p_lease_seconds: LEASE_SECONDS, p_max_unknown: maxUnknown });
}

export type FinishOutcome = 'done' | 'skipped' | 'retry' | 'failed' | 'parked' | 'deferred';

export interface FinishFields {
  leadId?: number;
  contactId?: number;
  statusId?: number;
  code?: string;
  error?: string;
  retryInMs?: number;
  maxAttempts?: number;
  /** A move was sent and never answered: hold the student's other events this long. */
  holdMs?: number;
}

export interface FinishResult {
  /** false: the claim expired or another invocation took the event over. */
  recorded: boolean;
  status: string;
  became_dead?: boolean;
}

export interface FinishItem extends FinishFields {
  eventId: number;
  outcome: FinishOutcome;
}

/**
 * Records a batch's outcomes in one call (a drainer's round trips do not grow with its
 * events). Each is checked against the lease as amocrm_finish_event does; the answers come
 * back in the items' order.
 */
export async function finishEvents(db: Db, holder: string, items: FinishItem[]): Promise<FinishResult[]> {
  if (!items.length) return [];
  return db.rpc<FinishResult[]>('amocrm_finish_events', {
    p_holder: holder,
    p_outcomes: items.map((f) => ({
      event_id: f.eventId, outcome: f.outcome, error_code: f.code, error: f.error?.slice(0, 500),
      lead_id: f.leadId, contact_id: f.contactId, status_id: f.statusId,
      retry_in_ms: f.retryInMs === undefined ? undefined : Math.round(f.retryInMs), max_attempts: f.maxAttempts,
      hold_ms: f.holdMs,
    })),
  });
}

/** Records a completion that arrived as a plain Database Webhook (idempotent). */
export function recordEvent(db: Db, e: { userId: string; lessonId: number; progressId?: string; source: string }) {
  // event_ids: every funnel's event when the lesson is in several (event_id is the first's).
  return db.rpc<{ tripwire: boolean; event_id?: number; event_ids?: number[]; created?: boolean; unknown_user?: boolean }>('amocrm_record_event', {
    p_user_id: e.userId, p_lesson_id: e.lessonId, p_progress_id: e.progressId, p_source: e.source,
  });
}

/**
 * Stores the deals a batch's searches found (one per student and pipeline), before
 * anything else can go wrong. `keepExisting`: a deal already remembered there stays.
 */
export async function rememberLeads(db: Db, found: { userId: string; pipelineId?: number; leadId: number; contactId?: number; email?: string | null; keepExisting?: boolean }[]): Promise<void> {
  if (!found.length) return;
  await db.rpc('amocrm_remember_leads', {
    p_leads: found.map((f) => ({
      user_id: f.userId, pipeline_id: f.pipelineId, lead_id: f.leadId, contact_id: f.contactId, email: f.email ?? undefined,
      keep_existing: f.keepExisting,
    })),
  });
}

/** Forgets a remembered deal that is gone, closed or out of the pipeline. */
export async function forgetLead(db: Db, userId: string, leadId: number): Promise<void> {
  await db.rpc('amocrm_forget_lead', { p_user_id: userId, p_lead_id: leadId });
}

export interface SelectedEvent {
  id: number;
  status: string;
  email: string | null;
  lesson_id: number;
  attempts: number;
  lead_id: number | null;
  last_error_code: string | null;
  last_error: string | null;
  created_at: string;
  updated_at: string;
}

export function selectEvents(db: Db, q: { ids?: number[]; statuses?: string[] | null; from?: string; to?: string; afterId: number; limit: number }) {
  return db.rpc<SelectedEvent[]>('amocrm_select_events', {
    p_ids: q.ids, p_statuses: q.statuses ?? null, p_from: q.from, p_to: q.to, p_after_id: q.afterId, p_limit: q.limit,
  });
}

/** Which of these ids name no event at all. */
export function missingEventIds(db: Db, ids: number[]): Promise<number[]> {
  return db.rpc<number[]>('amocrm_missing_event_ids', { p_ids: ids });
}

/** How many events are parked with these codes (all when omitted). */
export async function countParked(db: Db, codes?: string[]): Promise<number> {
  return (await db.rpc<{ parked: number }>('amocrm_count_parked', { p_codes: codes })).parked;
}

/** Parked events with these codes (all when omitted) go back to pending. */
export async function resumeParked(db: Db, codes?: string[]): Promise<number> {
  return (await db.rpc<{ resumed: number }>('amocrm_resume_parked', { p_codes: codes })).resumed;
}

/** Records completions in lesson_progress that have no event (belt and braces). */
export async function reconcile(db: Db): Promise<number> {
  return (await db.rpc<{ created: number }>('amocrm_reconcile', {})).created;
}
