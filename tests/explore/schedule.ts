// One schedule: new students, the actors and faults the scenario names, interleaved by the
// scheduler step by step until nothing is left to release; then quiet (time passes, the
// scheduled run works off what is left, hooks arrive in order, the feed is read) and the
// invariants are checked.
import type { Scheduler } from 'fast-check';
import { applyPendingDeliveries } from '../../lib/mirror/apply.ts';
import { reconcileFeed } from '../../lib/mirror/feed.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { drainer, feedReader, hookDeliveries, manager, postHook, replay, student, sweep, type Cast, type Student } from './actors.ts';
import { newActor } from './gates.ts';
import { checkAll, type Violation } from './invariants.ts';
import type { Scenario } from './scenario.ts';
import { FaultPlan } from './transport.ts';
import type { Captured, World } from './world.ts';

/** A schedule that needs more steps than this is cut (and reported as such). */
const MAX_STEPS = 3_000;
let run = 0;

export interface ScheduleResult { violations: Violation[]; trace: string[]; steps: number }

async function fresh(w: World): Promise<void> {
  // Nothing of an earlier schedule may be claimed by this one's actors.
  await w.s.t.sql(`update amocrm.sync_events set status = 'dead', last_error_code = coalesce(last_error_code, 'explorer_reset'), lease_holder = null, lease_until = null
                    where status in ('pending', 'processing') or (status = 'failed' and retryable)`);
  await w.s.t.sql(`update amocrm.crm_deliveries set status = 'ignored' where status = 'pending'`);
  await w.s.t.sql(`update amocrm.drainer set holder = null, lease_until = null`);
  w.s.amo.reset();
  w.s.amo.resetCounts();
  w.s.log.lines.length = 0;
  w.g.trace = [];
  w.spawned = [];
  w.dbUp = true;
  await w.resetForSchedule();
}

export async function runSchedule(w: World, scenario: Scenario, s: Scheduler): Promise<ScheduleResult> {
  await fresh(w);
  run++;
  const students: Student[] = [];
  for (const [i] of scenario.students.entries()) {
    const st = await w.s.addStudent(`x${run}.${i}.${Date.now() % 100000}@explore.kz`);
    students.push({ userId: st.userId, leadId: st.leadId, email: `x${run}.${i}` });
  }
  w.plan = new FaultPlan(scenario.faults);
  const cast: Cast = { w, students, results: [], byKind: {}, scenario };
  w.g.s = s;
  hookDeliveries(cast);

  scenario.students.forEach((plan, i) => {
    student(cast, i);
    if (plan.manager) manager(cast, i, plan.manager);
  });
  for (let i = 0; i < scenario.drainers; i++) drainer(cast);
  for (let i = 0; i < scenario.sweeps; i++) sweep(cast);
  for (let i = 0; i < scenario.feedReads; i++) feedReader(cast);
  if (scenario.replay) replay(cast, scenario.replay.student, scenario.replay.force);
  scenario.timePasses.forEach((sec, i) => {
    const a = newActor(`clock${i}`);
    w.g.spawn(a, 'ticks', () => w.g.step(a, `${sec} s pass`, () => w.passTime(sec * 1000, 'a fault')), cast.results);
  });
  if (scenario.outage) {
    const a = newActor('database');
    w.g.spawn(a, 'goes down', async () => {
      w.dbUp = false;
      w.g.trace.push('  ⚡ the database is unreachable');
      await w.g.step(a, 'comes back', async () => {
        w.dbUp = true;
        w.g.trace.push('  ⚡ the database answers again');
      });
    }, cast.results);
  }

  let steps = 0;
  try {
    while (s.count() > 0) {
      if (++steps > MAX_STEPS) {
        w.g.trace.push(`… cut after ${MAX_STEPS} steps`);
        break;
      }
      await s.waitNext(1);
    }
  } finally {
    w.g.s = undefined;
  }
  await quiet(w, students);
  const violations = await checkAll(w, scenario, students, w.plan.injected429);
  return { violations, trace: w.g.trace, steps };
}

/** After the schedule: no more faults; time passes, and the scheduled run works off what is left. */
async function quiet(w: World, students: Student[]): Promise<void> {
  w.g.trace.push('── quiet');
  w.plan.on = false;
  w.dbUp = true;
  await w.plan.settleAllLates();
  const queue: Captured[] = [];
  w.onHook = (c) => void queue.push(c);
  const rt = w.runtime(undefined);
  const flushHooks = async () => {
    for (let c = queue.shift(); c; c = queue.shift()) await postHook(w, undefined, c, { copies: 1, form: 'full', sameId: true }, 0);
    await applyPendingDeliveries(rt);
  };
  const ids = students.map((s) => s.userId);
  for (let round = 0; round < 6; round++) {
    await w.passTime(600_000, 'quiet');
    const r = await runSweep(rt, { budgetMs: 20_000, reserveMs: 2_000 });
    await flushHooks();
    w.g.trace.push(`  quiet sweep → claimed=${r.claimed} ${JSON.stringify(r.outcomes)} hooks=${r.hooksApplied} feed=${r.feedChanged}`);
    const [open] = await w.sql(`select count(*)::int as n from amocrm.sync_events where user_id = any($1::uuid[])
                                  and (status in ('pending', 'processing') or (status = 'failed' and retryable))`, [ids]);
    const [pending] = await w.sql(`select count(*)::int as n from amocrm.crm_deliveries where status = 'pending'`);
    if (open!.n === 0 && pending!.n === 0) break;
  }
  const feed = await reconcileFeed(rt);
  await flushHooks();
  w.g.trace.push(`  quiet feed → read=${feed.read} changed=${feed.changed}`);
}
