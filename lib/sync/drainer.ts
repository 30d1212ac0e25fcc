// The drain: one drainer at a time (a lease in the database) works through the due lesson
// events at the shared rate until the queue is empty, then through the look-ahead jobs
// with the capacity left. The background function runs it for up to 15 minutes; the
// scheduled run runs it within its 30 s. A drainer that runs out of time wakes its
// successor; one that is killed is replaced once its lease expires (whoever next sees a
// backlog wakes one).
import { beginDrain, endDrain, releaseDrain, renewDrain, requestDrain, ringFailed } from '../db/drain-lease.ts';
import { claimDue, type ClaimedEvent } from '../db/outbox.ts';
import { patientDb } from '../db/patient.ts';
import { buildRuntime, type Runtime } from '../runtime.ts';
import type { OutcomeStatus } from './outcome.ts';
import { dealNotesRound } from './deal-notes.ts';
import { runLookahead } from './lookahead.ts';
import { processEvents } from './steps.ts';
import { errorText } from '../log.ts';

/** How often a lingering drainer looks again. */
const IDLE_POLL_MS = 1_000;
/**
 * Look-ahead jobs given back for want of a spare slot are asked for again this much later
 * (about one slot at 6/s): lesson events first, then the jobs with the next spare slot.
 */
const SPARE_RETRY_MS = 170;

export interface DrainOptions {
  /** Stop starting batches after this long (Netlify: 15 min background, 30 s scheduled). */
  budgetMs: number;
  /** Leave this much of the budget for the batch in hand to finish. */
  reserveMs?: number;
  /**
   * Events per batch: one bulk read's worth (250 deals). Students with a remembered deal
   * cost a batch only their share of that read and of the PATCHes (50 moves each).
   */
  batchSize?: number;
  /**
   * Of a batch, at most this many students without a remembered deal (a contact search
   * each). 50 searches, their read and a PATCH are about 9 s at 6/s: at a halved rate still
   * well inside the 60 s drain lease and the 90 s claim lease.
   */
  maxSearches?: number;
  /** Also work the look-ahead jobs once no lesson event is due. */
  lookahead?: boolean;
  /**
   * Before ending, wait this long for pending events about to be due (given back to wait
   * for a slot or a 429 pause): the background drainer does, the scheduled run does not
   * (it runs again in two minutes).
   */
  lingerMs?: number;
}

export interface DrainReport {
  ran: boolean;
  claimed: number;
  outcomes: Partial<Record<OutcomeStatus, number>>;
  lookaheadFound: number;
  stoppedBy: 'empty' | 'budget' | 'busy' | 'lease_lost';
  elapsedMs: number;
}

export async function runDrain(rt: Runtime, options: DrainOptions): Promise<DrainReport> {
  const { budgetMs, reserveMs = 12_000, batchSize = 250, lookahead = true, lingerMs = 0 } = options;
  const maxSearches = Math.min(options.maxSearches ?? 50, batchSize);
  const started = rt.clock.now();
  rt = waitingOutOutages(rt, () => started + budgetMs - reserveMs);
  const { db, clock } = rt;
  const left = () => budgetMs - (clock.now() - started);
  const inv = rt.invocation(Math.min(10_000, Math.max(1_000, budgetMs - reserveMs)));
  const report: DrainReport = { ran: false, claimed: 0, outcomes: {}, lookaheadFound: 0, stoppedBy: 'busy', elapsedMs: 0 };
  if (!(await beginDrain(db, inv.holder))) return done();
  report.ran = true;

  try {
    while (true) {
      if (left() <= reserveMs) {
        report.stoppedBy = 'budget';
        break;
      }
      if (!(await renewDrain(db, inv.holder))) {
        report.stoppedBy = 'lease_lost';
        return done();
      }
      const batch = await claimDue(db, inv.holder, batchSize, maxSearches);
      if (batch.length) {
        report.claimed += batch.length;
        for (const group of knownFirst(batch)) {
          for (const o of await processEvents(inv.sync, group, inv.holder)) report.outcomes[o.status] = (report.outcomes[o.status] ?? 0) + 1;
        }
        continue;
      }
      // After the moves: the manager's notes and tasks take only slots lesson events leave.
      if (await dealNotesRound(rt)) continue;
      if (lookahead && (await lookaheadRound(rt, report))) continue;
      // Nothing due now. Events given back for a slot or a pause are due again in a moment:
      // wait for them rather than leave them to the next scheduled run.
      if (await endDrain(db, inv.holder, report.claimed, Math.min(lingerMs, Math.max(0, left() - reserveMs)))) {
        report.stoppedBy = 'empty';
        return done();
      }
      await clock.sleep(IDLE_POLL_MS);
    }
  } catch (err) {
    await releaseDrain(db, inv.holder, report.claimed).catch(() => undefined);
    throw err;
  }
  // Out of time with work left: hand over to a successor.
  const { due } = await releaseDrain(db, inv.holder, report.claimed);
  if (due) await wakeDrainer(rt);
  return done();

  function done(): DrainReport {
    report.elapsedMs = clock.now() - started;
    return report;
  }
}

