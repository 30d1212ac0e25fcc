// amoCRM's events feed (GET /api/v4/events) for what the sync needs from it: every stage or
// pipeline change of a lead as lead_status_changed, with value_before / value_after
// [{lead_status: {id, pipeline_id}}], and deletions as lead_deleted (value_before/after empty:
// what amoCRM puts there is not documented). Ids are ULID-like strings as amoCRM's are.
// Newest first, at most 100 per page (amoCRM's limit for events), 204 when nothing matches.
// Filters: type, entity, entity_id (≤ 10), id, created_by, created_at (a timestamp = from,
// "from,to", or [from]/[to]; both ends inclusive), value_after / value_before [leads_statuses].
import { randomBytes } from 'node:crypto';
import qs from 'qs';

import { ACCOUNT, validationProblem, type Hal } from './hal.ts';
import type { LeadChange } from './state.ts';
import type { Ctx, Reply, StandinEvent } from './types.ts';

export const EVENTS_MAX_LIMIT = 100;
const MAX_ENTITY_IDS = 10;
const CROCKFORD = '0123456789abcdefghjkmnpqrstvwxyz';

/** 10 characters of milliseconds and 16 random ones, lowercase Crockford base32 (amoCRM's event ids look like this). */
function ulid(ms: number): string {
  let time = '';
  let t = Math.max(0, Math.floor(ms));
  for (let i = 0; i < 10; i++) {
    time = CROCKFORD[t % 32] + time;
    t = Math.floor(t / 32);
  }
  const rnd = randomBytes(16);
  let rest = '';
  for (const b of rnd) rest += CROCKFORD[b % 32];
  return time + rest;
}

class FilterError extends Error {
  constructor(readonly path: string, detail: string) {
    super(detail);
  }
}

/** A filter value as a list: "a,b", [a, b] or {0: a, 1: b}. */
function list(v: unknown, path: string): string[] {
  if (typeof v === 'string') return v.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (Array.isArray(v) || (typeof v === 'object' && v !== null)) {
    return Object.values(v as Record<string, unknown>).flatMap((x) => {
      if (typeof x !== 'string') throw new FilterError(path, 'This value should be a string or a list of strings');
      return list(x, path);
    });
  }
  throw new FilterError(path, 'This value should be a string or a list of strings');
}

function ints(v: unknown, path: string): number[] {
  return list(v, path).map((s) => {
    if (!/^\d{1,15}$/.test(s)) throw new FilterError(path, 'This value should be a positive integer');
    return Number(s);
  });
}

function timestamp(v: unknown, path: string): number {
  if (typeof v !== 'string' || !/^\d{1,12}$/.test(v.trim())) throw new FilterError(path, 'This value should be a Unix timestamp');
  return Number(v.trim());
}

interface StatusPair { pipelineId?: number; statusId?: number }

function statusPairs(v: unknown, path: string): StatusPair[] | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || v === null) throw new FilterError(path, 'This value should be a list of {pipeline_id, status_id}');
  const raw = (v as Record<string, unknown>).leads_statuses;
  if (raw === undefined) return undefined;
  if (typeof raw !== 'object' || raw === null) throw new FilterError(`${path}.leads_statuses`, 'This value should be a list of {pipeline_id, status_id}');
  return Object.entries(raw as Record<string, unknown>).map(([i, item]) => {
    if (typeof item !== 'object' || item === null) throw new FilterError(`${path}.leads_statuses.${i}`, 'This value should be {pipeline_id, status_id}');
    const o = item as Record<string, unknown>;
    const one = (k: 'pipeline_id' | 'status_id') => (o[k] === undefined ? undefined : ints(o[k], `${path}.leads_statuses.${i}.${k}`)[0]);
    return { pipelineId: one('pipeline_id'), statusId: one('status_id') };
  });
}

