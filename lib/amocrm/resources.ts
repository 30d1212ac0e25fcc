// amoCRM resources the sync uses, described over the request sender.
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

const MAX_CONTACT_PAGES = 4;
export const MAX_BATCH_MOVES = 50;
export const MAX_BATCH_READS = 250;

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

export function amoResources(http: AmoHttp) {
  return {
    /** Contacts whose any field contains `query` (amoCRM's search over-matches: filter the result). */
    async searchContacts(query: string): Promise<Contact[]> {
      const contacts: Contact[] = [];
      for (let page = 1; page <= MAX_CONTACT_PAGES; page++) {
        const res = await http.request({
          method: 'GET',
          path: '/api/v4/contacts',
          query: [['query', query], ['with', 'leads'], ['limit', 50], ['page', page]],
        });
        if (res.status === 204 || !res.data) break; // nothing (more) found
        if (res.status !== 200) throw retryable('contacts_search_failed', `поиск контактов: HTTP ${res.status}`);
        contacts.push(...(res.data._embedded?.contacts ?? []).map(toContact));
        if (!res.data._links?.next) break;
      }
      return contacts;
    },

    async getLeads(ids: number[]): Promise<Lead[]> {
      if (ids.length === 0) return [];
      const res = await http.request({
        method: 'GET',
        path: '/api/v4/leads',
        query: ids.slice(0, MAX_BATCH_READS).map((id) => ['filter[id][]', id] as [string, number]),
      });
      if (res.status === 204 || !res.data) return [];
      if (res.status !== 200) throw retryable('leads_read_failed', `чтение сделок: HTTP ${res.status}`);
      return (res.data._embedded?.leads ?? []) as Lead[];
    },

    /** One deal, or null when it no longer exists. */
    async getLead(id: number): Promise<Lead | null> {
      const res = await http.request<Lead>({ method: 'GET', path: `/api/v4/leads/${id}` });
      if (res.status === 204 || res.status === 404 || !res.data) return null;
      if (res.status !== 200) throw retryable('lead_read_failed', `чтение сделки ${id}: HTTP ${res.status}`);
      return res.data.is_deleted ? null : res.data;
    },

    async moveLead(id: number, pipelineId: number, statusId: number): Promise<void> {
      const res = await http.request({
        method: 'PATCH',
        path: `/api/v4/leads/${id}`,
        body: { pipeline_id: pipelineId, status_id: statusId },
      });
      if (res.status === 200) return;
      if (res.status === 400 || res.status === 422) {
        throw permanent('stage_rejected', `amoCRM отклонил этап ${statusId} воронки ${pipelineId} для сделки ${id}`, { status: res.status });
      }
      if (res.status === 404) throw permanent('lead_not_found', `сделка ${id} не найдена в amoCRM`, { status: 404 });
      throw retryable('move_failed', `перемещение сделки ${id}: HTTP ${res.status}`);
    },

    /**
     * Moves up to 50 deals in one PATCH (amoCRM's recommended batch size). 'rejected'
     * means amoCRM refused the batch (a validation error on some item, nothing applied):
     * the caller moves those deals one by one to find out which.
     */
    async moveLeads(moves: { id: number; statusId: number }[], pipelineId: number): Promise<'ok' | 'rejected'> {
      if (moves.length > MAX_BATCH_MOVES) throw new Error(`at most ${MAX_BATCH_MOVES} moves per batch`);
      const res = await http.request({
        method: 'PATCH',
        path: '/api/v4/leads',
        body: moves.map((m) => ({ id: m.id, pipeline_id: pipelineId, status_id: m.statusId, request_id: String(m.id) })),
      });
      if (res.status === 200) return 'ok';
      if (res.status === 400 || res.status === 422 || res.status === 404) return 'rejected';
      throw retryable('move_failed', `пакетное перемещение ${moves.length} сделок: HTTP ${res.status}`);
    },

    async getPipeline(id: number): Promise<Pipeline | null> {
      const res = await http.request({ method: 'GET', path: `/api/v4/leads/pipelines/${id}` });
      if (res.status !== 200 || !res.data) return null;
      return toPipeline(res.data);
    },

    async listPipelines(): Promise<Pipeline[]> {
      const res = await http.request({ method: 'GET', path: '/api/v4/leads/pipelines' });
      if (res.status !== 200 || !res.data) return [];
      return (res.data._embedded?.pipelines ?? []).map(toPipeline);
    },

    async getAccount(): Promise<{ id: number; name: string; subdomain: string }> {
      const res = await http.request({ method: 'GET', path: '/api/v4/account' });
      if (res.status !== 200 || !res.data) throw retryable('account_failed', `аккаунт: HTTP ${res.status}`);
      return res.data;
    },
  };
}

export type AmoResources = ReturnType<typeof amoResources>;
