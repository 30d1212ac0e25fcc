// The drain lease (amocrm.drainer): who works the queue at the shared rate, how a lesson
// event is handed to a drainer that holds it, and who rings one. The only module that names
// these database functions (supabase/migrations/20261208000300_amocrm_drain.sql); the
// drainer itself is lib/sync/drainer.ts, the look-ahead jobs lookahead-jobs.ts.
import type { Db } from './port.ts';

export const DRAIN_LEASE_SECONDS = 60;

export const beginDrain = async (db: Db, holder: string): Promise<boolean> =>
  (await db.rpc<{ acquired: boolean }>('amocrm_begin_drain', { p_holder: holder, p_lease_seconds: DRAIN_LEASE_SECONDS })).acquired;

export const renewDrain = async (db: Db, holder: string): Promise<boolean> =>
  (await db.rpc<{ renewed: boolean }>('amocrm_renew_drain', { p_holder: holder, p_lease_seconds: DRAIN_LEASE_SECONDS })).renewed;

/** Ends the drain unless lesson events are due or will be within lingerMs (ended=false: go on). */
export const endDrain = async (db: Db, holder: string, drained: number, lingerMs = 0): Promise<boolean> =>
  (await db.rpc<{ ended: boolean }>('amocrm_end_drain', { p_holder: holder, p_drained: drained, p_linger_ms: lingerMs })).ended;

/** Gives the lease back whatever is due, counting what it drained; `due` says whether a successor is needed. */
export const releaseDrain = (db: Db, holder: string, drained = 0) =>
  db.rpc<{ released: boolean; due: boolean }>('amocrm_release_drain', { p_holder: holder, p_drained: drained });

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
