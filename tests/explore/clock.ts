// The explorer's time. Real time is far too slow for leases of 90 s, so time passes only
// when the explorer says so, and then for everyone at once:
//   - amoCRM's clock (the stand-in's `now`) and the functions' clock are one virtual clock,
//     real time plus `offset`;
//   - the database's clock cannot be moved, so its data moves instead: every timestamp the
//     sync keeps (leases, holds, retries, the drain lease, the rate limiter) is shifted into
//     the past by the same amount (see world.ts, passTime).
// amoCRM stamps changes in whole seconds, and two changes of one deal never share a second
// in real life: before each change the stand-in makes, amoCRM's clock steps 1.1 s (`step`).
export const CHANGE_STEP_MS = 1_100;

export class VirtualClock {
  /**
   * Milliseconds added to real time (only grows). It starts 30 days back: amoCRM's clock is
   * behind the database's, so a time the database stamps itself (now()) is later than any of
   * amoCRM's, as it is for a delivery that arrives late. Code that orders amoCRM's changes by
   * amoCRM's own times does not notice; code that mixes in the database's clock does.
   */
  offset = -30 * 86_400_000;
  /** Virtual time that passed for the database too (sleeps, faults), in ms: what bounds a late apply. */
  passed = 0;

  now = (): number => Date.now() + this.offset;

  /** amoCRM's clock steps before a change, so no two changes share a second. */
  step(): void {
    this.offset += CHANGE_STEP_MS;
  }

  advance(ms: number): void {
    this.offset += ms;
    this.passed += ms;
  }
}

export const realSleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));
