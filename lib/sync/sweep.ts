// The scheduled run (its HTTP layer is lib/http/sweep.ts): keeps the token chain alive,
// brings back what was missed, and drains due events (webhook never arrived, retryable
// failures whose time has come, leases of killed invocations) as the drainer while it has
// time, unless a drainer already holds the queue. What it cannot finish it hands to the
// background drainer (drainer.ts).
import type { Runtime } from '../runtime.ts';
import { AmoError } from '../amocrm/errors.ts';
import type { AmoResources } from '../amocrm/resources.ts';
import { countParked, reconcile, resumeParked } from '../db/outbox.ts';
import type { OutcomeStatus } from './outcome.ts';
import { applyPendingDeliveries } from '../mirror/apply.ts';
import { reconcileFeed } from '../mirror/feed.ts';
import { runDrain } from './drainer.ts';
import { checkAlerts } from '../alerts/index.ts';
import { runRetention, type RetentionReport } from './retention.ts';

export interface SweepOptions {
  /** Netlify stops a scheduled function at 30 s; stop starting work well before. */
  budgetMs?: number;
  /**
   * Events claimed per batch. Known deals cost 2 requests per batch (one read, one
   * PATCH); a student's first event adds its own search, so 25 first events fit in ~5 s
   * at 6 req/s: one batch always fits in the reserve below.
   */
  batchSize?: number;
  /** Refresh the access token when it expires within this long (keeps ≥ 1 refresh a day). */
  upkeepWithinMs?: number;
  /** Don't start an event with less than this left. */
  reserveMs?: number;
}

export interface SweepReport {
  tokenRefreshed: boolean;
  reconciled: number;
  resumed: number;
  claimed: number;
  outcomes: Partial<Record<OutcomeStatus, number>>;
  /** busy: a drainer already holds the queue. */
  stoppedBy: 'empty' | 'budget' | 'busy' | 'lease_lost';
  lookaheadFound: number;
  /** The reverse direction (only when AMOCRM_HOOK_SECRET is set): hook deliveries applied, feed changes filled in. */
  hooksApplied: number;
  feedChanged: number;
  /** Retention (lib/sync/retention.ts): only when the lesson events left the queue empty and time is left. */
  retention?: RetentionReport;
  elapsedMs: number;
}

export async function runSweep(rt: Runtime, options: SweepOptions = {}): Promise<SweepReport> {
  const { budgetMs = 22_000, batchSize = 25, upkeepWithinMs = 6 * 3600_000, reserveMs = 9_000 } = options;
  const { db, clock, log } = rt;
  const started = clock.now();
  const left = () => budgetMs - (clock.now() - started);
  const inv = rt.invocation(Math.min(5_000, Math.max(500, budgetMs - reserveMs)));
  const report: SweepReport = { tokenRefreshed: false, reconciled: 0, resumed: 0, claimed: 0, outcomes: {}, stoppedBy: 'empty', lookaheadFound: 0, hooksApplied: 0, feedChanged: 0, elapsedMs: 0 };

  let chainOk = true;
  try {
    report.tokenRefreshed = (await inv.tokens.refreshIfExpiringWithin(upkeepWithinMs)).refreshed;
  } catch (err) {
    chainOk = !(err instanceof AmoError && err.kind === 'operator');
    if (!(err instanceof AmoError)) log.fail('Плановое обновление токена не удалось', { error: String((err as Error).message) });
  }

  // Before anything reads them: while no funnel is saved, today's variables become version 1.
  await inv.sync.settings.funnels.current();
  report.reconciled = await reconcile(db);
  if (report.reconciled > 0) log.warn('Найдены завершения уроков без событий: события созданы', { created: report.reconciled });

  if (chainOk) report.resumed = await resumeAccountParked(rt, inv.amo);

  const drained = await runDrain(rt, { budgetMs: left(), reserveMs, batchSize });
  Object.assign(report, { claimed: drained.claimed, outcomes: drained.outcomes, stoppedBy: drained.stoppedBy, lookaheadFound: drained.lookaheadFound });

  if (rt.config.hooks.secret) {
    // Deliveries the endpoint recorded but could not apply right away, then what the hooks
    // missed, read from the events feed with spare capacity only (after the lesson work).
    report.hooksApplied = (await applyPendingDeliveries(rt)).deliveries;
    if (chainOk && left() > 2_000) {
      try {
        // What the run has left, less a second to finish: a window cut short is resumed by the next run.
        report.feedChanged = (await reconcileFeed(rt, { budgetMs: left() - 1_000 })).changed;
      } catch (err) {
        log.warn('Лента событий amoCRM не прочитана: следующий плановый запуск повторит', { code: err instanceof AmoError ? err.code : 'internal' });
      }
    }
  }
  // Retention last, never ahead of lesson events: only when the drain emptied the queue.
  if (drained.stoppedBy === 'empty' && left() > 1_500) report.retention = await runRetention(rt, { budgetMs: left() - 1_000 });
  await checkAlerts(rt); // last: tells the team what this run saw (never throws)
  report.elapsedMs = clock.now() - started;
  return report;
}

/** Events parked because amoCRM refused the account (402/403) come back once it answers. */
const ACCOUNT_CODES = ['payment_required', 'account_blocked', 'unauthorized', 'oauth_not_configured'];

async function resumeAccountParked(rt: Runtime, amo: AmoResources): Promise<number> {
  // Only events parked on the account cost a look at amoCRM (token-chain ones resume when
  // an operator stores new tokens).
  if (!(await countParked(rt.db, ACCOUNT_CODES))) return 0;
  try {
    await amo.getAccount();
  } catch {
    return 0; // still refused: the parked events wait, their ❌ line was logged once
  }
  const resumed = await resumeParked(rt.db, ACCOUNT_CODES);
  if (resumed) rt.log.ok('amoCRM снова отвечает: отложенные события возвращены в очередь', { resumed });
  return resumed;
}
