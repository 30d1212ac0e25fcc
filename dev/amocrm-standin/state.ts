// The account's data: pipelines with their stages, contacts, leads. Every change of a lead
// (an API PATCH, a manager's move, a deletion, a new lead) goes through changeLead, deleteLead
// or addLead, which tell the listeners: the one place amoCRM's outgoing webhooks and its
// events feed hang on.
import type { StandinContact, StandinCustomField, StandinLead, StandinPipeline } from './types.ts';

export const WON = 142;
export const LOST = 143;
/** The user behind the integration's token: what amoCRM records as the author of API changes. */
export const API_USER_ID = 123;
/** The sales manager who moves deals by hand in the stand-in (a person, not the integration). */
export const MANAGER_USER_ID = 504141;

export type StatusState = StandinPipeline['statuses'][number];
export interface PipelineState { id: number; name: string; statuses: StatusState[]; isMain: boolean; sort: number }
export interface ContactState { id: number; name: string; emails: string[]; leadIds: number[]; updatedAt: number; createdAt: number }
export interface LeadState {
  id: number; name: string; pipelineId: number; statusId: number; updatedAt: number; isDeleted: boolean; createdAt: number; closedAt: number | null;
  price: number; responsibleUserId: number; createdBy: number; updatedBy: number; customFields: StandinCustomField[];
}
/** The fields a change may set. */
export interface LeadFields { pipelineId: number; statusId: number; name: string }
/**
 * One change of a lead, as the listeners see it: `kind` add (a new lead), update (fields set,
 * stage or not) or delete; `before` the fields just before it; `userId` who made it.
 */
export interface LeadChange { kind: 'add' | 'update' | 'delete'; lead: Readonly<LeadState>; before: Readonly<LeadFields>; at: number; by: 'api' | 'manager'; userId: number }
export interface FieldError { code: string; path: string; detail: string }

const NOT_SUPPORTED = "The value you've selected is not supported";
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isClosed = (statusId: number) => statusId === WON || statusId === LOST;

