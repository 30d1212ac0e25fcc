// The shared limiter: amoCRM allows 7 requests/s per integration across all instances,
// and blocks the account (403 for everything) when 429s keep coming. Every request takes
// a slot from one row in the database; this side keeps the slot's promise.
//
// A slot says "start at T" on the database's clock. A process starved of CPU, or whose
// answer sat in a socket, starts late, and late requests bunch up at amoCRM. So the slot
// is mapped onto this process's clock with the smallest offset seen so far (the answer
// that came back fastest), and a slot that cannot be started within LATE_TOLERANCE of its
// time is void: a new one is taken. Bounding lateness below one slot gap (1/6 s at 6/s)
// keeps any 1 s window at amoCRM within 7 requests.
import type { Clock } from '../clock.ts';
import type { Db } from '../db/port.ts';
import { reportRateLimited, takeRateSlot, takeSpareSlot } from '../db/limiter.ts';
import { retryable } from './errors.ts';

export interface RateLimiter {
  /**
   * Resolves when this caller may start one request; throws a retryable no_rate_slot if
   * the wait would exceed the caller's patience. `priority` goes ahead of the queue (the
   * token refresh, which everything else waits for), ignoring the reservation horizon,
   * but its slot is counted: the database gives it the earliest time that keeps every
   * window of 1 s + LATE_TOLERANCE_MS within amoCRM's 7, and pushes the queue back by one.
   */
  acquire(options?: { priority?: boolean }): Promise<void>;
  /** amoCRM answered 429: every instance pauses and the shared rate drops. */
  rateLimited(retryAfterMs?: number): Promise<void>;
}

/**
 * How much later than its slot a request may start. Below half a slot gap at 6/s. The
 * database counts the refresh's slot over windows of 1 s + this (the 1060 ms in
 * amocrm_take_rate_slot in supabase/migrations/20261208000100_amocrm_sync.sql): change both
 * together.
 */
export const LATE_TOLERANCE_MS = 60;
/**
 * How far ahead a slot may be reserved. A caller further back waits without a slot, so a
 * 429 pause reaches the requests queued behind it (a reserved slot would still be used).
 */
export const RESERVE_HORIZON_MS = 1000;

// Per clock (one per process in production): the smallest local-minus-database offset
// observed, i.e. the answer with the least return delay. Kept across invocations, as a
// warm function instance is reused.
const offsets = new WeakMap<Clock, number>();
const CLOCK_STEP_MS = 1000;

export function databaseRateLimiter(
  db: Db, clock: Clock, perSecond: number, maxWaitMs: number,
  { lateToleranceMs = LATE_TOLERANCE_MS }: { lateToleranceMs?: number } = {},
): RateLimiter {
  const noSlot = (waitMs: number) =>
    retryable('no_rate_slot', `очередь к amoCRM длиннее ${maxWaitMs} мс: событие оставлено следующему запуску`, { retryAfterMs: waitMs });

  return {
    async acquire({ priority = false } = {}) {
      const deadline = clock.now() + maxWaitMs;
      // How long the queue was when last asked: when the wait is given up, the event is due
      // again once a slot may be free, not at once.
      let queueMs = 1000;
      while (true) {
        const left = deadline - clock.now();
        if (left < 0) throw noSlot(queueMs);
        const slot = await takeRateSlot(db, { perSecond, maxWaitMs: left, priority, horizonMs: RESERVE_HORIZON_MS });
        const answeredAt = clock.now();
        if (!slot.granted) {
          queueMs = slot.wait_ms;
          if (!slot.queued) throw noSlot(slot.wait_ms);
          await clock.sleep(Math.min(slot.retry_in_ms ?? slot.wait_ms, Math.max(0, left)));
          continue;
        }
        const startAt = localSlotTime(clock, answeredAt, slot);
        const wait = startAt - clock.now();
        if (wait > 0) await clock.sleep(wait);
        if (clock.now() - startAt <= lateToleranceMs) return;
        // Too late to keep the promise: this slot is void, take a new one.
      }
    },
    async rateLimited(retryAfterMs) {
      await reportRateLimited(db, retryAfterMs);
    },
  };
}

/** The slot's time on this process's clock. */
function localSlotTime(clock: Clock, answeredAt: number, slot: { wait_ms: number; now_ms?: number; slot_ms?: number }): number {
  if (slot.now_ms === undefined || slot.slot_ms === undefined) return answeredAt + slot.wait_ms;
  const observed = answeredAt - slot.now_ms;
  const previous = offsets.get(clock);
  // A return delay of over a second is not starvation but a clock step on either side:
  // start over from this observation rather than void every slot from now on.
  const best = previous === undefined || observed < previous || observed - previous > CLOCK_STEP_MS ? observed : previous;
  offsets.set(clock, best);
  return slot.slot_ms + best;
}

/**
 * For work that may use only capacity lesson events leave unused (look-ahead jobs): it
 * never queues. No spare slot now: a retryable no_spare_capacity, and the work waits.
 */
export function spareCapacityLimiter(db: Db, clock: Clock, perSecond: number): RateLimiter {
  return {
    async acquire() {
      const slot = await takeSpareSlot(db, perSecond);
      if (!slot.granted) throw retryable('no_spare_capacity', 'amoCRM занят уроками: поиск сделки заранее отложен');
      if (slot.wait_ms > 0) await clock.sleep(slot.wait_ms);
    },
    async rateLimited(retryAfterMs) {
      await reportRateLimited(db, retryAfterMs);
    },
  };
}