function parseFilter(search: URLSearchParams) {
  const parsed = qs.parse(search.toString(), { depth: 6, arrayLimit: 100, parameterLimit: 200 }) as Record<string, unknown>;
  const f = parsed.filter;
  if (f === undefined) return {};
  if (typeof f !== 'object' || f === null || Array.isArray(f)) throw new FilterError('filter', 'filter must be an object');
  const o = f as Record<string, unknown>;
  const out: {
    types?: Set<string>; entities?: Set<string>; entityIds?: Set<number>; ids?: Set<string>; createdBy?: Set<number>;
    from?: number; to?: number; after?: StatusPair[]; before?: StatusPair[];
  } = {};
  if (o.type !== undefined) out.types = new Set(list(o.type, 'filter.type'));
  if (o.entity !== undefined) out.entities = new Set(list(o.entity, 'filter.entity'));
  if (o.entity_id !== undefined) {
    const ids = ints(o.entity_id, 'filter.entity_id');
    if (ids.length > MAX_ENTITY_IDS) throw new FilterError('filter.entity_id', `At most ${MAX_ENTITY_IDS} ids`);
    out.entityIds = new Set(ids);
  }
  if (o.id !== undefined) out.ids = new Set(list(o.id, 'filter.id'));
  if (o.created_by !== undefined) out.createdBy = new Set(ints(o.created_by, 'filter.created_by'));
  const c = o.created_at;
  if (typeof c === 'string') {
    const [from, to, ...more] = c.split(',');
    if (more.length) throw new FilterError('filter.created_at', 'At most two timestamps');
    out.from = timestamp(from, 'filter.created_at');
    if (to !== undefined) out.to = timestamp(to, 'filter.created_at');
  } else if (typeof c === 'object' && c !== null && !Array.isArray(c)) {
    const r = c as Record<string, unknown>;
    if (r.from !== undefined) out.from = timestamp(r.from, 'filter.created_at.from');
    if (r.to !== undefined) out.to = timestamp(r.to, 'filter.created_at.to');
  } else if (c !== undefined) throw new FilterError('filter.created_at', 'This value should be a Unix timestamp or {from, to}');
  out.after = statusPairs(o.value_after, 'filter.value_after');
  out.before = statusPairs(o.value_before, 'filter.value_before');
  return out;
}

const matchesPairs = (pairs: StatusPair[] | undefined, values: StandinEvent['value_after']) =>
  !pairs || values.some(({ lead_status: s }) => pairs.some((p) => (p.pipelineId === undefined || p.pipelineId === s.pipeline_id) && (p.statusId === undefined || p.statusId === s.id)));

export function createEvents(now: () => number, hal: Hal) {
  const events: (StandinEvent & { seq: number })[] = [];
  let seq = 0;

  const push = (e: StandinEvent) => events.push({ ...e, seq: seq++ });

  function render(e: StandinEvent) {
    return {
      id: e.id, type: e.type, entity_id: e.entity_id, entity_type: e.entity_type, created_by: e.created_by, created_at: e.created_at,
      value_after: e.value_after, value_before: e.value_before, account_id: e.account_id,
      _links: hal.links(`/api/v4/events/${e.id}`),
      _embedded: { entity: { id: e.entity_id, _links: hal.links(`/api/v4/leads/${e.entity_id}`) } },
    };
  }

  return {
    /** Listener for state.onLeadChange: a stage/pipeline change or a deletion becomes an event. */
    onLeadChange(change: LeadChange) {
      const l = change.lead;
      const base = { id: ulid(now()), entity_id: l.id, entity_type: 'lead' as const, created_by: change.userId, created_at: change.at, account_id: ACCOUNT.id };
      if (change.kind === 'delete') {
        push({ ...base, type: 'lead_deleted', value_before: [], value_after: [] });
      } else if (change.kind === 'update' && (change.before.statusId !== l.statusId || change.before.pipelineId !== l.pipelineId)) {
        push({
          ...base, type: 'lead_status_changed',
          value_before: [{ lead_status: { id: change.before.statusId, pipeline_id: change.before.pipelineId } }],
          value_after: [{ lead_status: { id: l.statusId, pipeline_id: l.pipelineId } }],
        });
      }
    },

    /** Oldest first, copies without the internal sequence. */
    list(): StandinEvent[] {
      return events.map(({ seq: _seq, ...e }) => structuredClone(e));
    },

    /** GET /api/v4/events */
    route(ctx: Ctx): Reply {
      let f: ReturnType<typeof parseFilter>;
      try {
        f = parseFilter(ctx.search);
      } catch (err) {
        if (!(err instanceof FilterError)) throw err;
        return validationProblem([{ request_id: '0', errors: [{ code: 'InvalidValue', path: err.path, detail: err.message }] }]);
      }
      const matching = events
        .filter((e) =>
          (!f.types || f.types.has(e.type)) &&
          (!f.entities || f.entities.has('lead') || f.entities.has('leads')) &&
          (!f.entityIds || f.entityIds.has(e.entity_id)) &&
          (!f.ids || f.ids.has(e.id)) &&
          (!f.createdBy || f.createdBy.has(e.created_by)) &&
          (f.from === undefined || e.created_at >= f.from) &&
          (f.to === undefined || e.created_at <= f.to) &&
          matchesPairs(f.after, e.value_after) &&
          matchesPairs(f.before, e.value_before))
        .sort((a, b) => b.created_at - a.created_at || b.seq - a.seq);
      return hal.page(ctx, matching, 'events', render, EVENTS_MAX_LIMIT);
    },
  };
}

export type StandinEvents = ReturnType<typeof createEvents>;
