// POST /.netlify/functions/amocrm-drain-background — the drainer, woken by the webhook or
// the scheduled run when they see a backlog. Netlify answers the caller 202 at once and
// lets this run for up to 15 minutes.
import { runDrain } from '../sync/drainer.ts';
import { verifyWebhook } from '../lesson-webhook/verify.ts';
import { endpoint } from './handler.ts';
import { json } from './respond.ts';

/** Netlify stops a background function at 15 minutes: stop starting batches a minute before. */
export const DRAIN_BUDGET_MS = 14 * 60_000;

export const handleDrain = endpoint({
  methods: ['POST'],
  usage: 'POST with x-webhook-secret: the drainer is woken by the webhook and the scheduled run',
  async handle(req, rt) {
    verifyWebhook(req.headers, await req.text(), rt.config.webhookSecret, Math.floor(rt.clock.now() / 1000));
    const report = await runDrain(rt, { budgetMs: DRAIN_BUDGET_MS, lingerMs: 45_000 });
    if (report.ran) {
      rt.log.info('Очередь разобрана', { claimed: report.claimed, ...report.outcomes, lookahead_found: report.lookaheadFound, stopped_by: report.stoppedBy, ms: report.elapsedMs });
    }
    return json(200, { ok: true, ...report });
  },
});
