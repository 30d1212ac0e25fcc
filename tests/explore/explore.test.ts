// The interleaving-and-fault explorer, bounded: a few dozen seeded schedules per property on
// this run's database (PGlite, or PostgreSQL with DATABASE_URL). More: npm run explore -- --runs N.
// A failure prints its seed, the minimal counterexample and the command that replays it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { explore } from './explore.ts';
import { openWorld, type World } from './world.ts';

const RUNS = Number(process.env.EXPLORE_RUNS ?? 20);
const SEED = process.env.EXPLORE_SEED ? Number(process.env.EXPLORE_SEED) : undefined;

let w: World;
beforeAll(async () => { w = await openWorld(); }, 120_000);
afterAll(async () => { await w?.close(); });

describe('explorer: seeded schedules of every actor, with faults', () => {
  for (const profile of ['lessons', 'hooks'] as const) {
    it(`${profile}: every invariant holds`, async () => {
      const outcome = await explore(w, { profile, runs: RUNS, seed: SEED, timeLimitMs: 60_000 });
      if (outcome.failed) console.error(outcome.report);
      expect(outcome.failed, outcome.report).toBe(false);
    }, 180_000);
  }
});
