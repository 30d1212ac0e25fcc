// amoCRM resources the sync uses, described over the request sender.
import { chunks } from '../chunks.ts';
import { permanent, retryable } from './errors.ts';
import type { AmoHttp } from './http.ts';

export const WON_STATUS_ID = 142;
export const LOST_STATUS_ID = 143;

export interface Contact {
  id: number;
  name?: string;
  emails: string[];
  leadIds: number[];
}

export interface Lead {
  id: number;
  name?: string;
  pipeline_id: number;
  status_id: number;
  updated_at: number;
  is_deleted?: boolean;
}

/** One entry of the events feed (GET /api/v4/events), as the sync reads it. */
export interface AmoEvent {
  id: string | number;
  type: string;
  entity_id: number;
  entity_type: string;
  created_by?: number;
  created_at: number;
  value_before?: { lead_status?: { id: number; pipeline_id: number } }[];
  value_after?: { lead_status?: { id: number; pipeline_id: number } }[];
}

export interface AmoWebhook {
  id?: number;
  destination: string;
  settings: string[];
  disabled: boolean;
}

export interface PipelineStatus {
  id: number;
  name: string;
  sort: number;
}

export interface Pipeline {
  id: number;
  name: string;
  statuses: PipelineStatus[];
}

/** amoCRM returns at most 250 entities per list call. */
export const PAGE_LIMIT = 250;
/** A contact search stops after this many pages (1,000 contacts): the result then says it is incomplete. */
export const MAX_CONTACT_PAGES = 4;
export const MAX_BATCH_MOVES = 50;

export interface ContactSearch {
  contacts: Contact[];
  /** false when the search hit MAX_CONTACT_PAGES with more pages left. */
  complete: boolean;
}

function toContact(raw: any): Contact {
  const fields: any[] = Array.isArray(raw?.custom_fields_values) ? raw.custom_fields_values : [];
  const emails = fields
    .filter((f) => f?.field_code === 'EMAIL')
    .flatMap((f) => (Array.isArray(f.values) ? f.values : []))
    .map((v: any) => String(v?.value ?? ''))
    .filter(Boolean);
  const leads: any[] = Array.isArray(raw?._embedded?.leads) ? raw._embedded.leads : [];
  return { id: Number(raw.id), name: raw.name, emails, leadIds: leads.map((l) => Number(l.id)).filter(Number.isFinite) };
}

function toPipeline(raw: any): Pipeline {
  const statuses: any[] = raw?._embedded?.statuses ?? [];
  return {
    id: Number(raw.id),
    name: String(raw.name),
    statuses: statuses.map((s) => ({ id: Number(s.id), name: String(s.name), sort: Number(s.sort) })),
  };
}

// Each resource names its method, path and the statuses that are answers for it, and says
// what those answers mean (204 → nothing found, 404 → no such deal, a refused stage); what
// any other status means is decided once, in the request sender (http.ts), which is also
// the only thing that sends.
export function amoResources(http: AmoHttp) {
  return { ...reads(http), ...moves(http), ...catalogue(http), ...account(http) };
}

export type AmoResources = ReturnType<typeof amoResources>;

function reads(http: AmoHttp) {
  return {
    /** Contacts whose any field contains `query` (amoCRM's search over-matches: the caller filters). */
    async searchContacts(query: string, signal?: AbortSignal): Promise<ContactSearch> {
      const contacts: Contact[] = [];
      for (let page = 1; ; page++) {
        const res = await http.request({
          method: 'GET', path: '/api/v4/contacts',
          query: [['query', query], ['with', 'leads'], ['limit', PAGE_LIMIT], ['page', page]],
          signal,
        });
        if (!res.data) return { contacts, complete: true }; // 204: nothing (more) found
        contacts.push(...(res.data._embedded?.contacts ?? []).map(toContact));
        if (!res.data._links?.next) return { contacts, complete: true };
        if (page === MAX_CONTACT_PAGES) return { contacts, complete: false };
      }
    },

    /** The deals with these ids (any number: read 250 per request, following pages). */
    async getLeads(ids: number[]): Promise<Lead[]> {
      const leads: Lead[] = [];
      for (const part of chunks([...new Set(ids)], PAGE_LIMIT)) {
        for (let page = 1; ; page++) {
          const res = await http.request({
            method: 'GET', path: '/api/v4/leads',
            query: [...part.map((id) => ['filter[id][]', id] as [string, number]), ['limit', PAGE_LIMIT], ['page', page]],
          });
          if (!res.data) break; // 204: none of them exists
          leads.push(...((res.data._embedded?.leads ?? []) as Lead[]));
          if (!res.data._links?.next) break;
        }
      }
      return leads;
    },

    /** One deal, or null when it does not exist (any more). */
    async getLead(id: number): Promise<Lead | null> {
      const res = await http.request<Lead>({ method: 'GET', path: `/api/v4/leads/${id}`, answers: [404] });
      if (!res.data || res.status === 404) return null;
      return res.data.is_deleted ? null : res.data;
    },
  };
}

