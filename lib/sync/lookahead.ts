// Deals found ahead of time: when a student signs up, a low-priority job finds and
// remembers their deal, so their first lesson is a warm event (one read, one move). Jobs
// use only rate capacity lesson events leave unused (the 'spare' lane), two searches in
// flight (a spare slot is at most one slot away, so two keep the shared rate where one
// request's latency would not). The first refusal stops the batch: the rest are given
// back due at once, as work waiting for a slot (the drainer asks again a slot later, lesson
// events first). A student without a deal yet is simply searched again at the first lesson.
import { AmoError } from '../amocrm/errors.ts';
import { claimLookahead, finishLookahead, type LookaheadJob } from '../db/lookahead-jobs.ts';
import { rememberLeads } from '../db/outbox.ts';
import type { Lead } from '../amocrm/resources.ts';
import type { Runtime } from '../runtime.ts';
import { chooseFromSearch, searchStudent, type StudentSearch } from './find-deal.ts';
import { errorText } from '../log.ts';

export interface LookaheadReport {
  claimed: number;
  found: number;
  noDeal: number;
  /** Given back untried or to retry (no spare capacity, amoCRM trouble). */
  later: number;
  /** Of `later`, given back only for want of a spare slot: due again at once, work left. */
  waitingForSlot: number;
  failed: number;
}

/** Searches in flight: the spare lane grants a slot at most one slot ahead, so two fit. */
export const LOOKAHEAD_IN_FLIGHT = 2;

/**
 * A refusal is often only the other search's slot, one slot ahead of a quick answer: ask
 * again a slot later, a few times, before giving the batch back (lesson events due or a
 * pause refuse every time).
 */
const SPARE_TRIES = 3;

async function searchWaitingBriefly<T>(rt: Runtime, search: () => Promise<T>): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return await search();
    } catch (err) {
      if (!(err instanceof AmoError && err.code === 'no_spare_capacity') || tries >= SPARE_TRIES) throw err;
      await rt.clock.sleep(1000 / rt.config.amocrm.maxRps);
    }
  }
}

export async function runLookahead(rt: Runtime, limit = 20): Promise<LookaheadReport> {
  const inv = rt.invocation(0, { lane: 'spare' });
  const { db } = rt;
  const jobs = await claimLookahead(db, inv.holder, limit);
  const report: LookaheadReport = { claimed: jobs.length, found: 0, noDeal: 0, later: 0, waitingForSlot: 0, failed: 0 };
  const settle = async (job: LookaheadJob, err: unknown) => {
    const e = err instanceof AmoError ? err : new AmoError('retryable', 'internal', errorText(err));
    if (e.kind === 'permanent') {
      report.failed++;
      await finishLookahead(db, job.user_id, inv.holder, 'failed', { code: e.code });
    } else if (e.code === 'no_spare_capacity') {
      // Only waiting for a slot: due again at once, for whoever drains to ask a slot later.
      report.later++;
      report.waitingForSlot++;
      await finishLookahead(db, job.user_id, inv.holder, 'retry', { code: e.code, retryInMs: 0 });
    } else {
      report.later++;
      await finishLookahead(db, job.user_id, inv.holder, 'retry', { code: e.code, retryInMs: 60_000 });
    }
  };

  const searches = new Map<LookaheadJob, StudentSearch>();
  let stopped: unknown;
  const queue = [...jobs];
  await Promise.all(Array.from({ length: Math.min(LOOKAHEAD_IN_FLIGHT, queue.length) }, async () => {
    for (let job = queue.shift(); job; job = queue.shift()) {
      if (stopped || !job.email) {
        await settle(job, stopped ?? new AmoError('permanent', 'no_email', 'нет e-mail'));
        continue;
      }
      try {
        searches.set(job, await searchWaitingBriefly(rt, () => searchStudent(inv.amo, job!.email!)));
      } catch (err) {
        stopped ??= err;
        await settle(job, err);
      }
    }
  }));
  // In the claim's order, whatever order the searches came back in.
  const searched = jobs.filter((j) => searches.has(j));
  let leads;
  let pipelines: number[];
  try {
    leads = await inv.amo.getLeads(searched.flatMap((j) => searches.get(j)!.exactLeadIds));
    pipelines = [...new Set((await inv.sync.settings.funnels.current()).map((f) => f.pipelineId))];
  } catch (err) {
    for (const job of searched) await settle(job, err);
    return report;
  }
  for (const job of searched) {
    if (await keepFound(rt, inv.holder, job, searches.get(job)!, leads, pipelines)) report.found++;
    else report.noDeal++;
  }
  if (report.found) rt.log.ok('Сделки найдены заранее для новых студентов', { found: report.found, no_deal: report.noDeal });
  return report;
}

/**
 * The student's deal in each funnel's pipeline, remembered. The first funnel's goes with
 * the job's outcome; the others' are kept unless a lesson remembered one meanwhile.
 */
async function keepFound(rt: Runtime, holder: string, job: LookaheadJob, search: StudentSearch, leads: Lead[], pipelines: number[]): Promise<boolean> {
  const [first, ...others] = pipelines.map((pipelineId) => ({ pipelineId, choice: chooseFromSearch(search, leads, pipelineId) }));
  const more = others.filter((o) => o.choice.lead);
  await rememberLeads(rt.db, more.map((o) => ({
    userId: job.user_id, pipelineId: o.pipelineId, leadId: o.choice.lead!.id, contactId: o.choice.contactId, email: job.email, keepExisting: true,
  })));
  if (!first?.choice.lead && !more.length) {
    await finishLookahead(rt.db, job.user_id, holder, 'no_deal', { code: first?.choice.reason });
    return false;
  }
  await finishLookahead(rt.db, job.user_id, holder, 'found', { leadId: first?.choice.lead?.id, contactId: first?.choice.contactId });
  return true;
}
