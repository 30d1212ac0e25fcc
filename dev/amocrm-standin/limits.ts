// amoCRM's limits and the faults tests inject. The rate limit is a sliding 1 s window per
// integration (/api/v4 and /oauth2 alike; only requests let through fill it); every 429 is a
// violation, and N of them within 60 s block the account: 403 with an HTML page to every
// request until reset(), as amoCRM does after repeated violations.
import { problem } from './hal.ts';
import type { Answer, Fault } from './types.ts';

const WINDOW_MS = 1000;
const VIOLATION_WINDOW_MS = 60_000;

const BLOCKED_HTML =
  '<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1>' +
  '<p>Access to the API has been blocked for this IP address / account because of repeated limit violations.</p></body></html>';

export interface LimitOptions { ratePerSecond: number; blockAfterViolations: number; latencyMs: [number, number]; now: () => number }

export function createLimits({ ratePerSecond, blockAfterViolations, latencyMs, now }: LimitOptions) {
  let window: number[] = [];
  let violations: number[] = [];
  let blocked = false;
  let faults: { route: string; fault: Fault; remaining: number }[] = [];
  let latency = latencyMs;

  return {
    /** The 403 every request gets while the account is blocked; undefined when it is not. */
    block(): Answer | undefined {
      return blocked ? { status: 403, body: BLOCKED_HTML } : undefined;
    },

    /** Takes a place in the rate window, or answers 429 (and counts the violation). */
    admit(): Answer | undefined {
      const t = now();
      window = window.filter((at) => at > t - WINDOW_MS);
      if (window.length < ratePerSecond) {
        window.push(t);
        return undefined;
      }
      if (blockAfterViolations > 0) {
        violations = violations.filter((at) => at > t - VIOLATION_WINDOW_MS);
        violations.push(t);
        if (violations.length >= blockAfterViolations) blocked = true;
      }
      const reply = problem(429, `You have sent too many requests. Please slow down (at most ${ratePerSecond} requests per second).`, { retry_after: 1 });
      return { ...reply, headers: { 'retry-after': '1' } };
    },

    inject(route: string, fault: Fault, times = 1) {
      if (times <= 0) return;
      // 'get /api/v4/leads' and 'GET  /api/v4/leads' name the same route.
      const key = route.trim().replace(/\s+/g, ' ').replace(/^(\S+)/, (m) => (m === '*' ? m : m.toUpperCase()));
      faults.push({ route: key, fault, remaining: times });
    },

    /** The fault for this request, if one is waiting for its route (or for '*'); uses it up. */
    takeFault(route: string): Fault | undefined {
      const i = faults.findIndex((f) => f.route === '*' || f.route === route);
      if (i < 0) return undefined;
      const f = faults[i]!;
      if (--f.remaining <= 0) faults.splice(i, 1);
      return f.fault;
    },

    clearFaults() {
      faults = [];
    },

    /** Unblocks, forgets violations and the rate window, clears faults. */
    reset() {
      blocked = false;
      violations = [];
      window = [];
      faults = [];
    },

    setLatency(range: [number, number]) {
      latency = [range[0], range[1]];
    },

    /** How long to hold this answer: uniform in the latency range. */
    delay(): number {
      const lo = Math.max(0, Math.min(...latency));
      const hi = Math.max(0, ...latency);
      return lo + Math.random() * (hi - lo);
    },
  };
}

export type StandinLimits = ReturnType<typeof createLimits>;
