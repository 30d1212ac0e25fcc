// Replay: run chosen events again, idempotently (forward-only moves; a done event is not
// redone unless `force`). Bounded by a time budget: what does not fit is returned as a
// cursor to continue from, never left half-done. Same name, one thing: lib/http/replay.ts
// is its HTTP layer (the console's is lib/http/console/actions.ts).
import { z } from 'zod';
import type { Runtime } from '../runtime.ts';
import { missingEventIds, selectEvents } from '../db/outbox.ts';
import { deliverEvent } from './process-event.ts';

const REPLAYABLE = ['failed', 'dead', 'parked', 'skipped'] as const;

export const replayRequestSchema = z
  .strictObject({
    ids: z.array(z.number().int().positive().max(Number.MAX_SAFE_INTEGER), { message: 'must be an array of event ids (positive integers)' })
      .min(1, 'must name at least one event').max(500, 'at most 500 ids per call').optional(),
    status: z.enum([...REPLAYABLE, 'done'], { message: `must be one of ${[...REPLAYABLE, 'done'].join(', ')}` }).optional(),
    from: z.iso.datetime({ offset: true, message: 'must be an ISO timestamp, e.g. 2026-11-24T00:00:00Z' }).optional(),
    to: z.iso.datetime({ offset: true, message: 'must be an ISO timestamp, e.g. 2026-11-25T00:00:00Z' }).optional(),
    limit: z.number().int().min(1).max(500).default(50),
    dryRun: z.boolean().default(false),
    force: z.boolean({ message: 'must be true or false' }).default(false),
    afterId: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  })
  .refine((b) => b.ids || b.status, {
    message: `say which events: "ids": [event ids], or "status": one of ${REPLAYABLE.join(', ')} (or done with "force": true), optionally with "from"/"to"; add "dryRun": true to list them first`,
    path: [],
  })
  .refine((b) => !(b.ids && b.status), { message: 'give either ids or status, not both', path: ['ids'] })
  .refine((b) => b.status !== 'done' || b.force, { message: 'replaying done events needs "force": true', path: ['status'] })
  .refine((b) => !b.from || !b.to || Date.parse(b.from) < Date.parse(b.to), { message: 'must be after from', path: ['to'] });

export type ReplayRequest = z.infer<typeof replayRequestSchema>;

export interface ReplayResultItem {
  id: number;
  before: string;
  outcome: string;
  lead_id?: number;
  code?: string;
  message?: string;
}

export interface ReplayResult {
  dryRun: boolean;
  selected: number;
  /** Events actually run again (not the ones refused, not found, or only listed). */
  replayed: number;
  results: ReplayResultItem[];
  complete: boolean;
  /** Present when more events match: send the same request with these fields to continue. */
  next?: { afterId: number };
}

function notReplayedReason(d: { reason: string; eventStatus?: string }): string {
  if (d.reason === 'in_flight') return 'being processed right now';
  if (d.reason === 'student_busy') return 'another event of this student is being processed: replay it again in a minute';
  return `status ${d.eventStatus}${d.eventStatus === 'done' ? ': send "force": true to redo' : ''}`;
}

export async function runReplay(rt: Runtime, req: ReplayRequest, budgetMs = 40_000): Promise<ReplayResult> {
  const started = rt.clock.now();
  const statuses = req.status ? [req.status] : [...REPLAYABLE, 'pending', ...(req.force ? ['done'] : [])];
  const selected = await selectEvents(rt.db, {
    ids: req.ids, statuses: req.ids ? null : statuses, from: req.from, to: req.to, afterId: req.afterId, limit: req.limit,
  });
  const mayHaveMore = !req.ids && selected.length === req.limit;
  const last = selected.at(-1)?.id ?? req.afterId;
  const more = mayHaveMore ? { next: { afterId: last } } : {};
  // Ids that name no event are answered as such, not silently left out.
  const notFound: ReplayResultItem[] = req.ids
    ? (await missingEventIds(rt.db, req.ids)).map((id) => ({ id, before: 'none', outcome: 'not_found', message: `no event ${id} in amocrm.sync_events` }))
    : [];

  if (req.dryRun) {
    return {
      dryRun: true, selected: selected.length, replayed: 0, complete: !mayHaveMore, ...more,
      results: [...selected.map((e) => ({
        id: e.id, before: e.status, code: e.last_error_code ?? undefined, message: e.last_error ?? undefined,
        outcome: statuses.includes(e.status) ? 'would_replay' : `not_replayable: ${e.status}${e.status === 'done' ? ' (send "force": true to redo)' : ''}`,
      })), ...notFound],
    };
  }

  const inv = rt.invocation(3_000);
  const results: ReplayResultItem[] = [];
  let replayed = 0;
  for (const event of selected) {
    if (rt.clock.now() - started > budgetMs) {
      return { dryRun: false, selected: selected.length, replayed, results: [...results, ...notFound], complete: false, next: { afterId: results.at(-1)?.id ?? req.afterId } };
    }
    const delivered = await deliverEvent(inv.sync, event.id, inv.holder, statuses);
    if (delivered.claimed) replayed++;
    results.push(delivered.claimed
      ? { id: event.id, before: event.status, outcome: delivered.outcome.status, lead_id: delivered.outcome.leadId, code: delivered.outcome.code, message: delivered.outcome.message }
      : { id: event.id, before: event.status, outcome: 'not_replayed', message: notReplayedReason(delivered) });
  }
  return { dryRun: false, selected: selected.length, replayed, results: [...results, ...notFound], complete: !mayHaveMore, ...more };
}
