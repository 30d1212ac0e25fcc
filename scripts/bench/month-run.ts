// The month, run: the plan's actions and the scheduled runs on one virtual timeline.
//
// How time is compressed. Activity runs at real speed: a webinar's completions, the
// webhooks pg_net rings, the drainer, a manager's edit and its hook, a scheduled run. Once
// nothing moves (no webhook queued or in flight, no function running, no event claimed,
// no drain lease, no hook in flight), the clock jumps to the next thing that happens. A
// jump therefore never passes over a claim, a lease or a rate slot in use. The scheduled
// run is invoked at the times Netlify's cron would fire that matter, on its even-minute
// grid: every 2 minutes while work is waiting (events not final, look-ahead jobs), during
// an outage, and while hooks are missing once amoCRM has changes they did not bring (the
// events feed does the hooks' work); right before each incident begins or ends (the cron
// ran at most 2 minutes before it); every 30 minutes otherwise, when a run finds nothing
// to do (token upkeep 6 h ahead of expiry, alert reminders every 6 h and retention need no
// more).
//
// The operator answers the alerts that ask for a person, 2 hours after they start: a broken
// token chain with `exchange-code` (a fresh authorization code), dead events with a replay.
import type { Student } from '../../dev/stack/index.ts';
import { getFeedState } from '../../lib/db/deal-mirror.ts';
import { exchangeCodeCommand } from '../../lib/ops/token-commands.ts';
import type { MonthClock } from './month-clock.ts';
import type { MonthLog } from './month-log.ts';
import { DAY, HOUR, MINUTE, type Action, type MonthPlan } from './month-plan.ts';
import type { MonthStack } from './month-stack.ts';
import { installDeliveriesShadow, tableSizes, vacuumTables, type TableSizes } from './month-storage.ts';

const BUSY_EVERY = 2 * MINUTE;
const QUIET_EVERY = 30 * MINUTE;
const OPERATOR_AFTER = 2 * HOUR;
const QUIET_TIMEOUT_MS = 300_000;
const INCIDENTS = new Set(['outage', 'revoke', 'hooks']);

type OperatorAction = { at: number; kind: 'reauth' | 'replay' };

export interface Observations {
  startAt: number;
  realMs: number;
  sweeps: { busy: number; quiet: number; after: number; failed: number };
  /** How far behind the events feed was left by a scheduled run, at worst, and when. */
  feedLagWorst: { seconds: number; at: number };
  operator: { at: number; what: string }[];
  samples: TableSizes[];
  startSizes: TableSizes;
  retention: Record<string, number>;
  /** Times the stack was still moving after QUIET_TIMEOUT_MS (the clock then jumped anyway). */
  notQuiet: number;
  students: Student[];
  skippedEdits: number;
  incidents: { at: number; what: string }[];
}

