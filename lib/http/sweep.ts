// The scheduled run's HTTP layer (the run itself is lib/sync/sweep.ts, same name, one thing):
// one summary line per run, a JSON report as the answer.
import { runSweep } from '../sync/sweep.ts';
import { endpoint } from './handler.ts';
import { json } from './respond.ts';

export const handleSweep = endpoint({
  // Netlify invokes scheduled functions with a POST (they have no public URL in production).
  methods: ['POST'],
  usage: 'scheduled function: Netlify invokes it with POST',
  async handle(_req, rt) {
    const report = await runSweep(rt);
    if (report.claimed || report.tokenRefreshed || report.reconciled || report.resumed) {
      rt.log.info('Плановый запуск завершён', {
        claimed: report.claimed, ...report.outcomes,
        token_refreshed: report.tokenRefreshed, stopped_by: report.stoppedBy, ms: report.elapsedMs,
      });
    }
    return json(200, { ok: true, ...report });
  },
});
