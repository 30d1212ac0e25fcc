// What amoCRM's answers look like: problem+json errors, and HAL entities with _links and
// _embedded. Lists page as amoCRM does: `limit` (default 50, at most 250; above → 422) and
// `page` from 1; `_links.next` while more remain; an empty page is a 204 with no body.
import http from 'node:http';
import type { Answer, Ctx, Reply } from './types.ts';
import { LOST, WON, type ContactState, type LeadState, type PipelineState, type StandinState, type StatusState } from './state.ts';

export const ACCOUNT = { id: 31234567, name: 'Stand-in School', subdomain: 'standin', current_user_id: 123, country: 'RU', currency: 'RUB' };
export const DEFAULT_LIMIT = 50;
export const MAX_LIMIT = 250;

export interface ValidationItem { request_id: string; errors: { code: string; path: string; detail: string }[] }

export function problem(status: number, detail?: string, extra: Record<string, unknown> = {}): Answer {
  const title = http.STATUS_CODES[status] ?? 'Error';
  return { status, body: { title, type: `https://httpstatus.es/${status}`, status, detail: detail ?? title, ...extra } };
}

export const validationProblem = (items: ValidationItem[]): Answer => problem(400, 'Request validation failed', { 'validation-errors': items });
export const emptyBody = (): Answer => problem(400, 'Request data can not be empty');

function parsePaging(search: URLSearchParams, maxLimit: number): { limit: number; page: number } | Answer {
  const rawLimit = search.get('limit');
  const rawPage = search.get('page');
  let limit = DEFAULT_LIMIT;
  let page = 1;
  if (rawLimit !== null) {
    limit = Number(rawLimit);
    if (!Number.isSafeInteger(limit) || limit < 1) return problem(400, 'Request validation failed: limit');
    if (limit > maxLimit) return problem(422, `Limit must not be greater than ${maxLimit}`);
  }
  if (rawPage !== null) {
    page = Number(rawPage);
    if (!Number.isSafeInteger(page) || page < 1) return problem(400, 'Request validation failed: page');
  }
  return { limit, page };
}

export function createHal(baseUrl: () => string, state: StandinState) {
  const links = (path: string) => ({ self: { href: `${baseUrl()}${path}` } });
  const withQuery = (ctx: Ctx, search: URLSearchParams) => `${baseUrl()}${ctx.path}${search.size ? `?${search}` : ''}`;

  function status(pipelineId: number, s: StatusState) {
    const system = s.id === WON || s.id === LOST || s.type === 1;
    return {
      id: s.id, name: s.name, sort: s.sort, is_editable: !system, pipeline_id: pipelineId,
      color: s.id === WON ? '#CCFF66' : s.id === LOST ? '#D5D8DB' : '#99ccff',
      type: s.type ?? 0, account_id: ACCOUNT.id,
      _links: links(`/api/v4/leads/pipelines/${pipelineId}/statuses/${s.id}`),
    };
  }

  return {
    links,

    pipeline(p: PipelineState) {
      return {
        id: p.id, name: p.name, sort: p.sort, is_main: p.isMain,
        is_unsorted_on: p.statuses.some((s) => s.type === 1), is_archive: false, account_id: ACCOUNT.id,
        _links: links(`/api/v4/leads/pipelines/${p.id}`),
        _embedded: { statuses: [...p.statuses].sort((a, b) => a.sort - b.sort).map((s) => status(p.id, s)) },
      };
    },

    lead(l: LeadState) {
      return {
        id: l.id, name: l.name, price: l.price, responsible_user_id: l.responsibleUserId, group_id: 0,
        status_id: l.statusId, pipeline_id: l.pipelineId, loss_reason_id: null,
        created_by: l.createdBy, updated_by: l.updatedBy,
        created_at: l.createdAt, updated_at: l.updatedAt, closed_at: l.closedAt, closest_task_at: null,
        is_deleted: false,
        custom_fields_values: l.customFields.length === 0 ? null : l.customFields.map((f) => ({
          field_id: f.id, field_name: f.name, field_code: null, field_type: 'text',
          values: f.values.map((v) => (v.enum === undefined ? { value: v.value } : { value: v.value, enum_id: v.enum })),
        })),
        score: null, account_id: ACCOUNT.id, labor_cost: null,
        _links: links(`/api/v4/leads/${l.id}`),
        _embedded: { tags: [], companies: [] },
      };
    },

    /** `withLeads`: `_embedded.leads` holds {id, _links} of the contact's leads that are not deleted. */
    contact(c: ContactState, withLeads: boolean) {
      const embedded: Record<string, unknown> = { tags: [], companies: [] };
      if (withLeads) embedded.leads = state.liveLeadIdsOf(c).map((id) => ({ id, _links: links(`/api/v4/leads/${id}`) }));
      return {
        id: c.id, name: c.name, first_name: '', last_name: '', responsible_user_id: ACCOUNT.current_user_id, group_id: 0,
        created_by: ACCOUNT.current_user_id, updated_by: ACCOUNT.current_user_id,
        created_at: c.createdAt, updated_at: c.updatedAt, closest_task_at: null, is_deleted: false,
        custom_fields_values: c.emails.length === 0 ? null : [{
          field_id: 1, field_name: 'Email', field_code: 'EMAIL', field_type: 'multitext',
          values: c.emails.map((value) => ({ value, enum_id: 1, enum_code: 'WORK' })),
        }],
        account_id: ACCOUNT.id,
        _links: links(`/api/v4/contacts/${c.id}`),
        _embedded: embedded,
      };
    },

    /** One page of `items` under `_embedded[key]`, as the request's limit/page ask (limit at most `maxLimit`). */
    page<T>(ctx: Ctx, items: T[], key: string, render: (item: T) => unknown, maxLimit = MAX_LIMIT): Reply {
      const paging = parsePaging(ctx.search, maxLimit);
      if ('status' in paging) return paging;
      const start = (paging.page - 1) * paging.limit;
      const slice = items.slice(start, start + paging.limit);
      if (slice.length === 0) return { status: 204 };
      const pageLinks: Record<string, { href: string }> = { self: { href: withQuery(ctx, new URLSearchParams(ctx.search)) } };
      if (start + paging.limit < items.length) {
        const next = new URLSearchParams(ctx.search);
        next.set('page', String(paging.page + 1));
        next.set('limit', String(paging.limit));
        pageLinks.next = { href: withQuery(ctx, next) };
      }
      if (paging.page > 1) {
        const prev = new URLSearchParams(ctx.search);
        prev.set('page', String(paging.page - 1));
        pageLinks.prev = { href: withQuery(ctx, prev) };
      }
      return { status: 200, body: { _page: paging.page, _links: pageLinks, _embedded: { [key]: slice.map(render) } } };
    },
  };
}

export type Hal = ReturnType<typeof createHal>;
