// Pure decisions, no I/O: which deal is the student's, and whether moving it is forward.
import { LOST_STATUS_ID, WON_STATUS_ID, type Contact, type Lead, type PipelineStatus } from '../amocrm/resources.ts';

export const normalizeEmail = (email: string) => email.trim().toLowerCase();

/** amoCRM's search over-matches (substrings, names): the contacts holding exactly this e-mail. */
export const exactContacts = (contacts: Contact[], email: string): Contact[] => {
  const wanted = normalizeEmail(email);
  return contacts.filter((c) => c.emails.some((e) => normalizeEmail(e) === wanted));
};

export interface DealChoice {
  lead?: Lead;
  contactId?: number;
  /** Contacts the search returned whose e-mail is exactly the student's. */
  exactContacts: Contact[];
  /** Contacts the search returned that only looked alike (substring, name). */
  ignoredContacts: Contact[];
  /** The exact contacts' deals in the configured pipeline. */
  candidates: Lead[];
  reason: 'chosen' | 'contact_not_found' | 'no_deal_in_pipeline' | 'search_truncated';
  explanation: string;
}

/** Won or lost: a closed deal is never moved. */
export const isClosed = (lead: Lead) => lead.status_id === WON_STATUS_ID || lead.status_id === LOST_STATUS_ID;

/**
 * amoCRM's `query` matches substrings and names, so only contacts holding exactly this
 * e-mail count. Among their deals in the pipeline: an open one before a won/lost one,
 * then the most recently updated. A search that stopped at its page cap without an exact
 * match is search_truncated, never contact_not_found.
 */
export function chooseDeal(email: string, contacts: Contact[], leads: Lead[], pipelineId: number, searchComplete = true): DealChoice {
  const wanted = normalizeEmail(email);
  const exact = exactContacts(contacts, wanted);
  const ignoredContacts = contacts.filter((c) => !exact.includes(c));
  if (exact.length === 0 && !searchComplete) {
    // Not "not found": the contact may be on a page the search did not read.
    return { exactContacts: exact, ignoredContacts, candidates: [], reason: 'search_truncated',
      explanation: `поиск по ${wanted} вернул больше ${contacts.length} контактов, точного совпадения среди них нет; остальные страницы не читались` };
  }
  if (exact.length === 0) {
    return { exactContacts: exact, ignoredContacts, candidates: [], reason: 'contact_not_found',
      explanation: `нет контакта с e-mail ${wanted} (поиск вернул ${contacts.length}, точных совпадений нет)` };
  }
  const ownLeadIds = new Set(exact.flatMap((c) => c.leadIds));
  const candidates = leads
    .filter((l) => ownLeadIds.has(l.id) && l.pipeline_id === pipelineId && !l.is_deleted)
    .sort((a, b) => Number(isClosed(a)) - Number(isClosed(b)) || b.updated_at - a.updated_at || b.id - a.id);
  const lead = candidates[0];
  if (!lead) {
    return { exactContacts: exact, ignoredContacts, candidates, reason: 'no_deal_in_pipeline',
      explanation: `у контакта ${exact.map((c) => c.id).join(', ')} нет сделок в воронке ${pipelineId}` };
  }
  const contactId = exact.find((c) => c.leadIds.includes(lead.id))?.id;
  return { lead, contactId, exactContacts: exact, ignoredContacts, candidates, reason: 'chosen',
    explanation: `выбрана сделка ${lead.id}: ${isClosed(lead) ? 'закрытая (открытых нет)' : 'открытая'}, обновлена последней из ${candidates.length}` };
}

export type MoveDecision =
  | { action: 'move' }
  | { action: 'already' }
  | { action: 'skip'; code: 'deal_closed' | 'would_move_backwards' | 'past_tripwire' | 'unknown_stage'; reason: string };

/**
 * Forward only. Never out of won/lost, never back to an earlier Tripwire stage, never
 * back from a stage sales moved the deal to after the Tripwire ones. `order` is the
 * pipeline's stages (sort), needed only when the deal sits outside the Tripwire stages.
 */
export function decideMove(
  currentStatusId: number,
  targetIndex: number,
  stageIds: readonly number[],
  order?: PipelineStatus[],
): MoveDecision {
  const target = stageIds[targetIndex]!;
  if (currentStatusId === target) return { action: 'already' };
  if (currentStatusId === WON_STATUS_ID || currentStatusId === LOST_STATUS_ID) {
    return { action: 'skip', code: 'deal_closed', reason: `сделка закрыта (${currentStatusId === WON_STATUS_ID ? 'успешно' : 'не реализована'})` };
  }
  const currentIndex = stageIds.indexOf(currentStatusId);
  if (currentIndex >= 0) {
    return currentIndex < targetIndex
      ? { action: 'move' }
      : { action: 'skip', code: 'would_move_backwards', reason: `сделка уже на этапе урока ${currentIndex + 1}, дальше урока ${targetIndex + 1}` };
  }
  const sortOf = (id: number) => order?.find((s) => s.id === id)?.sort;
  const current = sortOf(currentStatusId);
  const targetSort = sortOf(target);
  if (current === undefined || targetSort === undefined) {
    return { action: 'skip', code: 'unknown_stage', reason: `этап ${currentStatusId} не найден в воронке` };
  }
  if (current < targetSort) return { action: 'move' };
  const lastTripwire = Math.max(...stageIds.map((id) => sortOf(id) ?? -Infinity));
  return current > lastTripwire
    ? { action: 'skip', code: 'past_tripwire', reason: `отдел продаж уже продвинул сделку дальше Tripwire (этап ${currentStatusId})` }
    : { action: 'skip', code: 'would_move_backwards', reason: `сделка на этапе ${currentStatusId}, он дальше этапа урока ${targetIndex + 1}` };
}

/** Exponential backoff with jitter (50–100 % of the step), never shorter than amoCRM asked. */
export function backoffMs(attempt: number, random: () => number, retryAfterMs = 0, baseMs = 30_000, capMs = 3_600_000): number {
  const step = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.max(Math.round(step * (0.5 + random() * 0.5)), retryAfterMs);
}
