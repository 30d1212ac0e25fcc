// The scheduled run's way through a backlog (a webinar ends, a thousand completions at
// once): the same decisions as one event at a time, with amoCRM calls shared. Deals the
// sync already knows are read 250 per request, and moves go 50 per PATCH. Only a
// student's first event still needs a contact search of its own. Under 7 requests/s
// this is what turns minutes of draining into seconds.
import { AmoError } from '../amocrm/errors.ts';
import { MAX_BATCH_MOVES, MAX_BATCH_READS, type Lead } from '../amocrm/resources.ts';
import type { MoveDecision } from './decide.ts';
import {
  decide, findLead, finish, handleFailure, pipelineOrder, processClaimedEvent, recordDecision,
  type ClaimedEvent, type EventOutcome, type SyncDeps,
} from './process-event.ts';

interface Planned {
  event: ClaimedEvent;
  found: { lead: Lead; contactId?: number };
  decision: MoveDecision;
  target: number;
}

const chunks = <T>(items: T[], size: number): T[][] =>
  Array.from({ length: Math.ceil(items.length / size) }, (_, i) => items.slice(i * size, (i + 1) * size));

export async function processBatch(deps: SyncDeps, events: ClaimedEvent[], holder: string): Promise<EventOutcome[]> {
  const outcomes: EventOutcome[] = [];
  const pending = new Set(events);
  const settle = (event: ClaimedEvent, outcome: EventOutcome) => {
    pending.delete(event);
    outcomes.push(outcome);
  };

  try {
    // amocrm_claim_due hands out at most one event per student, so no two moves of one
    // student's deal are planned from the same read.
    // Deals already known: read in bulk. Unknown ones (or gone from the pipeline) take
    // the one-at-a-time path, which searches by e-mail.
    const known = [...pending].filter((e) => e.cached_lead_id && e.email);
    const leads = new Map<number, Lead>();
    for (const ids of chunks([...new Set(known.map((e) => e.cached_lead_id!))], MAX_BATCH_READS)) {
      for (const lead of await deps.amo.getLeads(ids)) leads.set(lead.id, lead);
    }
    const plans: Planned[] = [];
    const order = known.some((e) => { const l = leads.get(e.cached_lead_id!); return l && !deps.settings.stageIds.includes(l.status_id); })
      ? await pipelineOrder(deps) : undefined;
    for (const event of [...pending]) {
      const lead = event.cached_lead_id ? leads.get(event.cached_lead_id) : undefined;
      if (lead && lead.pipeline_id === deps.settings.pipelineId && event.email) {
        plans.push({ event, found: { lead }, ...(await decide(deps, event, lead, order)) });
        continue;
      }
      try {
        const found = await findLead(deps, event);
        plans.push({ event, found, ...(await decide(deps, event, found.lead, order)) });
      } catch (err) {
        if (err instanceof AmoError && err.kind === 'permanent') settle(event, await handleFailure(deps, event, holder, err));
        else throw err;
      }
    }

    // Two students on one deal: the later event waits for the next batch.
    const byLead = new Map<number, Planned>();
    for (const plan of plans) {
      if (byLead.has(plan.found.lead.id)) {
        await finish(deps.db, plan.event, holder, 'deferred', { retry_in_ms: 0 });
        settle(plan.event, { eventId: plan.event.id, status: 'deferred', moved: false });
      } else byLead.set(plan.found.lead.id, plan);
    }

    const moves = [...byLead.values()].filter((p) => p.decision.action === 'move');
    for (const chunk of chunks(moves, MAX_BATCH_MOVES)) {
      const result = chunk.length === 1 ? 'single' : await deps.amo.moveLeads(chunk.map((p) => ({ id: p.found.lead.id, statusId: p.target })), deps.settings.pipelineId);
      for (const plan of chunk) {
        if (result === 'ok') {
          settle(plan.event, await recordDecision(deps, plan.event, holder, plan.found, plan.decision, plan.target));
          continue;
        }
        // One by one: finds the item amoCRM refused, and moves the others.
        try {
          await deps.amo.moveLead(plan.found.lead.id, deps.settings.pipelineId, plan.target);
          settle(plan.event, await recordDecision(deps, plan.event, holder, plan.found, plan.decision, plan.target));
        } catch (err) {
          if (err instanceof AmoError && err.kind === 'permanent') settle(plan.event, await handleFailure(deps, plan.event, holder, err, plan.found.lead.id));
          else throw err;
        }
      }
    }
    for (const plan of byLead.values()) {
      if (pending.has(plan.event)) settle(plan.event, await recordDecision(deps, plan.event, holder, plan.found, plan.decision, plan.target));
    }
  } catch (err) {
    // A failure that concerns the whole batch (429, 5xx, network, tokens): every event not
    // yet recorded gets it, with its own backoff. Nothing is left claimed.
    for (const event of [...pending]) settle(event, await handleFailure(deps, event, holder, err));
  }
  for (const event of [...pending]) settle(event, await processClaimedEvent(deps, event, holder));
  return outcomes;
}