export async function runMonth(ms: MonthStack, plan: MonthPlan, clock: MonthClock, log: MonthLog, say: (line: string) => void): Promise<Observations> {
  const { s } = ms;
  await installDeliveriesShadow(s);
  // The month starts at the next UTC midnight: nothing has happened yet, so this jump is free.
  const startAt = Math.ceil(clock.now() / DAY) * DAY;
  clock.jumpTo(startAt);
  const endAt = startAt + plan.scale.days * DAY;
  const obs: Observations = {
    startAt, realMs: 0, sweeps: { busy: 0, quiet: 0, after: 0, failed: 0 }, feedLagWorst: { seconds: 0, at: startAt },
    operator: [], samples: [], startSizes: await tableSizes(s), retention: {}, notQuiet: 0, students: [], skippedEdits: 0, incidents: [],
  };
  const realStart = performance.now();
  const queue: (Action | OperatorAction)[] = plan.actions.map((a) => ({ ...a, at: startAt + a.at }));
  const state = { outage: false, hooksOff: false, busy: false };
  let nextSweep = startAt + BUSY_EVERY;
  let lastSweepAt = startAt;
  let alertsSeen = 0;
  /** Hook deliveries amoCRM had made (or dropped) when the last scheduled run began. */
  let hooksAtLastSweep = 0;

  const settle = async () => { if (!(await ms.quiet(QUIET_TIMEOUT_MS))) obs.notQuiet++; };
  const tick = (every: number) => Math.floor(clock.now() / every) * every + every;
  const refreshBusy = async () => {
    const [r] = await s.database.sql(`select (select count(*) from amocrm.sync_events where status in ('pending', 'processing') or (status = 'failed' and retryable))::int
        + (select count(*) from amocrm.lookahead_jobs where status in ('pending', 'processing'))::int as n`);
    const missed = state.hooksOff && s.amo.hookAttempts.length > hooksAtLastSweep;
    state.busy = r!.n > 0 || state.outage || missed;
  };

  for (let day = -1; ;) {
    const next = queue[0];
    const at = Math.min(next?.at ?? Infinity, nextSweep);
    if (at >= endAt) break;
    await settle();
    clock.jumpTo(at);
    if (Math.floor((at - startAt) / DAY) !== day) {
      day = Math.floor((at - startAt) / DAY);
      say(`day ${day}: ${obs.students.length} students, ${obs.sweeps.busy + obs.sweeps.quiet} scheduled runs so far, ${((performance.now() - realStart) / 1000).toFixed(0)} s real`);
    }
    if (next && next.at <= nextSweep) {
      if (INCIDENTS.has(next.kind) && clock.now() - lastSweepAt > BUSY_EVERY) {
        await sweep('busy');
        await settle();
      }
      queue.shift();
      await perform(next);
      await refreshBusy();
      if (state.busy) nextSweep = Math.min(nextSweep, tick(BUSY_EVERY));
      continue;
    }
    await sweep(state.busy ? 'busy' : 'quiet');
    await refreshBusy();
    nextSweep = tick(state.busy ? BUSY_EVERY : QUIET_EVERY);
  }
  await settle();
  clock.jumpTo(endAt);
  await finish();
  obs.realMs = performance.now() - realStart;
  return obs;

  async function sweep(kind: 'busy' | 'quiet' | 'after') {
    obs.sweeps[kind]++;
    lastSweepAt = clock.now();
    hooksAtLastSweep = s.amo.hookAttempts.length;
    const report = await ms.sweep();
    if (!report.ok) obs.sweeps.failed++;
    for (const [rule, n] of Object.entries(report.retention ?? {})) if (typeof n === 'number' && rule !== 'batches') obs.retention[rule] = (obs.retention[rule] ?? 0) + n;
    const feed = await getFeedState(s.db);
    if (feed && feed.lag_seconds > obs.feedLagWorst.seconds) obs.feedLagWorst = { seconds: feed.lag_seconds, at: clock.now() };
    // The operator reads the alerts that need a person and acts two hours later.
    for (const a of log.alerts.slice(alertsSeen)) {
      if (a.state !== 'started') continue;
      if (a.kind === 'token_chain') enqueue({ at: a.at + OPERATOR_AFTER, kind: 'reauth' });
      if (a.kind === 'events_dead') enqueue({ at: a.at + OPERATOR_AFTER, kind: 'replay' });
    }
    alertsSeen = log.alerts.length;
  }

  function enqueue(a: OperatorAction) {
    const i = queue.findIndex((q) => q.at > a.at);
    queue.splice(i < 0 ? queue.length : i, 0, a);
  }

  async function perform(a: Action | OperatorAction) {
    switch (a.kind) {
      case 'signup': {
        const made = await s.addStudents(a.students.map((i) => `student${String(i).padStart(5, '0')}@month.kz`));
        a.students.forEach((i, k) => { obs.students[i] = made[k]!; });
        return;
      }
      case 'lessons':
        for (const it of a.items) await s.database.sql('insert into public.lesson_progress (user_id, lesson_id) values ($1, $2)', [obs.students[it.student]!.userId, it.lesson]);
        return;
      case 'edits': return edits(a.items);
      case 'outage':
        state.outage = a.on;
        if (a.on) s.amo.inject('*', a.fault === 'http503' ? { status: 503 } : { kind: 'reset' }, 1e9);
        else s.amo.clearFaults();
        obs.incidents.push({ at: clock.now(), what: `amoCRM outage (${a.fault === 'http503' ? '503 to everything' : 'every connection reset'}) ${a.on ? 'begins' : 'ends'}` });
        return;
      case 'revoke':
        // The integration's access revoked in amoCRM: every access and refresh token dies.
        s.amo.revokeRefreshTokens();
        s.amo.expireAccessTokens();
        obs.incidents.push({ at: clock.now(), what: 'the integration\'s tokens revoked in amoCRM' });
        return;
      case 'hooks':
        state.hooksOff = !a.on;
        if (a.on) s.amo.hooksOn();
        else s.amo.hooksOff();
        obs.incidents.push({ at: clock.now(), what: a.on ? 'amoCRM\'s hooks come back' : 'amoCRM\'s hooks go missing' });
        return;
      case 'sample':
        await vacuumTables(s);
        obs.samples.push(await tableSizes(s));
        return;
      case 'reauth': return reauthorize();
      case 'replay': return replayDead();
    }
  }

  async function edits(items: Extract<Action, { kind: 'edits' }>['items']) {
    const { stages } = s.layout;
    for (const it of items) {
      const leadId = obs.students[it.student]!.leadId;
      const lead = s.amo.lead(leadId)!;
      if (lead.statusId === 142 || lead.statusId === 143) { obs.skippedEdits++; continue; }
      if (it.edit === 'touch') s.amo.managerMove(leadId, { statusId: lead.statusId });
      else if (it.edit === 'paid') s.amo.managerMove(leadId, { statusId: stages.paid });
      else if (it.edit === 'won') s.amo.managerWin(leadId);
      else s.amo.managerLose(leadId);
      await s.amo.hooksSettled(); // one edit, its hooks answered, then the next: managers work one deal at a time
    }
  }

  async function reauthorize() {
    const result = await exchangeCodeCommand({ db: s.db, env: s.env }, s.amo.issueAuthCode());
    obs.operator.push({ at: clock.now(), what: `exchange-code (exit ${result.exitCode}): ${result.lines.join(' / ')}` });
  }

  async function replayDead() {
    let body: Record<string, unknown> = { status: 'dead', limit: 500 };
    const outcomes: Record<string, number> = {};
    for (let round = 0; round < 20; round++) {
      const r = await ms.replay(body);
      for (const item of r.results ?? []) outcomes[item.outcome] = (outcomes[item.outcome] ?? 0) + 1;
      if (!r.continue_with) break;
      body = r.continue_with;
    }
    obs.operator.push({ at: clock.now(), what: `replay --status dead: ${Object.entries(outcomes).map(([k, v]) => `${k} ${v}`).join(', ') || 'nothing to replay'}` });
  }

  /** The month is over: what is still waiting gets the scheduled runs it would get (2 h at most). */
  async function finish() {
    for (let i = 0; i < 60; i++) {
      await settle();
      await refreshBusy();
      if (!state.busy && !queue.some((q) => q.kind === 'reauth' || q.kind === 'replay')) break;
      const op = queue.find((q) => q.kind === 'reauth' || q.kind === 'replay');
      clock.jumpTo(Math.min(op?.at ?? Infinity, tick(BUSY_EVERY)));
      if (op && op.at <= clock.now()) { queue.splice(queue.indexOf(op), 1); await perform(op); continue; }
      await sweep('after');
    }
    await settle();
  }
}
