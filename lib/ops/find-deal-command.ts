// `find-deal <email>`: the deal the sync would choose for an e-mail, and why; the
// look-alike contacts amoCRM's substring search also returns are shown and ignored.
import { LOST_STATUS_ID, WON_STATUS_ID, type Contact, type Lead, type Pipeline } from '../amocrm/resources.ts';
import { normalizeEmail } from '../sync/decide.ts';
import { findDeal } from '../sync/find-deal.ts';
import { finish, type CommandContext, type CommandResult } from './command.ts';
import { failureLines } from './failure.ts';
import { commandRuntime } from './lenient-runtime.ts';
import { iso } from './time-words.ts';

export interface FindDealResult extends CommandResult {
  chosenLeadId?: number;
  exactContactIds: number[];
  ignoredContactIds: number[];
}

export async function findDealCommand(ctx: CommandContext, email: string): Promise<FindDealResult> {
  const result = (exitCode: number, lines: string[], extra: Partial<FindDealResult> = {}): FindDealResult => ({
    ...finish(exitCode, lines), exactContactIds: [], ignoredContactIds: [], ...extra,
  });
  const wanted = normalizeEmail(email ?? '');
  if (!/^[^\s@]+@[^\s@]+$/.test(wanted)) return result(2, [`❌ "${email}" is not an e-mail address → npm run amocrm -- find-deal student@example.com`]);
  try {
    const { runtime, configured } = commandRuntime(ctx);
    if (!configured.pipeline) {
      return result(1, ['❌ AMOCRM_PIPELINE_ID is not set: the deal is chosen within the Tripwire pipeline → npm run amocrm -- pipelines, then set it']);
    }
    const pipelineId = runtime.config.pipelineId;
    const amo = runtime.invocation(10_000).amo;
    // The sync's own search and choice: what this prints is what the sync would do.
    const { search, leads, choice } = await findDeal(amo, wanted, pipelineId);
    const { contacts } = search;
    // Names only make the explanation readable: without them the ids still say it all.
    const pipelines = await amo.listPipelines().catch(() => [] as Pipeline[]);
    const pipelineName = (id: number) => pipelines.find((p) => p.id === id)?.name;
    const stageName = (pipeline: number, status: number) => pipelines.find((p) => p.id === pipeline)?.statuses.find((s) => s.id === status)?.name;
    const named = (name: string | undefined) => (name ? ` '${name}'` : '');
    const describeLead = (l: Lead) =>
      `deal ${l.id} '${l.name ?? ''}': pipeline ${l.pipeline_id}${named(pipelineName(l.pipeline_id))}, stage ${l.status_id}${named(stageName(l.pipeline_id, l.status_id))}` +
      `${l.status_id === WON_STATUS_ID ? ' (won)' : l.status_id === LOST_STATUS_ID ? ' (lost)' : ''}, updated ${iso(l.updated_at * 1000)}`;
    const describeContact = (c: Contact) => `contact ${c.id} '${c.name ?? ''}' <${c.emails.join(', ') || 'no e-mail'}>`;

    const lines: string[] = [
      `find-deal ${wanted} in pipeline ${pipelineId}${named(pipelineName(pipelineId))}`,
      `amoCRM contact search returned ${contacts.length}${search.complete ? '' : '+'} contact(s); the search matches substrings and names, so only an exact e-mail counts:`,
    ];
    for (const c of choice.exactContacts) {
      lines.push(`  ✓ ${describeContact(c)}: exact e-mail match, deals ${c.leadIds.join(', ') || 'none'}`);
    }
    for (const c of choice.ignoredContacts) {
      lines.push(`  ✗ ${describeContact(c)}: ignored, over-matched (no e-mail equal to ${wanted})`);
    }
    if (choice.exactContacts.length) {
      const outside = leads.filter((l) => !choice.candidates.includes(l));
      lines.push(`Deals of the matching contact(s) in pipeline ${pipelineId}: ${choice.candidates.length}`);
      for (const l of choice.candidates) lines.push(`  ${l.id === choice.lead?.id ? '→' : ' '} ${describeLead(l)}`);
      for (const l of outside) lines.push(`  ✗ ${describeLead(l)}: ${l.is_deleted ? 'deleted' : 'another pipeline'}, not considered`);
    }
    const extra = {
      exactContactIds: choice.exactContacts.map((c) => c.id),
      ignoredContactIds: choice.ignoredContacts.map((c) => c.id),
    };
    if (!choice.lead) {
      const why = choice.reason === 'contact_not_found'
        ? `no contact holds exactly ${wanted} (the search returned ${contacts.length}, none with that e-mail) → check the e-mail in amoCRM, or create the contact with its deal`
        : choice.reason === 'search_truncated'
          ? `the search stopped after ${contacts.length} look-alike contacts without an exact match, more pages unread → merge the duplicates or make the contact's e-mail exact in amoCRM`
          : `contact(s) ${choice.exactContacts.map((c) => c.id).join(', ')} have no deal in pipeline ${pipelineId} → create the deal in the Tripwire pipeline`;
      lines.push(`❌ no deal: ${why}`);
      return result(1, lines, extra);
    }
    const lead = choice.lead;
    const open = choice.candidates.filter((l) => l.status_id !== WON_STATUS_ID && l.status_id !== LOST_STATUS_ID);
    const why = choice.candidates.length === 1
      ? 'the only deal of the matching contact in the pipeline'
      : open.length === 0
        ? `all ${choice.candidates.length} deals are closed: the most recently updated one`
        : open.length === 1 && open[0]!.id === lead.id
          ? `the only open deal of ${choice.candidates.length} (open deals come before won/lost ones)`
          : `the most recently updated of ${open.length} open deals`;
    lines.push(`✅ chosen deal ${lead.id} '${lead.name ?? ''}' (contact ${choice.contactId ?? '?'}): ${why}`);
    return result(0, lines, { ...extra, chosenLeadId: lead.id });
  } catch (err) {
    return result(1, failureLines(err));
  }
}
