// amoCRM's notes and tasks on deals, described over the request sender (http.ts) like the
// other resources: adding them in batches, and the reads that tell whether one is already
// there. amoCRM takes both as JSON arrays and answers with the new entities; it keeps no
// request_id (only echoes it), so adding is not idempotent: exactly once is the caller's job.
// Kommo's reference documents the batch form and the lists by entity; a batch size is not
// documented for notes or tasks, so they go 50 per request, as amoCRM recommends for adds.
import { chunks } from '../chunks.ts';
import { AmoError, retryable } from './errors.ts';
import type { AmoHttp } from './http.ts';
import { amoResources, PAGE_LIMIT } from './resources.ts';

export const MAX_NOTES_PER_REQUEST = 50;
/** Deals named in one list request (filter[entity_id][]): keeps the URL short. */
const LEADS_PER_READ = 50;
/** amoCRM's standard task type "follow-up" (a call). */
export const FOLLOW_UP_TASK = 1;

export interface NewNote { requestId: string; leadId: number; text: string }
export interface NewTask { requestId: string; leadId: number; text: string; completeTill: number; responsibleUserId?: number }

/** One item's fate: created (amoCRM's id), rejected by amoCRM's validation, or its request failed. */
export type AddResult =
  | { requestId: string; status: 'created'; id: number }
  | { requestId: string; status: 'rejected'; detail: string }
  | { requestId: string; status: 'failed'; error: AmoError };

export interface FoundNote { id: number; leadId: number; text: string }
export interface FoundTask { id: number; leadId: number; text: string; completeTill: number }

const notSent = () => retryable('cancelled', 'запрос к amoCRM не отправлен: предыдущий пакет не прошёл');

export function amoNotes(http: AmoHttp) {
  /**
   * POSTs `items` in batches; every item gets a result. After a batch fails (429, 5xx, no
   * answer), the later ones are not sent: they fail with `cancelled`. A batch amoCRM refuses
   * (400) adds nothing: the items it names are rejected, the others failed with `refused_batch`.
   */
  async function addAll<T extends { requestId: string }>(path: string, items: T[], body: (item: T) => unknown, key: string, signal?: AbortSignal): Promise<AddResult[]> {
    const results: AddResult[] = [];
    let stop: AmoError | undefined;
    for (const part of chunks(items, MAX_NOTES_PER_REQUEST)) {
      if (stop) {
        results.push(...part.map((i) => ({ requestId: i.requestId, status: 'failed' as const, error: notSent() })));
        continue;
      }
      try {
        const res = await http.request({ method: 'POST', path, body: part.map(body), answers: [400], signal });
        results.push(...(res.status === 400 ? refused(part, res.data) : created(part, res.data, key)));
      } catch (err) {
        const error = err instanceof AmoError ? err : retryable('internal', String(err));
        stop = error;
        results.push(...part.map((i) => ({ requestId: i.requestId, status: 'failed' as const, error })));
      }
    }
    return results;
  }

  return {
    addNotes: (items: NewNote[], signal?: AbortSignal) => addAll('/api/v4/leads/notes', items,
      (n) => ({ entity_id: n.leadId, note_type: 'common', params: { text: n.text }, request_id: n.requestId }), 'notes', signal),

    addTasks: (items: NewTask[], signal?: AbortSignal) => addAll('/api/v4/tasks', items, (t) => ({
      task_type_id: FOLLOW_UP_TASK, text: t.text, complete_till: t.completeTill, entity_id: t.leadId, entity_type: 'leads',
      ...(t.responsibleUserId !== undefined ? { responsible_user_id: t.responsibleUserId } : {}), request_id: t.requestId,
    }), 'tasks', signal),

    /** The plain-text notes of these deals. */
    async leadNotes(leadIds: number[]): Promise<FoundNote[]> {
      const rows = await listAll(http, '/api/v4/leads/notes', leadIds, [['filter[note_type]', 'common']], 'notes');
      return rows.map((n) => ({ id: Number(n.id), leadId: Number(n.entity_id), text: String(n.params?.text ?? '') }));
    },

    /** The tasks of these deals. */
    async leadTasks(leadIds: number[]): Promise<FoundTask[]> {
      const rows = await listAll(http, '/api/v4/tasks', leadIds, [['filter[entity_type]', 'leads']], 'tasks');
      return rows.map((t) => ({ id: Number(t.id), leadId: Number(t.entity_id), text: String(t.text ?? ''), completeTill: Number(t.complete_till) }));
    },

    /** Each deal's responsible manager (a deal amoCRM no longer has is missing from the map). */
    async leadOwners(leadIds: number[]): Promise<Map<number, number>> {
      const leads = await amoResources(http).getLeads(leadIds) as { id: number; responsible_user_id?: number }[];
      return new Map(leads.filter((l) => Number.isSafeInteger(l.responsible_user_id)).map((l) => [Number(l.id), l.responsible_user_id!]));
    },
  };
}

export type AmoNotes = ReturnType<typeof amoNotes>;

/** Every page of a list filtered by these deals (50 deals per request). */
async function listAll(http: AmoHttp, path: string, leadIds: number[], filters: [string, string][], key: string): Promise<any[]> {
  const rows: any[] = [];
  for (const part of chunks([...new Set(leadIds)], LEADS_PER_READ)) {
    for (let page = 1; ; page++) {
      const res = await http.request({
        method: 'GET', path,
        query: [...filters, ...part.map((id) => ['filter[entity_id][]', id] as [string, number]), ['limit', PAGE_LIMIT], ['page', page]],
      });
      if (!res.data) break; // 204: none (more)
      rows.push(...(res.data._embedded?.[key] ?? []));
      if (!res.data._links?.next) break;
    }
  }
  return rows;
}

/** A 2xx answer: each item by its echoed request_id. An item the answer does not name may still have been added. */
function created(part: { requestId: string }[], data: any, key: string): AddResult[] {
  const byRequest = new Map<string, number>();
  for (const e of data?._embedded?.[key] ?? []) if (e?.request_id !== undefined) byRequest.set(String(e.request_id), Number(e.id));
  return part.map((i) => {
    const id = byRequest.get(i.requestId);
    return id !== undefined && Number.isSafeInteger(id)
      ? { requestId: i.requestId, status: 'created' as const, id }
      : { requestId: i.requestId, status: 'failed' as const, error: retryable('unanswered_item', 'amoCRM не назвал элемент в ответе: возможно, он добавлен') };
  });
}

/** A 400: amoCRM added nothing; the items its validation-errors name are rejected. */
function refused(part: { requestId: string }[], data: any): AddResult[] {
  const named = new Map<string, string>();
  for (const v of Array.isArray(data?.['validation-errors']) ? data['validation-errors'] : []) {
    const detail = (v?.errors ?? []).map((e: any) => `${e?.path ?? ''}: ${e?.detail ?? e?.code ?? ''}`).join('; ');
    named.set(String(v?.request_id), detail || 'отклонено amoCRM');
  }
  return part.map((i, index) => {
    const detail = named.get(i.requestId) ?? named.get(String(index));
    return detail !== undefined
      ? { requestId: i.requestId, status: 'rejected' as const, detail }
      : { requestId: i.requestId, status: 'failed' as const, error: retryable('refused_batch', `amoCRM отклонил пакет из-за другого элемента: ${String(data?.detail ?? '400')}`) };
  });
}
