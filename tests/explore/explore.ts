// The explorer as a property: fast-check generates a scenario and a scheduler, runs the
// schedule, checks the invariants, and on a failure shrinks both to a minimal counterexample.
// A failure is printed with its seed, its path and the one-line command that replays it.
import fc from 'fast-check';
import type { InvariantName, Violation } from './invariants.ts';
import { scenarioArb, type Profile, type Scenario } from './scenario.ts';
import { runSchedule, type ScheduleResult } from './schedule.ts';
import type { World } from './world.ts';

export interface ExploreOptions {
  profile: Profile;
  runs: number;
  seed?: number;
  path?: string;
  /** Fail only on these invariants (the others are still checked and reported). */
  only?: InvariantName[];
  /** Stop shrinking after this long (the counterexample found so far is reported). */
  timeLimitMs?: number;
  /** Print one line per schedule. */
  progress?: (line: string) => void;
}

export interface ExploreOutcome {
  failed: boolean;
  /** Schedules run (on a failure: up to and including the first failing one). */
  schedules: number;
  shrinks: number;
  seed: number;
  path?: string;
  command?: string;
  violations: Violation[];
  scenario?: Scenario;
  trace: string[];
  report: string;
}

class ScheduleFailed extends Error {
  constructor(readonly result: ScheduleResult) {
    super(result.violations.map((v) => `${v.invariant}: ${v.detail}`).join('; '));
  }
}

/** The schedule's story without the database calls (counted instead), for a person to read. */
export function readableTrace(trace: string[]): string[] {
  const out: string[] = [];
  let db = 0;
  for (const line of trace) {
    if (/: db amocrm_/.test(line)) {
      db++;
      continue;
    }
    if (db) out.push(`    (${db} database call${db > 1 ? 's' : ''})`);
    db = 0;
    out.push(line);
  }
  return out;
}

export async function explore(w: World, o: ExploreOptions): Promise<ExploreOutcome> {
  const seed = o.seed ?? ((Date.now() ^ (Math.random() * 0x1_0000_0000)) >>> 0) % 0x7fff_ffff;
  let schedules = 0;
  const property = fc.asyncProperty(scenarioArb(o.profile), fc.scheduler({ act: w.g.act }), async (scenario, s) => {
    const result = await runSchedule(w, scenario, s);
    schedules++;
    const failing = result.violations.filter((v) => !o.only || o.only.includes(v.invariant));
    o.progress?.(`  schedule ${schedules}: ${result.steps} steps, ${failing.length ? `✖ ${failing.map((v) => v.invariant).join(', ')}` : 'ok'}`);
    if (failing.length) throw new ScheduleFailed(result);
  });
  const details = await fc.check(property, {
    numRuns: o.runs, seed, ...(o.path ? { path: o.path } : {}),
    ...(o.timeLimitMs ? { interruptAfterTimeLimit: o.timeLimitMs, markInterruptAsFailure: false } : {}),
  });
  if (!details.failed) {
    return { failed: false, schedules, shrinks: 0, seed, violations: [], trace: [], report: `${o.profile}: ${details.numRuns} schedules, every invariant held (seed ${seed})` };
  }
  const err = details.errorInstance;
  const result = err instanceof ScheduleFailed ? err.result : undefined;
  const path = details.counterexamplePath ?? undefined;
  const command = `npm run explore -- --profile ${o.profile} --seed=${details.seed} --path "${path}"${o.only ? ` --only ${o.only.join(',')}` : ''}`;
  const scenario = details.counterexample?.[0] as Scenario | undefined;
  const lines = [
    `✖ ${o.profile}: an invariant broke after ${details.numRuns} schedule(s) (${details.numShrinks} shrink steps), seed ${details.seed}, path ${path}`,
    ...(result?.violations ?? []).map((v) => `  ✖ ${v.invariant}: ${v.detail}`),
    ...(result ? [] : [`  ✖ ${String((err as Error)?.stack ?? err).split('\n').slice(0, 6).join('\n    ')}`]),
    `  scenario: ${JSON.stringify(scenario)}`,
    '  schedule:',
    ...readableTrace(result?.trace ?? []).map((l) => `    ${l}`),
    `  replay: ${command}`,
  ];
  return {
    failed: true, schedules: details.numRuns, shrinks: details.numShrinks, seed: details.seed, path, command,
    violations: result?.violations ?? [], scenario, trace: result?.trace ?? [], report: lines.join('\n'),
  };
}
