// `find-deal <email>`: the deal the sync would choose for an e-mail, and why; the
// look-alike contacts amoCRM's substring search also returns are shown and ignored.
import { LOST_STATUS_ID, WON_STATUS_ID, type Contact, type Lead, type Pipeline } from '../amocrm/resources.ts';
import { isClosed, normalizeEmail, type DealChoice } from '../sync/decide.ts';
import { currentFunnels } from '../db/funnels.ts';
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
    // The first funnel's pipeline: the saved one's, else the variables' while none is saved.
    const pipelineId = (await currentFunnels(ctx.db))?.funnels[0]?.pipelineId ?? (configured.pipeline ? runtime.config.pipelineId : undefined);
    if (pipelineId === undefined) {
      return result(1, ['❌ no funnel is saved and AMOCRM_PIPELINE_ID is not set: the deal is chosen within the first funnel\'s pipeline → npm run amocrm -- funnels set <file.json> (or set AMOCRM_PIPELINE_ID)']);
    }
    const amo = runtime.invocation(10_000).amo;
    // The sync's own search and choice: what this prints is what the sync would do.
    const found = await findDeal(amo, wanted, pipelineId);
    // Names only make the explanation readable: without them the ids still say it all.
    const words = describer(await amo.listPipelines().catch(() => [] as Pipeline[]));
    const lines = explain(found, wanted, pipelineId, words);
    const { choice } = found;
    const extra = { exactContactIds: choice.exactContacts.map((c) => c.id), ignoredContactIds: choice.ignoredContacts.map((c) => c.id) };
    if (!choice.lead) return result(1, [...lines, `❌ no deal: ${noDealReason(choice, found.search.contacts.length, wanted, pipelineId)}`], extra);
    lines.push(`✅ chosen deal ${choice.lead.id} '${choice.lead.name ?? ''}' (contact ${choice.contactId ?? '?'}): ${chosenReason(choice, choice.lead)}`);
    return result(0, lines, { ...extra, chosenLeadId: choice.lead.id });
  } catch (err) {
    return result(1, failureLines(err));
  }
}

type Found = Awaited<ReturnType<typeof findDeal>>;
type Words = ReturnType<typeof describer>;

/** Deals, contacts and pipelines in words, with the names amoCRM gives them where known. */
function describer(pipelines: Pipeline[]) {
  const named = (name: string | undefined) => (name ? ` '${name}'` : '');
  const pipelineName = (id: number) => named(pipelines.find((p) => p.id === id)?.name);
  const stageName = (pipeline: number, status: number) => named(pipelines.find((p) => p.id === pipeline)?.statuses.find((s) => s.id === status)?.name);
  const lead = (l: Lead) =>
    `deal ${l.id} '${l.name ?? ''}': pipeline ${l.pipeline_id}${pipelineName(l.pipeline_id)}, stage ${l.status_id}${stageName(l.pipeline_id, l.status_id)}` +
    `${l.status_id === WON_STATUS_ID ? ' (won)' : l.status_id === LOST_STATUS_ID ? ' (lost)' : ''}, updated ${iso(l.updated_at * 1000)}`;
  const contact = (c: Contact) => `contact ${c.id} '${c.name ?? ''}' <${c.emails.join(', ') || 'no e-mail'}>`;
  return { pipelineName, lead, contact };
}

/** The search, the contacts kept and ignored, and the deals considered. */
function explain({ search, leads, choice }: Found, wanted: string, pipelineId: number, words: Words): string[] {
  const lines: string[] = [
    `find-deal ${wanted} in pipeline ${pipelineId}${words.pipelineName(pipelineId)}`,
    `amoCRM contact search returned ${search.contacts.length}${search.complete ? '' : '+'} contact(s); the search matches substrings and names, so only an exact e-mail counts:`,
  ];
  for (const c of choice.exactContacts) {
    lines.push(`  ✓ ${words.contact(c)}: exact e-mail match, deals ${c.leadIds.join(', ') || 'none'}`);
  }
  for (const c of choice.ignoredContacts) {
    lines.push(`  ✗ ${words.contact(c)}: ignored, over-matched (no e-mail equal to ${wanted})`);
  }
  if (choice.exactContacts.length) {
    const outside = leads.filter((l) => !choice.candidates.includes(l));
    lines.push(`Deals of the matching contact(s) in pipeline ${pipelineId}: ${choice.candidates.length}`);
    for (const l of choice.candidates) lines.push(`  ${l.id === choice.lead?.id ? '→' : ' '} ${words.lead(l)}`);
    for (const l of outside) lines.push(`  ✗ ${words.lead(l)}: ${l.is_deleted ? 'deleted' : 'another pipeline'}, not considered`);
  }
  return lines;
}

function noDealReason(choice: DealChoice, searched: number, wanted: string, pipelineId: number): string {
  if (choice.reason === 'contact_not_found') {
    return `no contact holds exactly ${wanted} (the search returned ${searched}, none with that e-mail) → check the e-mail in amoCRM, or create the contact with its deal`;
  }
  if (choice.reason === 'search_truncated') {
    return `the search stopped after ${searched} look-alike contacts without an exact match, more pages unread → merge the duplicates or make the contact's e-mail exact in amoCRM`;
  }
  return `contact(s) ${choice.exactContacts.map((c) => c.id).join(', ')} have no deal in pipeline ${pipelineId} → create the deal in the Tripwire pipeline`;
}

function chosenReason(choice: DealChoice, lead: Lead): string {
  const open = choice.candidates.filter((l) => !isClosed(l));
  if (choice.candidates.length === 1) return 'the only deal of the matching contact in the pipeline';
  if (open.length === 0) return `all ${choice.candidates.length} deals are closed: the most recently updated one`;
  if (open.length === 1 && open[0]!.id === lead.id) return `the only open deal of ${choice.candidates.length} (open deals come before won/lost ones)`;
  return `the most recently updated of ${open.length} open deals`;
}
