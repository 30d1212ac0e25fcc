// The compressed month's clock: real time plus an offset that only grows. Date.now is
// replaced for the whole process, so everything that tells the time moves together: the
// sync (lib/clock.ts reads Date.now), the amoCRM stand-in (started with now: () =>
// Date.now()), the Telegram stand-in, and the database, because on PGlite SQL's now() and
// clock_timestamp() read JavaScript's Date.now (the WASM build takes the realtime clock from
// it). On a PostgreSQL server now() is the server's clock: the month cannot run there.
//
// Timers (setTimeout) and performance.now() stay real. Activity therefore runs at real
// speed (a request's timeout, a sleep, the spacing of rate slots are real durations) and
// only quiet time is skipped: the caller jumps only when nothing holds a claim, a lease or
// a rate slot, so no lease expires and no slot goes stale because of a jump.
// `new Date()` without arguments does not read Date.now in V8; nothing in lib/ or dev/
// uses it.

export interface MonthClock {
  /** Virtual now (ms), the same as Date.now() while installed. */
  now(): number;
  /** Moves virtual time forward to `at` (never back); answers how far it jumped. */
  jumpTo(at: number): number;
  /** Total time skipped so far, and how many jumps. */
  skipped(): { ms: number; jumps: number };
  /** Puts the real Date.now back. */
  restore(): void;
}

export function installMonthClock(): MonthClock {
  const realNow = Date.now;
  const real = () => realNow.call(Date);
  let offset = 0;
  let jumps = 0;
  Date.now = () => real() + offset;
  return {
    now: () => Date.now(),
    jumpTo(at) {
      const by = Math.max(0, at - Date.now());
      if (by > 0) {
        offset += by;
        jumps++;
      }
      return by;
    },
    skipped: () => ({ ms: offset, jumps }),
    restore() {
      Date.now = realNow;
    },
  };
}
