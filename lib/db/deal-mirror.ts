// The reverse direction's database side: raw hook deliveries, the deal mirror and its
// extension point (amocrm.deal_changes), where reading the events feed stands. The only
// module that names these database functions (supabase/migrations/20261208000400_amocrm_mirror.sql);
// the reverse direction itself is lib/mirror/.
import type { LeadChange } from '../amocrm/hook-form.ts';
import type { Db } from './port.ts';

export type DeliveryStatus = 'pending' | 'flagged' | 'ignored';

export function recordDelivery(db: Db, d: {
  requestId?: string; body: string; bodyBytes: number; changes: LeadChange[]; status: DeliveryStatus;
  problem?: string; accountId?: number; subdomain?: string;
}) {
  return db.rpc<{ id: number; duplicate: boolean }>('amocrm_record_delivery', {
    // An empty list would be ambiguous for the jsonb argument (see port.ts): null means none.
    p_request_id: d.requestId ?? null, p_body: d.body, p_body_bytes: d.bodyBytes, p_changes: d.changes.length ? d.changes : null,
    p_status: d.status, p_problem: d.problem, p_account_id: d.accountId, p_subdomain: d.subdomain,
  });
}

/** What applying one change did (amocrm.apply_lead_change). */
export interface AppliedChange {
  applied: boolean;
  lead_id?: number;
  user_id?: string | null;
  kind?: 'stage_changed' | 'won' | 'lost' | 'deleted' | null;
  changed?: boolean;
  pipeline_id?: number;
  status_id?: number;
  /** Why not applied: not_relevant, duplicate, older, no_lead_id, not_in_amocrm. */
  reason?: string;
}

/** A deal as read from amoCRM, for a change its hook sent without amoCRM's modification time. */
export interface LeadState {
  pipeline_id: number;
  status_id: number;
  /** amoCRM's updated_at (unix seconds). */
  modified_at: number;
  modified_by?: number;
  name?: string;
}

/**
 * Applies pending deliveries. `holder` names the applier: deliveries lacking amoCRM's time
 * are claimed for it, and their deals come back in `to_read`; the next call passes the deals
 * read (`leads`, by lead id) and applies them. Without `leads`, no such delivery is applied.
 */
export const applyDeliveries = (db: Db, pipelineId: number, { holder, leads, limit = 100 }: { holder?: string; leads?: Record<string, LeadState>; limit?: number } = {}) =>
  db.rpc<{ deliveries: number; results: AppliedChange[]; to_read: number[] }>('amocrm_apply_deliveries', {
    p_pipeline_id: pipelineId, p_limit: limit, p_holder: holder ?? null, p_leads: leads ?? null,
  });

export const applyChanges = (db: Db, changes: LeadChange[], source: string, pipelineId: number) =>
  db.rpc<{ results: AppliedChange[] }>('amocrm_apply_changes', { p_changes: changes.length ? changes : null, p_source: source, p_pipeline_id: pipelineId });

export interface StudentDeal {
  user_id: string;
  lead_id: number | null;
  mirrored?: boolean;
  pipeline_id?: number | null;
  status_id?: number | null;
  closed?: 'won' | 'lost' | null;
  deleted?: boolean;
  modified_at?: string | null;
  modified_by?: number | null;
}

/** "Where is student X's deal now". */
export const studentDeal = (db: Db, userId: string) => db.rpc<StudentDeal>('amocrm_student_deal', { p_user_id: userId });

/**
 * Where reading amoCRM's events feed stands (amocrm.system_settings 'events_feed_window';
 * supabase/migrations/20261208000400_amocrm_mirror.sql). Times are unix seconds.
 */
export interface FeedState {
  /** Every change created up to here has been read (the end of the last window read in full); null before. */
  read_through: number | null;
  /** The window a run stopped inside (changes created from..to) and the page to go on at; null/null/1 between windows. */
  from: number | null;
  to: number | null;
  page: number;
  /** now − read_through (or − the first window's start): how far behind the feed may be. */
  lag_seconds: number;
  updated_at: string | null;
}

/** Null before the feed was ever read. */
export const getFeedState = (db: Db) => db.rpc<FeedState | null>('amocrm_get_feed_window');

/** Stores how far reading got (only forward) and answers with what is stored then. */
export const putFeedState = (db: Db, s: { readThrough: number | null; window: { from: number; to: number; page: number } | null }) =>
  db.rpc<FeedState>('amocrm_put_feed_window', {
    p_read_through: s.readThrough, p_from: s.window?.from ?? null, p_to: s.window?.to ?? null, p_page: s.window?.page ?? 1,
  });
