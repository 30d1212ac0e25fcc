// The account's data: pipelines with their stages, contacts, leads. Every change of a lead
// (an API PATCH or a manager's move) goes through changeLead, which tells the listeners:
// the one place to hook amoCRM's outgoing webhooks (status_lead) onto.
import type { StandinContact, StandinLead, StandinPipeline } from './types.ts';

export const WON = 142;
export const LOST = 143;

export type StatusState = StandinPipeline['statuses'][number];
export interface PipelineState { id: number; name: string; statuses: StatusState[]; isMain: boolean; sort: number }
export interface ContactState { id: number; name: string; emails: string[]; leadIds: number[]; updatedAt: number; createdAt: number }
export interface LeadState { id: number; name: string; pipelineId: number; statusId: number; updatedAt: number; isDeleted: boolean; createdAt: number; closedAt: number | null }
/** The fields a change may set. */
export interface LeadFields { pipelineId: number; statusId: number; name: string }
export interface LeadChange { lead: Readonly<LeadState>; before: Readonly<LeadFields>; at: number; by: 'api' | 'manager' }
export interface FieldError { code: string; path: string; detail: string }

const NOT_SUPPORTED = "The value you've selected is not supported";
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isClosed = (statusId: number) => statusId === WON || statusId === LOST;

export function createState(nowSec: () => number) {
  const pipelines = new Map<number, PipelineState>();
  const contacts = new Map<number, ContactState>();
  const leads = new Map<number, LeadState>();
  const listeners = new Set<(change: LeadChange) => void>();

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

    addLead(l: StandinLead) {
      leads.set(l.id, {
        id: l.id, name: l.name, pipelineId: l.pipelineId, statusId: l.statusId, updatedAt: l.updatedAt,
        isDeleted: l.isDeleted ?? false, createdAt: l.updatedAt, closedAt: isClosed(l.statusId) ? l.updatedAt : null,
      });
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

    /** The one way a lead changes. `at` is shared by the items of one batch PATCH. */
    changeLead(l: LeadState, next: LeadFields, by: LeadChange['by'], at = nowSec()) {
      const before = { pipelineId: l.pipelineId, statusId: l.statusId, name: l.name };
      l.pipelineId = next.pipelineId;
      l.statusId = next.statusId;
      l.name = next.name;
      l.updatedAt = at;
      if (!isClosed(next.statusId)) l.closedAt = null;
      else if (!isClosed(before.statusId) || l.closedAt === null) l.closedAt = at;
      for (const listener of listeners) listener({ lead: l, before, at, by });
    },

    /** Called after every lead change; returns the unsubscribe function. */
    onLeadChange(listener: (change: LeadChange) => void): () => void {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
  };
}

export type StandinState = ReturnType<typeof createState>;
