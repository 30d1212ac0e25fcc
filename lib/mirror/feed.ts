// The backstop for missed hooks: the scheduled run reads amoCRM's events feed from a
// stored cursor, with spare rate capacity only (never ahead of a lesson event), and
// applies every stage change through the same SQL as the hooks: what a hook already
// brought is recorded once.
import { AmoError } from '../amocrm/errors.ts';
import type { LeadChange } from '../amocrm/hooks.ts';
import type { AmoEvent } from '../amocrm/resources.ts';
import { applyChanges, getFeedCursor, putFeedCursor } from '../db/mirror.ts';
import type { Runtime } from '../runtime.ts';
import { logChanges } from './apply.ts';

/** Read again this far behind the cursor: events are stamped when they happen, not when the feed shows them. */
const OVERLAP_SECONDS = 120;
/** On the very first read, look back this far. */
const FIRST_LOOKBACK_SECONDS = 3600;

export interface FeedReport {
  read: number;
  changed: number;
  cursor: number;
  stoppedBy: 'done' | 'pages' | 'no_spare_capacity';
}

/**
 * maxPages: 50 pages of 100 = 5,000 stage changes per scheduled run (two minutes) — far
 * beyond a webinar's burst. Cut short, the cursor stays, and the next run reads again.
 */
export async function reconcileFeed(rt: Runtime, { maxPages = 50 } = {}): Promise<FeedReport> {
  const { db, clock } = rt;
  const now = Math.floor(clock.now() / 1000);
  const stored = await getFeedCursor(db);
  const cursor = stored ?? now - FIRST_LOOKBACK_SECONDS;
  const from = Math.max(0, cursor - OVERLAP_SECONDS);
  const amo = rt.invocation(0, { lane: 'spare' }).amo;
  const report: FeedReport = { read: 0, changed: 0, cursor, stoppedBy: 'done' };
  let newest = cursor;
  for (let page = 1; ; page++) {
    if (page > maxPages) {
      report.stoppedBy = 'pages';
      break;
    }
    let result;
    try {
      result = await amo.listEvents({ type: 'lead_status_changed', from, to: now, page, limit: 100 });
    } catch (err) {
      if (err instanceof AmoError && err.code === 'no_spare_capacity') {
        report.stoppedBy = 'no_spare_capacity';
        break;
      }
      throw err;
    }
    const changes = result.events.map(toChange).filter((c): c is LeadChange => c !== undefined);
    report.read += result.events.length;
    if (changes.length) {
      const { results } = await applyChanges(db, changes, 'feed', rt.config.pipelineId);
      report.changed += logChanges(rt, results, 'feed');
    }
    for (const e of result.events) newest = Math.max(newest, Number(e.created_at) || 0);
    if (!result.more) break;
  }
  // Forward only. Read in full: up to now (less the overlap). Cut short: the pages run
  // newest first, so what is left is older than what was read: keep the cursor for it.
  const next = report.stoppedBy === 'done' ? Math.max(newest, now - OVERLAP_SECONDS) : cursor;
  if (next > cursor || stored === null) await putFeedCursor(db, next);
  report.cursor = Math.max(next, cursor);
  return report;
}

function toChange(e: AmoEvent): LeadChange | undefined {
  const after = e.value_after?.find((v) => v.lead_status)?.lead_status;
  const before = e.value_before?.find((v) => v.lead_status)?.lead_status;
  if (e.entity_type !== 'lead' || !after || !Number.isSafeInteger(Number(e.entity_id))) return undefined;
  return {
    lead_id: Number(e.entity_id), action: 'status',
    pipeline_id: Number(after.pipeline_id), status_id: Number(after.id),
    ...(before ? { old_pipeline_id: Number(before.pipeline_id), old_status_id: Number(before.id) } : {}),
    modified_at: Number(e.created_at), ...(e.created_by ? { modified_by: Number(e.created_by) } : {}),
  };
}
