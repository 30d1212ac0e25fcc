// Deals found ahead of time: when a student signs up, a low-priority job finds and
// remembers their deal, so their first lesson is a warm event (one read, one move). Jobs
// use only rate capacity lesson events leave unused (the 'spare' lane): the first refusal
// stops the batch and the rest wait. A student without a deal yet is simply searched
// again at the first lesson.
import { AmoError } from '../amocrm/errors.ts';
import { claimLookahead, finishLookahead, type LookaheadJob } from '../db/lookahead-jobs.ts';
import type { Runtime } from '../runtime.ts';
import { chooseFromSearch, searchStudent, type StudentSearch } from './find-deal.ts';
import { errorText } from '../log.ts';

export interface LookaheadReport {
  claimed: number;
  found: number;
  noDeal: number;
  /** Given back untried or to retry (no spare capacity, amoCRM trouble). */
  later: number;
  failed: number;
}

export async function runLookahead(rt: Runtime, limit = 20): Promise<LookaheadReport> {
  const inv = rt.invocation(0, { lane: 'spare' });
  const { db } = rt;
  const jobs = await claimLookahead(db, inv.holder, limit);
  const report: LookaheadReport = { claimed: jobs.length, found: 0, noDeal: 0, later: 0, failed: 0 };
  const settle = async (job: LookaheadJob, err: unknown) => {
    const e = err instanceof AmoError ? err : new AmoError('retryable', 'internal', errorText(err));
    if (e.kind === 'permanent') {
      report.failed++;
      await finishLookahead(db, job.user_id, inv.holder, 'failed', { code: e.code });
    } else {
      report.later++;
      await finishLookahead(db, job.user_id, inv.holder, 'retry', { code: e.code, retryInMs: e.code === 'no_spare_capacity' ? 5_000 : 60_000 });
    }
  };

  const searches = new Map<LookaheadJob, StudentSearch>();
  let stopped: unknown;
  for (const job of jobs) {
    if (stopped || !job.email) {
      await settle(job, stopped ?? new AmoError('permanent', 'no_email', 'нет e-mail'));
      continue;
    }
    try {
      searches.set(job, await searchStudent(inv.amo, job.email));
    } catch (err) {
      stopped = err;
      await settle(job, err);
    }
  }
  const searched = [...searches.keys()];
  let leads;
  try {
    leads = await inv.amo.getLeads(searched.flatMap((j) => searches.get(j)!.exactLeadIds));
  } catch (err) {
    for (const job of searched) await settle(job, err);
    return report;
  }
  for (const job of searched) {
    const choice = chooseFromSearch(searches.get(job)!, leads, rt.config.pipelineId);
    if (choice.lead) {
      report.found++;
      await finishLookahead(db, job.user_id, inv.holder, 'found', { leadId: choice.lead.id, contactId: choice.contactId });
    } else {
      report.noDeal++;
      await finishLookahead(db, job.user_id, inv.holder, 'no_deal', { code: choice.reason });
    }
  }
  if (report.found) rt.log.ok('Сделки найдены заранее для новых студентов', { found: report.found, no_deal: report.noDeal });
  return report;
}
