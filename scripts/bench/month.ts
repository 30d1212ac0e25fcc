// A month of an academy's traffic, compressed (npm run bench -- --only month): sign-ups
// every day, four webinars and a daily trickle of self-paced lessons, sales managers
// editing deals all day, access tokens expiring every 24 hours with the refresh token
// rotating, two amoCRM outages, a revoked token, amoCRM's hooks missing for a day. The
// stack runs in production topology (month-stack.ts) on PGlite, whose clock follows
// JavaScript's: quiet time is skipped by moving that one clock (month-clock.ts, and how
// the timeline is compressed: month-run.ts). The plan of the month: month-plan.ts.
// It prints storage at the end and its growth per day by table, with and without retention
// (month-storage.ts); the alerts by kind; the events feed's worst lag; the token chain;
// events lost; deals moved backwards; 429s (month-figures.ts).
import { loadavg } from 'node:os';
import { installMonthClock } from './month-clock.ts';
import { alertRows, dealRows, eventRows, feedRows, mirrorRows, storageRows, tokenRows, when, type RowFn } from './month-figures.ts';
import { monthLog } from './month-log.ts';
import { planMonth, type MonthScale } from './month-plan.ts';
import { runMonth, type Observations } from './month-run.ts';
import { startMonthStack, type MonthStack } from './month-stack.ts';

/** Lower than the other sections' 100–300 ms: the month measures storage, alerts and the guarantees, not latency, and must fit in minutes. */
export const MONTH_LATENCY_MS: [number, number] = [30, 80];

export const MONTH_DEFAULTS: Omit<MonthScale, 'seed' | 'days'> = {
  signupsPerDay: 20, webinarAttendance: 0.6, selfPacedPerDay: 0.06, editsPerDay: 120,
};

export interface MonthOptions {
  scale: MonthScale;
  row: RowFn;
  say?: (line: string) => void;
  latencyMs?: [number, number];
  /** Called with the stack once the figures are printed, before it closes (a test inspects it). */
  inspect?: (ms: MonthStack, obs: Observations) => Promise<void>;
}

export async function benchMonth(o: MonthOptions): Promise<void> {
  const say = o.say ?? ((line: string) => console.log(`  … ${line}`));
  const plan = planMonth(o.scale);
  const latencyMs = o.latencyMs ?? MONTH_LATENCY_MS;
  const { scale } = plan;
  const loadAtStart = loadavg();
  const clock = installMonthClock();
  const log = monthLog();
  const ms = await startMonthStack({ latencyMs, onLine: log.onLine }).catch((err) => { clock.restore(); throw err; });
  try {
    const obs = await runMonth(ms, plan, clock, log, say);
    const lessons = plan.lessons.webinar + plan.lessons.selfPaced;
    o.row('month: scale', `${scale.days} days, seed ${scale.seed}: ${plan.students} students (${scale.signupsPerDay} sign-ups a day), ${lessons} lessons completed ` +
      `(${plan.lessons.webinar} at ${plan.incidents.webinarDays.length} webinars, ${plan.lessons.selfPaced} self-paced), ` +
      `${Object.values(plan.edits).reduce((a, b) => a + b, 0)} manager edits (${Object.entries(plan.edits).map(([k, v]) => `${k} ${v}`).join(', ')}${obs.skippedEdits ? `; ${obs.skippedEdits} skipped: deal already closed` : ''}); ` +
      `amoCRM stand-in at 7 req/s, ${latencyMs.join('–')} ms, sync at 6/s`);
    const skipped = clock.skipped();
    o.row('month: compression', `${scale.days} virtual days in ${(obs.realMs / 60_000).toFixed(1)} min real: ${skipped.jumps} jumps over quiet time; ` +
      `scheduled runs: ${obs.sweeps.busy} on the 2-minute grid (events waiting, an outage, changes the missing hooks did not bring, around incidents), ${obs.sweeps.quiet} hourly (quiet), ${obs.sweeps.after} after the month's end` +
      `${obs.sweeps.failed ? `, ${obs.sweeps.failed} FAILED` : ''}; stack not quiet after 5 min: ${obs.notQuiet}×`);
    o.row('month: where the real time went', Object.entries(obs.realBy).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${(v / 1000).toFixed(0)} s`).join(', '));
    say(`incidents: ${obs.incidents.map((i) => `${when(obs, i.at)} ${i.what}`).join('; ')}`);
    for (const op of obs.operator) say(`operator at ${when(obs, op.at)}: ${op.what}`);
    storageRows(obs, o.row);
    const open = (await ms.s.database.sql('select key from amocrm.alerts where ended_at is null order by key')).map((r) => r.key as string);
    const timeline = alertRows(plan, obs, log, ms, open, o.row);
    say(`alerts: ${timeline || 'none'}`);
    await feedRows(obs, ms, o.row);
    await mirrorRows(ms, o.row);
    await tokenRows(obs, log, ms, o.row);
    await eventRows(obs, ms, o.row);
    dealRows(ms, o.row);
    reportLog(log, obs, say);
    await o.inspect?.(ms, obs);
  } finally {
    await ms.close();
    clock.restore();
    o.row('month: load average (1/5/15 min) at start → end', `${loadAtStart.map((x) => x.toFixed(2)).join('/')} → ${loadavg().map((x) => x.toFixed(2)).join('/')}`);
  }
}

/** The warnings and failures the month logged, most frequent first, and the first ❌ lines. */
function reportLog(log: ReturnType<typeof monthLog>, obs: Parameters<typeof when>[0], say: (line: string) => void) {
  const notable = [...log.phrases].filter(([p]) => p.startsWith('⚠️') || p.startsWith('❌')).sort((a, b) => b[1] - a[1]);
  for (const [phrase, n] of notable.slice(0, 12)) say(`log ×${n}: ${phrase}`);
  for (const f of log.failures.slice(0, 8)) say(`log at ${when(obs, f.at)}: ${f.line}`);
}
