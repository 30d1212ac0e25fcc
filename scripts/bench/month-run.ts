// The month, run: the plan's actions and the scheduled runs on one virtual timeline.
//
// How time is compressed. Activity runs at real speed: a webinar's completions, the
// webhooks pg_net rings, the drainer, a manager's edit and its hook, a scheduled run. Once
// nothing moves (no webhook queued or in flight, no function running, no event claimed,
// no drain lease, no hook in flight or being applied), the clock jumps to the next thing
// that happens. A jump therefore never passes over a claim, a lease or a rate slot in use.
// The scheduled run is invoked at the times Netlify's cron would fire that matter, on its
// even-minute grid: every 2 minutes while lesson events wait (retries, deferrals, a
// burst's tail), during an outage, and while hooks are missing once amoCRM has changes
// they did not bring (the events feed does the hooks' work then); right before each
// incident begins or ends and 2 minutes after (the cron's runs around it); every hour
// otherwise. A run in quiet time has little to do that cannot wait an hour: token upkeep
// acts 6 h ahead of expiry, alert reminders every 6 h, retention by the day, and look-ahead
// jobs (a student's deal found ahead of the first lesson) are worked within the hour,
// which in the plan always comes before that student's first lesson.
//
// The operator answers the alerts that ask for a person, 2 hours after they start: a broken
// token chain with `exchange-code` (a fresh authorization code), dead events with a replay.
import { getFeedState } from '../../lib/db/deal-mirror.ts';
import { perform, type ActionRecord, type OperatorAction } from './month-actions.ts';
import type { MonthClock } from './month-clock.ts';
import type { MonthLog } from './month-log.ts';
import { DAY, HOUR, MINUTE, type Action, type MonthPlan } from './month-plan.ts';
import type { MonthStack } from './month-stack.ts';
import { installDeliveriesShadow, tableSizes, type TableSizes } from './month-storage.ts';

const BUSY_EVERY = 2 * MINUTE;
const QUIET_EVERY = HOUR;
const OPERATOR_AFTER = 2 * HOUR;
const QUIET_TIMEOUT_MS = 300_000;
const INCIDENTS = new Set(['outage', 'revoke', 'hooks']);
/** amoCRM stamps changes in whole seconds, and one deal's two changes never share a second in real life: actions are this far apart at least. */
const ACTION_GAP_MS = 1_100;

type SweepKind = 'busy' | 'quiet' | 'after';

export interface Observations extends ActionRecord {
  startAt: number;
  realMs: number;
  /** Where the real time went: scheduled runs, each kind of action, waiting for the stack to go quiet. */
  realBy: Record<string, number>;
  sweeps: Record<SweepKind | 'failed', number>;
  /** How far behind the events feed was left by a scheduled run, at worst, and when. */
  feedLagWorst: { seconds: number; at: number };
  startSizes: TableSizes;
  /** What retention did, summed over the scheduled runs' reports. */
  retention: Record<string, number>;
  /** Times the stack was still moving after QUIET_TIMEOUT_MS (the clock then went on anyway). */
  notQuiet: number;
}

export async function runMonth(ms: MonthStack, plan: MonthPlan, clock: MonthClock, log: MonthLog, say: (line: string) => void): Promise<Observations> {
  await installDeliveriesShadow(ms.s);
  // The month starts at the next UTC midnight: nothing has happened yet, so this jump is free.
  const startAt = Math.ceil(clock.now() / DAY) * DAY;
  clock.jumpTo(startAt);
  const run = new MonthRun(ms, plan, clock, log, say, startAt, await tableSizes(ms.s));
  await run.run();
  return run.obs;
}

class MonthRun {
  readonly obs: Observations;
  private readonly queue: (Action | OperatorAction)[];
  private readonly endAt: number;
  private readonly realStart = performance.now();
  private busy = false;
  private nextSweep: number;
  private lastSweepAt: number;
  private alertsSeen = 0;
  private lastActedAt = -Infinity;
  /** Hook deliveries amoCRM had made (or dropped) when the last scheduled run began. */
  private hooksAtLastSweep = 0;

  constructor(
    private readonly ms: MonthStack, plan: MonthPlan, private readonly clock: MonthClock,
    private readonly log: MonthLog, private readonly say: (line: string) => void, startAt: number, startSizes: TableSizes,
  ) {
    this.obs = {
      startAt, startSizes, realMs: 0, realBy: {}, sweeps: { busy: 0, quiet: 0, after: 0, failed: 0 }, feedLagWorst: { seconds: 0, at: startAt },
      retention: {}, notQuiet: 0, students: [], skippedEdits: 0, samples: [], incidents: [], operator: [], outage: false, hooksOff: false,
    };
    this.queue = plan.actions.map((a) => ({ ...a, at: startAt + a.at }));
    this.endAt = startAt + plan.scale.days * DAY;
    this.nextSweep = startAt + BUSY_EVERY;
    this.lastSweepAt = startAt;
  }