/**
 * A batch's events of students with a remembered deal, then the others: the known ones are
 * moved (one read, one PATCH) before the contact searches start, not after them. Costs one
 * PATCH more for a batch that has both.
 */
function knownFirst(batch: ClaimedEvent[]): ClaimedEvent[][] {
  const known = batch.filter((e) => e.cached_lead_id);
  const cold = batch.filter((e) => !e.cached_lead_id);
  return [known, cold].filter((group) => group.length);
}

/**
 * One round of look-ahead jobs; true while there is look-ahead work: jobs moved, or jobs
 * that only wait for a spare slot. Those are work left, not an empty queue: asked again a
 * slot later (lesson events first); out of budget, the lease is handed on.
 */
async function lookaheadRound(rt: Runtime, report: DrainReport): Promise<boolean> {
  const jobs = await runLookahead(rt);
  report.lookaheadFound += jobs.found;
  if (jobs.claimed && jobs.later < jobs.claimed) return true;
  if (!jobs.waitingForSlot) return false;
  await rt.clock.sleep(SPARE_RETRY_MS);
  return true;
}

/**
 * The drain over a database that waits out an outage until `deadline`: a drainer inside
 * its budget carries on where it was instead of leaving the burst to the scheduled run.
 */
function waitingOutOutages(rt: Runtime, deadline: () => number): Runtime {
  let warned = false;
  const db = patientDb(rt.db, rt.clock, deadline, (err) => {
    if (warned) return;
    warned = true;
    rt.log.warn('База данных недоступна: обработчик очереди ждёт', { error: err.message.slice(0, 120) });
  });
  return buildRuntime(rt.config, db, { transport: rt.transport, log: rt.log, clock: rt.clock });
}

/**
 * Rings the background drainer if a backlog wants one and none holds the lease (at most
 * once per 5 s, whoever asks). Never throws: an unanswered ring is repaired by the
 * scheduled run, which drains and wakes again.
 */
export async function wakeDrainer(rt: Runtime): Promise<boolean> {
  if (!rt.config.drainUrl) return false;
  const chosen = await requestDrain(rt.db).catch((err) => notRung(rt, err));
  return chosen ? ringDrainer(rt) : false;
}

const notRung = (rt: Runtime, err: unknown): false => {
  rt.log.warn('Обработчик очереди не запущен', { error: errorText(err).slice(0, 120) });
  return false;
};

/**
 * The ring itself, for a caller the database has already chosen as the one to ring. A
 * ring that fails is recorded, so webhooks stop handing events to a drainer that is not
 * coming and deliver their own (the next ring is tried 5 s later).
 */
export async function ringDrainer(rt: Runtime): Promise<boolean> {
  const url = rt.config.drainUrl;
  if (!url) return false;
  let rung: boolean;
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'x-webhook-secret': rt.config.webhookSecret, 'content-type': 'application/json' },
      body: '{}',
      signal: AbortSignal.timeout(3_000),
    });
    await res.body?.cancel();
    if (res.status >= 300) rt.log.warn('Обработчик очереди не запущен', { status: res.status, what_to_do: 'проверьте функцию amocrm-drain-background и AMOCRM_DRAIN_URL; пока события разбирают вебхуки и плановый запуск' });
    rung = res.status < 300;
  } catch (err) {
    rung = notRung(rt, err);
  }
  if (!rung) await ringFailed(rt.db).catch(() => undefined);
  return rung;
}
