// The drain lease (amocrm.drainer) and the look-ahead jobs: who works the queue at the
// shared rate, and the sign-up jobs that find deals ahead of time. The only module that
// names these database functions (supabase/migrations/20261208000300_amocrm_drain.sql).
import type { Db } from './port.ts';

export const DRAIN_LEASE_SECONDS = 60;

export const beginDrain = async (db: Db, holder: string): Promise<boolean> =>
  (await db.rpc<{ acquired: boolean }>('amocrm_begin_drain', { p_holder: holder, p_lease_seconds: DRAIN_LEASE_SECONDS })).acquired;

export const renewDrain = async (db: Db, holder: string): Promise<boolean> =>
  (await db.rpc<{ renewed: boolean }>('amocrm_renew_drain', { p_holder: holder, p_lease_seconds: DRAIN_LEASE_SECONDS })).renewed;

/** Ends the drain unless lesson events are due or will be within lingerMs (ended=false: go on). */
export const endDrain = async (db: Db, holder: string, drained: number, lingerMs = 0): Promise<boolean> =>
  (await db.rpc<{ ended: boolean }>('amocrm_end_drain', { p_holder: holder, p_drained: drained, p_linger_ms: lingerMs })).ended;

/** Gives the lease back whatever is due; `due` says whether a successor is needed. */
export const releaseDrain = (db: Db, holder: string) =>
  db.rpc<{ released: boolean; due: boolean }>('amocrm_release_drain', { p_holder: holder });

/**
 * While a drainer holds the queue, or has been rung and not yet begun, hands it this event
 * (due now) and says so. `ring`: this caller (the only one) should ring the drainer — the
 * rung one has not begun 5 s after the ring, or (with `ringAtBacklog`) at least that many
 * events are pending and nobody drains: a burst.
 */
export async function routeEvent(db: Db, eventId: number, ringAtBacklog?: number): Promise<{ drainerActive: boolean; ring: boolean }> {
  const r = await db.rpc<{ drainer_active: boolean; ring?: boolean }>('amocrm_route_event', { p_event_id: eventId, p_backlog: ringAtBacklog });
  return { drainerActive: r.drainer_active, ring: r.ring ?? false };
}

/** The ring did not reach the drainer: webhooks stop counting on it until the next ring. */
export const ringFailed = async (db: Db): Promise<void> => {
  await db.rpc('amocrm_ring_failed', {});
};

/** true for exactly one caller per interval, and only when no drainer holds the lease. */
export const requestDrain = async (db: Db, minIntervalMs = 5000): Promise<boolean> =>
  (await db.rpc<{ wake: boolean }>('amocrm_request_drain', { p_min_interval_ms: minIntervalMs })).wake;

export interface LookaheadJob {
  user_id: string;
  email: string | null;
  attempts: number;
}

export const claimLookahead = (db: Db, holder: string, limit: number) =>
  db.rpc<LookaheadJob[]>('amocrm_claim_lookahead', { p_holder: holder, p_limit: limit, p_lease_seconds: DRAIN_LEASE_SECONDS });

export type LookaheadOutcome = 'found' | 'no_deal' | 'failed' | 'retry';

export async function finishLookahead(
  db: Db, userId: string, holder: string, outcome: LookaheadOutcome,
  f: { leadId?: number; contactId?: number; code?: string; retryInMs?: number } = {},
): Promise<void> {
  await db.rpc('amocrm_finish_lookahead', {
    p_user_id: userId, p_holder: holder, p_outcome: outcome, p_lead_id: f.leadId, p_contact_id: f.contactId,
    p_error_code: f.code, p_retry_in_ms: f.retryInMs === undefined ? undefined : Math.round(f.retryInMs),
  });
}
