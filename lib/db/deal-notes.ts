// The manager's notes and tasks (amocrm.deal_notes) as the sync sees them: queued per event,
// claimed with a lease, finished once amoCRM has them. The only module that names these
// database functions (supabase/migrations/20261208001200_amocrm_deal_notes.sql).
import type { Db } from './port.ts';

export type DealNoteKind = 'note' | 'task';

/** What one event's step asks for: a note, a task, or both. */
export interface DealNoteRequest {
  eventId: number;
  note: boolean;
  /** The step's position in its funnel (1-based): "урок N" in the note. */
  stepNumber: number;
  task?: { text: string; dueMinutes: number } | null;
}

/** A claimed row: its text fixed at queue time, the deal it goes to, and whether a POST of it may have been applied. */
export interface ClaimedDealNote {
  event_id: number;
  kind: DealNoteKind;
  text: string;
  lead_id: number;
  uncertain: boolean;
  attempts: number;
  /** A task's deadline, unix seconds; null for a note. */
  complete_till: number | null;
}

export type DealNoteOutcome = 'done' | 'unknown' | 'retry' | 'release' | 'failed';

export interface DealNoteResult {
  eventId: number;
  kind: DealNoteKind;
  outcome: DealNoteOutcome;
  amoId?: number;
  error?: string;
  retryInMs?: number;
}

/** A claim on a row lasts this long; a POST leaves only while the claim outlives it. */
export const DEAL_NOTE_LEASE_SECONDS = 90;
export const DEAL_NOTE_MAX_ATTEMPTS = 8;

/** Queues the rows these events ask for; an event already queued keeps its rows. */
export async function queueDealNotes(db: Db, requests: DealNoteRequest[]): Promise<number> {
  const items = requests
    .filter((r) => r.note || r.task)
    .map((r) => ({ event_id: r.eventId, note: r.note, step_number: r.stepNumber, task_text: r.task?.text, task_due_minutes: r.task?.dueMinutes }));
  if (!items.length) return 0;
  const r = await db.rpc<{ queued: number }>('amocrm_queue_deal_notes', { p_items: items });
  return r.queued;
}

export async function claimDealNotes(db: Db, holder: string, limit: number): Promise<ClaimedDealNote[]> {
  const rows = await db.rpc<ClaimedDealNote[]>('amocrm_claim_deal_notes', { p_holder: holder, p_limit: limit, p_lease_seconds: DEAL_NOTE_LEASE_SECONDS });
  return rows.map((r) => ({ ...r, event_id: Number(r.event_id), lead_id: Number(r.lead_id), complete_till: r.complete_till === null ? null : Number(r.complete_till) }));
}

export async function finishDealNotes(db: Db, holder: string, results: DealNoteResult[]): Promise<number> {
  if (!results.length) return 0;
  const r = await db.rpc<{ recorded: number }>('amocrm_finish_deal_notes', {
    p_holder: holder, p_max_attempts: DEAL_NOTE_MAX_ATTEMPTS,
    p_results: results.map((x) => ({
      event_id: x.eventId, kind: x.kind, outcome: x.outcome, amo_id: x.amoId, error: x.error,
      retry_in_ms: x.retryInMs === undefined ? undefined : Math.round(x.retryInMs),
    })),
  });
  return r.recorded;
}
