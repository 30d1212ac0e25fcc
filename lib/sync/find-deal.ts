// Which deal is the student's. One implementation for the webhook, the batch and the
// `find-deal` CLI: search contacts by e-mail → keep exact matches → read their deals →
// choose (decide.ts). The batch runs the same steps with the deal read shared.
import { AmoError, permanent } from '../amocrm/errors.ts';
import type { AmoResources, Contact, Lead } from '../amocrm/resources.ts';
import { chooseDeal, exactContacts, isClosed, normalizeEmail, type DealChoice } from './decide.ts';

export interface StudentSearch {
  email: string;
  contacts: Contact[];
  /** false: the search stopped at its page cap with more matches left. */
  complete: boolean;
  /** Deal ids of the contacts whose e-mail is exactly the student's. */
  exactLeadIds: number[];
}

/** Step 1: the contacts amoCRM finds for the e-mail (it over-matches) and the exact ones' deal ids. */
export async function searchStudent(amo: AmoResources, email: string, signal?: AbortSignal): Promise<StudentSearch> {
  const wanted = normalizeEmail(email);
  const { contacts, complete } = await amo.searchContacts(wanted, signal);
  const exactLeadIds = exactContacts(contacts, wanted).flatMap((c) => c.leadIds);
  return { email: wanted, contacts, complete, exactLeadIds: [...new Set(exactLeadIds)] };
}

/** Step 2, after the deals were read: the choice, with its explanation. */
export function chooseFromSearch(search: StudentSearch, leads: Lead[], pipelineId: number): DealChoice {
  return chooseDeal(search.email, search.contacts, leads, pipelineId, search.complete);
}

/** The chosen deal, or the permanent failure that explains why there is none. */
export function chosenOrThrow(choice: DealChoice): { lead: Lead; contactId?: number } {
  if (!choice.lead) {
    const whatToDo = choice.reason === 'search_truncated'
      ? 'у многих контактов похожий e-mail: объедините дубли или уточните e-mail контакта в amoCRM, затем повторите событие'
      : undefined;
    throw permanent(choice.reason, choice.explanation, whatToDo ? { whatToDo } : undefined);
  }
  return { lead: choice.lead, contactId: choice.contactId };
}

/** The whole search for one e-mail (the CLI's view: everything it saw and why). */
export async function findDeal(amo: AmoResources, email: string, pipelineId: number): Promise<{ search: StudentSearch; leads: Lead[]; choice: DealChoice }> {
  const search = await searchStudent(amo, email);
  const leads = await amo.getLeads(search.exactLeadIds);
  return { search, leads, choice: chooseFromSearch(search, leads, pipelineId) };
}

/**
 * A remembered deal is used only while it is an open deal in the pipeline: a deleted,
 * moved-out or closed one leads to a fresh search (the student may have a new deal).
 */
export function rememberedStillUsable(lead: Lead | undefined, pipelineId: number): lead is Lead {
  return Boolean(lead && !lead.is_deleted && lead.pipeline_id === pipelineId && !isClosed(lead));
}

export const noEmail = () => new AmoError('permanent', 'no_email', 'у студента нет e-mail в auth.users',
  { whatToDo: 'добавьте e-mail пользователю в Supabase (Authentication → Users), затем повторите событие' });
