// Transport of the scheduled run: one summary line per run, a JSON report as the answer.
import type { Runtime } from '../runtime.ts';
import { runSweep } from '../sync/sweep.ts';
import { failureResponse, json } from './respond.ts';

export async function handleSweep(_req: Request, runtime: () => Promise<Runtime>): Promise<Response> {
  try {
    const rt = await runtime();
    const report = await runSweep(rt);
    if (report.claimed || report.tokenRefreshed || report.reconciled || report.resumed) {
      rt.log.info('Плановый запуск завершён', {
        claimed: report.claimed, ...report.outcomes,
        token_refreshed: report.tokenRefreshed, stopped_by: report.stoppedBy, ms: report.elapsedMs,
      });
    }
    return json(200, { ok: true, ...report });
  } catch (err) {
    return failureResponse(err);
  }
}
