// One event by id: claim it (a duplicate delivery gets claimed=false) and run the sync's
// steps for it. Used by the webhook and replay; the scheduled run claims in batches.
import { claimEvent, type ClaimRefusal } from '../db/outbox.ts';
import type { SyncDeps } from './deps.ts';
import type { EventOutcome } from './outcome.ts';
import { processEvents } from './steps.ts';

export type DeliveryResult =
  | { claimed: true; outcome: EventOutcome }
  | { claimed: false; reason: ClaimRefusal; eventStatus?: string };

/** How long a delivery waits for the same student's other event to finish before leaving its own to the scheduled run. */
export const STUDENT_BUSY_WAIT_MS = 5_000;

/**
 * One student's events never run side by side (the claim refuses while another is in
 * flight), so a slow move of lesson 1 can never land after lesson 2's and pull the deal
 * back: this waits a little for the other one, then leaves the event queued.
 */
export async function deliverEvent(
  deps: SyncDeps,
  eventId: number,
  holder: string,
  statuses: string[] = ['pending'],
  busyWaitMs = STUDENT_BUSY_WAIT_MS,
): Promise<DeliveryResult> {
  const deadline = deps.clock.now() + busyWaitMs;
  while (true) {
    const claim = await claimEvent(deps.db, eventId, holder, statuses);
    if (claim.claimed) {
      const [outcome] = await processEvents(deps, [claim.event], holder);
      return { claimed: true, outcome: outcome! };
    }
    if (claim.reason !== 'student_busy' || deps.clock.now() >= deadline) {
      return { claimed: false, reason: claim.reason, eventStatus: claim.event?.status };
    }
    await deps.clock.sleep(250);
  }
}
