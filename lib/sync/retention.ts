// Retention's worker: the scheduled run (sweep.ts) calls it after the lesson events, with
// the time it has left. Each call of the database function is one short batch of every
// rule (rows another transaction holds are skipped); the worker calls again while a rule
// still has a full batch and the time allows. What it leaves, the next run continues.
import type { Runtime } from '../runtime.ts';
import { RETENTION_RULES, retentionBatch, type RetentionRule } from '../db/retention.ts';
import { errorText } from '../log.ts';

export type RetentionReport = Record<RetentionRule, number> & { batches: number; stoppedBy: 'done' | 'budget' | 'error' };

export async function runRetention(rt: Runtime, { budgetMs = 5_000, batch }: { budgetMs?: number; batch?: number } = {}): Promise<RetentionReport> {
  const started = rt.clock.now();
  const report = Object.assign(Object.fromEntries(RETENTION_RULES.map((r) => [r, 0])) as Record<RetentionRule, number>,
    { batches: 0, stoppedBy: 'done' as RetentionReport['stoppedBy'] });
  for (;;) {
    if (rt.clock.now() - started >= budgetMs) { report.stoppedBy = 'budget'; break; }
    let done;
    try {
      done = await retentionBatch(rt.db, batch);
    } catch (err) {
      rt.log.warn('Очистка старых данных не выполнена: следующий плановый запуск повторит', { error: errorText(err) });
      report.stoppedBy = 'error';
      break;
    }
    report.batches += 1;
    for (const rule of RETENTION_RULES) report[rule] += done[rule] ?? 0;
    if (!RETENTION_RULES.some((rule) => (done[rule] ?? 0) >= done.batch)) break;
  }
  logRetention(rt, report);
  return report;
}

/** One line per run that removed or reduced anything. */
function logRetention(rt: Runtime, r: RetentionReport): void {
  if (!RETENTION_RULES.some((rule) => r[rule] > 0)) return;
  rt.log.ok('Старые данные очищены по правилам хранения', {
    deliveries_reduced: r.deliveries_reduced, deliveries_removed: r.deliveries_removed, attempts_removed: r.attempts_removed,
    events_compacted: r.events_compacted, history_removed: r.history_removed || undefined, changes_removed: r.changes_removed || undefined,
    batches: r.batches, more: r.stoppedBy === 'budget' ? true : undefined,
  });
}
