// The shared rate limit row (amocrm.rate_limiter): slots and 429 reports. The only module
// that names these database functions; the policy is in supabase/migrations/ and
// lib/amocrm/rate-limit.ts.
import type { Db } from './port.ts';

export interface SlotAnswer {
  granted: boolean;
  /** When granted: wait this long, then start. Otherwise: how far back in the queue. */
  wait_ms: number;
  /** Not granted but within patience: come back after retry_in_ms (nothing reserved). */
  queued?: boolean;
  retry_in_ms?: number;
  /** The shared rate in force (lowered after a 429). */
  rate: number;
  /** When granted: the database's clock at the answer and the slot's time (epoch ms). */
  now_ms?: number;
  slot_ms?: number;
}

/**
 * A slot at `perSecond`. `priority` (the token refresh): ahead of the queue and of the
 * horizon, at the earliest time the slots already handed out (recent_slots) leave room
 * for one more in every 1 s + 60 ms; the queue is pushed back by one slot.
 */
export function takeRateSlot(db: Db, a: { perSecond: number; maxWaitMs: number; priority?: boolean; horizonMs?: number }): Promise<SlotAnswer> {
  return db.rpc<SlotAnswer>('amocrm_take_rate_slot', {
    p_per_second: a.perSecond, p_max_wait_ms: Math.round(a.maxWaitMs), p_priority: a.priority ?? false,
    p_horizon_ms: a.horizonMs === undefined ? undefined : Math.round(a.horizonMs),
  });
}

export function reportRateLimited(db: Db, retryAfterMs?: number) {
  return db.rpc<{ paused_until: string | null; rate_factor?: number; rate_limited_total?: number }>('amocrm_report_rate_limited', {
    p_retry_after_ms: retryAfterMs === undefined ? undefined : Math.round(retryAfterMs),
  });
}

/** A slot only if it is free now and no lesson event is due or in flight (look-ahead jobs). */
export function takeSpareSlot(db: Db, perSecond: number): Promise<SlotAnswer> {
  return db.rpc<SlotAnswer>('amocrm_take_spare_slot', { p_per_second: perSecond });
}