export function createState(nowSec: () => number) {
  const pipelines = new Map<number, PipelineState>();
  const contacts = new Map<number, ContactState>();
  const leads = new Map<number, LeadState>();
  const listeners = new Set<(change: LeadChange) => void>();
  const notify = (change: LeadChange) => {
    for (const listener of listeners) listener(change);
  };
  const fieldsOf = (l: LeadState): LeadFields => ({ pipelineId: l.pipelineId, statusId: l.statusId, name: l.name });

  const liveLead = (id: number) => {
    const l = leads.get(id);
    return l && !l.isDeleted ? l : undefined;
  };
  const hasStatus = (pipelineId: number, statusId: number) =>
    isClosed(statusId) || !!pipelines.get(pipelineId)?.statuses.some((s) => s.id === statusId);

  return {
    nowSec,

    addPipeline(p: StandinPipeline) {
      const statuses = p.statuses.map((s) => ({ ...s }));
      // Every amoCRM pipeline has the two closing stages, with the same ids everywhere.
      if (!statuses.some((s) => s.id === WON)) statuses.push({ id: WON, name: 'Успешно реализовано', sort: 10000, type: 0 });
      if (!statuses.some((s) => s.id === LOST)) statuses.push({ id: LOST, name: 'Закрыто и не реализовано', sort: 11000, type: 0 });
      const existing = pipelines.get(p.id);
      pipelines.set(p.id, {
        id: p.id, name: p.name, statuses,
        isMain: existing?.isMain ?? pipelines.size === 0,
        sort: existing?.sort ?? (pipelines.size + 1) * 100,
      });
    },

    addContact(c: StandinContact) {
      const at = c.updatedAt ?? nowSec();
      contacts.set(c.id, { id: c.id, name: c.name, emails: [...c.emails], leadIds: [...c.leadIds], updatedAt: at, createdAt: at });
    },

    /** Seeds a lead (replacing one with the same id); a lead new to the account is an 'add' for the listeners. */
    addLead(l: StandinLead) {
      const isNew = !leads.has(l.id);
      const by = l.createdBy ?? API_USER_ID;
      const lead: LeadState = {
        id: l.id, name: l.name, pipelineId: l.pipelineId, statusId: l.statusId, updatedAt: l.updatedAt,
        isDeleted: l.isDeleted ?? false, createdAt: l.updatedAt, closedAt: isClosed(l.statusId) ? l.updatedAt : null,
        price: l.price ?? 0, responsibleUserId: l.responsibleUserId ?? API_USER_ID, createdBy: by, updatedBy: by,
        customFields: (l.customFields ?? []).map((f) => ({ ...f, values: f.values.map((v) => ({ ...v })) })),
      };
      leads.set(l.id, lead);
      if (isNew && !lead.isDeleted) notify({ kind: 'add', lead, before: fieldsOf(lead), at: lead.updatedAt, by: 'api', userId: by });
    },

    pipeline: (id: number) => pipelines.get(id),
    pipelines: () => [...pipelines.values()].sort((a, b) => a.sort - b.sort),
    /** A pipeline holding `statusId` (for a manager's move across pipelines). */
    ownerOf: (statusId: number) => [...pipelines.values()].find((p) => p.statuses.some((s) => s.id === statusId)),
    hasStatus,

    lead: (id: number) => leads.get(id),
    liveLead,
    /** Live leads, by id, optionally only those ids / pipelines. */
    leadsWhere(ids?: Set<number>, pipelineIds?: Set<number>) {
      return [...leads.values()]
        .filter((l) => !l.isDeleted && (!ids || ids.has(l.id)) && (!pipelineIds || pipelineIds.has(l.pipelineId)))
        .sort((a, b) => a.id - b.id);
    },

    /** amoCRM's `query`: a case-insensitive substring over the name and every e-mail, so it over-matches. */
    contactsMatching(query: string) {
      const q = query.toLowerCase();
      return [...contacts.values()]
        .filter((c) => !q || c.name.toLowerCase().includes(q) || c.emails.some((e) => e.toLowerCase().includes(q)))
        .sort((a, b) => a.id - b.id);
    },
    liveLeadIdsOf: (c: ContactState) => c.leadIds.filter((id) => !leads.get(id)?.isDeleted),

    /** Validates a change of `cur` as a PATCH item asks it; returns the errors or the resulting fields. */
    planChange(cur: LeadFields, item: Record<string, unknown>): { errors: FieldError[]; next: LeadFields } {
      const errors: FieldError[] = [];
      const next = { ...cur };
      if ('pipeline_id' in item) {
        const pid = item.pipeline_id;
        if (!isInt(pid) || !pipelines.has(pid)) errors.push({ code: 'NotSupportedChoice', path: 'pipeline_id', detail: NOT_SUPPORTED });
        else next.pipelineId = pid;
      }
      if ('status_id' in item) {
        const sid = item.status_id;
        if (!isInt(sid) || !hasStatus(next.pipelineId, sid)) errors.push({ code: 'NotSupportedChoice', path: 'status_id', detail: NOT_SUPPORTED });
        else next.statusId = sid;
      } else if (errors.length === 0 && next.pipelineId !== cur.pipelineId) {
        // Another pipeline without a stage: amoCRM puts the lead into that pipeline's first regular stage.
        const first = [...(pipelines.get(next.pipelineId)?.statuses ?? [])]
          .filter((s) => s.type !== 1 && !isClosed(s.id))
          .sort((a, b) => a.sort - b.sort)[0];
        if (first) next.statusId = first.id;
        else errors.push({ code: 'NotSupportedChoice', path: 'pipeline_id', detail: NOT_SUPPORTED });
      }
      if ('name' in item) {
        if (typeof item.name !== 'string') errors.push({ code: 'InvalidType', path: 'name', detail: 'This value should be of type string' });
        else next.name = item.name;
      }
      return { errors, next };
    },

    /**
     * The one way a lead's fields change. `at` is shared by the items of one batch PATCH;
     * `userId` defaults to the token's user for the API and to the manager otherwise.
     */
    changeLead(l: LeadState, next: LeadFields, by: LeadChange['by'], at = nowSec(), userId = by === 'api' ? API_USER_ID : MANAGER_USER_ID) {
      const before = fieldsOf(l);
      l.pipelineId = next.pipelineId;
      l.statusId = next.statusId;
      l.name = next.name;
      l.updatedAt = at;
      l.updatedBy = userId;
      if (!isClosed(next.statusId)) l.closedAt = null;
      else if (!isClosed(before.statusId) || l.closedAt === null) l.closedAt = at;
      notify({ kind: 'update', lead: l, before, at, by, userId });
    },

    /** Deletes a lead (it stays, marked, as amoCRM keeps it in the trash). */
    deleteLead(l: LeadState, by: LeadChange['by'], at = nowSec(), userId = by === 'api' ? API_USER_ID : MANAGER_USER_ID) {
      l.isDeleted = true;
      l.updatedAt = at;
      l.updatedBy = userId;
      notify({ kind: 'delete', lead: l, before: fieldsOf(l), at, by, userId });
    },

    /** Called after every lead change; returns the unsubscribe function. */
    onLeadChange(listener: (change: LeadChange) => void): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

export type StandinState = ReturnType<typeof createState>;