function moves(http: AmoHttp) {
  return {

    /** `signal`: the move must not leave once it is aborted (its claim would not cover it). */
    async moveLead(id: number, pipelineId: number, statusId: number, signal?: AbortSignal): Promise<void> {
      const res = await http.request({
        method: 'PATCH', path: `/api/v4/leads/${id}`,
        body: { pipeline_id: pipelineId, status_id: statusId },
        answers: [400, 404, 422],
        signal,
      });
      if (res.status === 404) throw permanent('lead_not_found', `сделка ${id} не найдена в amoCRM`, { status: 404 });
      if (res.status === 400 || res.status === 422) {
        throw permanent('stage_rejected', `amoCRM отклонил этап ${statusId} воронки ${pipelineId} для сделки ${id}`, { status: res.status });
      }
    },

    /**
     * Moves up to 50 deals in one PATCH (amoCRM's recommended batch size). 'rejected'
     * means amoCRM refused the batch (a validation error on some item, nothing applied):
     * the caller moves those deals one by one to find out which.
     */
    async moveLeads(moves: { id: number; statusId: number; pipelineId?: number }[], pipelineId: number, signal?: AbortSignal): Promise<'ok' | 'rejected'> {
      if (moves.length > MAX_BATCH_MOVES) throw new RangeError(`at most ${MAX_BATCH_MOVES} moves per batch`);
      const res = await http.request({
        method: 'PATCH', path: '/api/v4/leads',
        body: moves.map((m) => ({ id: m.id, pipeline_id: m.pipelineId ?? pipelineId, status_id: m.statusId, request_id: String(m.id) })),
        answers: [400, 404, 422],
        signal,
      });
      return res.status >= 200 && res.status < 300 ? 'ok' : 'rejected';
    },
  };
}

function catalogue(http: AmoHttp) {
  return {

    /** The pipeline with its stages, or null when there is no such pipeline. */
    async getPipeline(id: number): Promise<Pipeline | null> {
      const res = await http.request({ method: 'GET', path: `/api/v4/leads/pipelines/${id}`, answers: [404] });
      return res.data && res.status !== 404 ? toPipeline(res.data) : null;
    },

    async listPipelines(): Promise<Pipeline[]> {
      const res = await http.request({ method: 'GET', path: '/api/v4/leads/pipelines' });
      return (res.data?._embedded?.pipelines ?? []).map(toPipeline);
    },

    /** One page of the events feed since `from` (unix seconds); 204 means nothing (more). */
    async listEvents(q: { type: string; from: number; to: number; page: number; limit?: number }): Promise<{ events: AmoEvent[]; more: boolean }> {
      // A closed window: the feed pages newest first, so new events would shift the pages.
      const res = await http.request({
        method: 'GET', path: '/api/v4/events',
        query: [['filter[type]', q.type], ['filter[created_at][from]', q.from], ['filter[created_at][to]', q.to], ['limit', q.limit ?? 100], ['page', q.page]],
      });
      if (!res.data) return { events: [], more: false };
      return { events: (res.data._embedded?.events ?? []) as AmoEvent[], more: Boolean(res.data._links?.next) };
    },
  };
}

function account(http: AmoHttp) {
  return {

    /** The account's webhooks (managing them needs an admin's token). */
    async listWebhooks(): Promise<AmoWebhook[]> {
      const res = await http.request({ method: 'GET', path: '/api/v4/webhooks' });
      const hooks: any[] = res.data?._embedded?.webhooks ?? [];
      return hooks.map((h) => ({ id: h.id, destination: String(h.destination), settings: Array.isArray(h.settings) ? h.settings.map(String) : [], disabled: Boolean(h.disabled) }));
    },

    async subscribeWebhook(destination: string, settings: string[]): Promise<void> {
      await http.request({ method: 'POST', path: '/api/v4/webhooks', body: { destination, settings } });
    },

    /** Removes the hook for `destination`; false when there was none. */
    async unsubscribeWebhook(destination: string): Promise<boolean> {
      const res = await http.request({ method: 'DELETE', path: '/api/v4/webhooks', body: { destination }, answers: [404] });
      return res.status !== 404;
    },

    async getAccount(): Promise<{ id: number; name: string; subdomain: string }> {
      const res = await http.request({ method: 'GET', path: '/api/v4/account' });
      if (!res.data) throw retryable('account_failed', 'amoCRM: пустой ответ на GET /api/v4/account');
      return res.data;
    },

    /**
     * The account as `token` sees it: a token being checked before it is stored, sent as
     * is (no refresh). null when amoCRM refuses the token (401).
     */
    async getAccountWith(token: string): Promise<{ id: number; name: string; subdomain: string } | null> {
      const res = await http.request({ method: 'GET', path: '/api/v4/account', bearer: token, answers: [401] });
      if (res.status === 401) return null;
      if (!res.data) throw retryable('account_failed', 'amoCRM: пустой ответ на GET /api/v4/account', { status: res.status });
      return res.data;
    },
  };
}
