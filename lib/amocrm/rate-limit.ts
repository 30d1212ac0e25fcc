// The shared limiter: amoCRM allows 7 requests/s per integration across all instances,
// so every request takes a slot from one row in the database (amocrm_take_rate_slot).
import type { Clock } from '../clock.ts';
import type { Db } from '../db/port.ts';
import { retryable } from './errors.ts';

export interface RateLimiter {
  /** Resolves when this caller may send one request; throws a retryable no_rate_slot if the wait would exceed the caller's patience. */
  acquire(): Promise<void>;
}

export function databaseRateLimiter(db: Db, clock: Clock, perSecond: number, maxWaitMs: number): RateLimiter {
  return {
    async acquire() {
      const slot = await db.rpc<{ granted: boolean; wait_ms: number }>('amocrm_take_rate_slot', {
        p_per_second: perSecond,
        p_max_wait_ms: maxWaitMs,
      });
      if (!slot.granted) {
        throw retryable('no_rate_slot', `очередь к amoCRM длиннее ${maxWaitMs} мс: событие оставлено плановому запуску`, {
          retryAfterMs: slot.wait_ms,
        });
      }
      if (slot.wait_ms > 0) await clock.sleep(slot.wait_ms);
    },
  };
}