  async run(): Promise<void> {
    for (let day = -1; ;) {
      const next = this.queue[0];
      const at = Math.min(next?.at ?? Infinity, this.nextSweep);
      if (at >= this.endAt) break;
      await this.settle();
      const isAction = next !== undefined && next.at <= this.nextSweep;
      this.clock.jumpTo(isAction ? Math.max(at, this.lastActedAt + ACTION_GAP_MS) : at);
      const today = Math.floor((at - this.obs.startAt) / DAY);
      if (today !== day) {
        day = today;
        const { busy, quiet } = this.obs.sweeps;
        this.say(`day ${day}: ${this.obs.students.length} students, ${busy + quiet} scheduled runs so far, ${((performance.now() - this.realStart) / 1000).toFixed(0)} s real`);
      }
      if (isAction) await this.act(next);
      else await this.scheduledRun(this.busy ? 'busy' : 'quiet');
    }
    await this.settle();
    this.clock.jumpTo(this.endAt);
    await this.afterTheEnd();
    this.obs.realMs = performance.now() - this.realStart;
  }

  private async act(next: Action | OperatorAction) {
    if (INCIDENTS.has(next.kind) && this.clock.now() - this.lastSweepAt > BUSY_EVERY) {
      await this.sweep('busy');
      await this.settle();
    }
    this.queue.shift();
    await this.timed(next.kind, () => perform(this.ms, this.obs, next));
    this.lastActedAt = this.clock.now();
    await this.refreshBusy();
    if (this.busy || INCIDENTS.has(next.kind)) this.nextSweep = Math.min(this.nextSweep, this.tick(BUSY_EVERY));
  }

  private async scheduledRun(kind: SweepKind) {
    await this.sweep(kind);
    await this.refreshBusy();
    this.nextSweep = this.tick(this.busy ? BUSY_EVERY : QUIET_EVERY);
  }

  private sweep(kind: SweepKind) {
    return this.timed('scheduled runs', async () => {
      const { obs, ms } = this;
      obs.sweeps[kind]++;
      this.lastSweepAt = this.clock.now();
      this.hooksAtLastSweep = ms.s.amo.hookAttempts.length;
      const report = await ms.sweep();
      if (!report.ok) obs.sweeps.failed++;
      for (const [rule, n] of Object.entries(report.retention ?? {})) {
        if (typeof n === 'number' && rule !== 'batches') obs.retention[rule] = (obs.retention[rule] ?? 0) + n;
      }
      const feed = await getFeedState(ms.s.db);
      if (feed && feed.lag_seconds > obs.feedLagWorst.seconds) obs.feedLagWorst = { seconds: feed.lag_seconds, at: this.clock.now() };
      this.readAlerts();
    });
  }

  /** The operator reads the alerts that need a person, and acts two hours later. */
  private readAlerts() {
    for (const a of this.log.alerts.slice(this.alertsSeen)) {
      if (a.state !== 'started') continue;
      if (a.kind === 'token_chain') this.enqueue({ at: a.at + OPERATOR_AFTER, kind: 'reauth' });
      if (a.kind === 'events_dead') this.enqueue({ at: a.at + OPERATOR_AFTER, kind: 'replay' });
    }
    this.alertsSeen = this.log.alerts.length;
  }

  private enqueue(a: OperatorAction) {
    const i = this.queue.findIndex((q) => q.at > a.at);
    this.queue.splice(i < 0 ? this.queue.length : i, 0, a);
  }

  /** The month is over: what is still waiting gets the scheduled runs it would get, and the operator's answer (at most 60 runs). */
  private async afterTheEnd() {
    const isOperator = (q: Action | OperatorAction) => q.kind === 'reauth' || q.kind === 'replay';
    for (let i = 0; i < 60; i++) {
      await this.settle();
      await this.refreshBusy();
      const op = this.queue.find(isOperator);
      if (!this.busy && !op) break;
      this.clock.jumpTo(Math.min(op?.at ?? Infinity, this.tick(BUSY_EVERY)));
      if (op && op.at <= this.clock.now()) {
        this.queue.splice(this.queue.indexOf(op), 1);
        await perform(this.ms, this.obs, op);
      } else await this.sweep('after');
    }
    await this.settle();
  }

  /** Lesson events waiting (not final, not parked), an outage, or changes the missing hooks did not bring. */
  private async refreshBusy() {
    const [r] = await this.ms.s.database.sql(`select count(*)::int as n from amocrm.sync_events
        where status in ('pending', 'processing') or (status = 'failed' and retryable)`);
    const missed = this.obs.hooksOff && this.ms.s.amo.hookAttempts.length > this.hooksAtLastSweep;
    this.busy = r!.n > 0 || this.obs.outage || missed;
  }

  private settle() {
    return this.timed('waiting for quiet', async () => { if (!(await this.ms.quiet(QUIET_TIMEOUT_MS))) this.obs.notQuiet++; });
  }

  /** The cron's next tick on a grid of `every`. */
  private tick(every: number) {
    return Math.floor(this.clock.now() / every) * every + every;
  }

  private async timed<T>(kind: string, work: () => Promise<T>): Promise<T> {
    const t = performance.now();
    try {
      return await work();
    } finally {
      this.obs.realBy[kind] = (this.obs.realBy[kind] ?? 0) + performance.now() - t;
    }
  }
}
