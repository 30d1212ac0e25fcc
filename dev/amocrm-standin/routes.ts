// The REST endpoints the sync, its CLI and the doctor call — and only those:
//   GET   /api/v4/account
//   GET   /api/v4/contacts?query=…&with=leads&limit&page
//   GET   /api/v4/leads?filter[id][]=…&limit&page,  GET /api/v4/leads/:id
//   PATCH /api/v4/leads/:id,  PATCH /api/v4/leads (batch)
//   GET   /api/v4/leads/pipelines,  GET /api/v4/leads/pipelines/:id
//   GET   /api/v4/webhooks?filter[destination]=…,  POST /api/v4/webhooks,  DELETE /api/v4/webhooks (admin only)
//   GET   /api/v4/events?filter[…]&limit&page (events.ts)
//   POST/GET /api/v4/leads/notes, /api/v4/leads/:id/notes, /api/v4/tasks (notes.ts)
// (POST /oauth2/access_token lives in oauth.ts.) Anything else is a 404.
import type { StandinEvents } from './events.ts';
import { createHal, emptyBody, MAX_LIMIT, problem, validationProblem, ACCOUNT, type ValidationItem } from './hal.ts';
import { HookInputError, type StandinHooks } from './hooks.ts';
import type { StandinNotes } from './notes.ts';
import type { LeadFields, LeadState, StandinState } from './state.ts';
import type { Ctx, Reply, StandinWebhook } from './types.ts';

const ROUTE_PATTERNS = [
  '/oauth2/access_token',
  '/api/v4/account',
  '/api/v4/contacts',
  '/api/v4/leads',
  '/api/v4/leads/pipelines',
  '/api/v4/leads/pipelines/:id',
  '/api/v4/leads/:id',
  '/api/v4/leads/notes',
  '/api/v4/leads/:id/notes',
  '/api/v4/tasks',
  '/api/v4/webhooks',
  '/api/v4/events',
] as const;

/** The route key ('GET /api/v4/leads/:id') and the numeric path parameters. */
export function matchRoute(method: string, path: string): { route: string; params: string[] } {
  const segs = path.split('/');
  for (const pattern of ROUTE_PATTERNS) {
    const psegs = pattern.split('/');
    if (psegs.length !== segs.length) continue;
    const params: string[] = [];
    const ok = psegs.every((p, i) => {
      const s = segs[i] as string;
      if (!p.startsWith(':')) return p === s;
      params.push(s);
      return /^\d{1,15}$/.test(s);
    });
    if (ok) return { route: `${method} ${pattern}`, params };
  }
  return { route: `${method} ${path}`, params: [] };
}

const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseJson(body: Buffer): { ok: true; value: unknown } | { ok: false } {
  const text = body.toString('utf8').trim();
  if (!text) return { ok: false };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

/** Ids from filter[<name>]=1, filter[<name>]=1,2, filter[<name>][]=1 and filter[<name>][0]=1. Undefined when absent. */
function filterIds(search: URLSearchParams, name: string): Set<number> | undefined {
  const re = new RegExp(`^filter\\[${name}\\](\\[\\d*\\])?$`);
  let found: Set<number> | undefined;
  for (const [key, value] of search) {
    if (!re.test(key)) continue;
    found ??= new Set();
    for (const part of value.split(',')) {
      const n = Number(part.trim());
      if (part.trim() !== '' && Number.isSafeInteger(n)) found.add(n);
    }
  }
  return found;
}

const withs = (search: URLSearchParams) => new Set(search.getAll('with').flatMap((w) => w.split(',')).map((w) => w.trim()));

export interface FeedRoutes { hooks: StandinHooks; events: StandinEvents; isAdmin: () => boolean; notes: StandinNotes }

export function createRoutes(state: StandinState, hal: ReturnType<typeof createHal>, onPatched: () => void, feed: FeedRoutes) {
  const renderHook = (h: StandinWebhook) => ({
    id: h.id, destination: h.destination, created_by: h.createdBy, created_at: h.createdAt, updated_at: h.updatedAt,
    sort: h.sort, disabled: h.disabled, settings: h.settings, account_id: ACCOUNT.id,
  });

  /** GET, POST and DELETE /api/v4/webhooks: an admin's token only, JSON bodies. */
  function webhooks(ctx: Ctx): Reply {
    if (!feed.isAdmin()) return problem(403, 'Webhooks can be managed by an account administrator only');
    if (ctx.method === 'GET') {
      const destination = ctx.search.get('filter[destination]') ?? undefined;
      const list = feed.hooks.list(destination);
      if (list.length === 0) return { status: 204 };
      return { status: 200, body: { _total_items: list.length, _links: hal.links('/api/v4/webhooks'), _embedded: { webhooks: list.map(renderHook) } } };
    }
    const parsed = parseJson(ctx.body);
    if (!parsed.ok || !isObject(parsed.value) || Object.keys(parsed.value).length === 0) return emptyBody();
    const body = parsed.value;
    if (ctx.method === 'DELETE') {
      if (typeof body.destination !== 'string' || body.destination === '') {
        return validationProblem([{ request_id: '0', errors: [{ code: 'NotBlank', path: 'destination', detail: 'This value should not be blank' }] }]);
      }
      return feed.hooks.unsubscribe(body.destination) ? { status: 204 } : problem(404, 'Webhook with this destination not found');
    }
    try {
      return { status: 200, body: renderHook(feed.hooks.subscribe(body.destination, body.settings, body.sort)) };
    } catch (err) {
      if (!(err instanceof HookInputError)) throw err;
      return validationProblem([{ request_id: '0', errors: [{ code: err.code, path: err.path, detail: err.message }] }]);
    }
  }

  function patchOne(ctx: Ctx): Reply {
    const parsed = parseJson(ctx.body);
    if (!parsed.ok || !isObject(parsed.value) || Object.keys(parsed.value).length === 0) return emptyBody();
    const id = Number(ctx.params[0]);
    const l = state.liveLead(id);
    if (!l) return problem(404, `Lead ${id} not found`);
    const { errors, next } = state.planChange(l, parsed.value);
    if (errors.length) return validationProblem([{ request_id: '0', errors }]);
    state.changeLead(l, next, 'api');
    onPatched();
    return { status: 200, body: { id: l.id, updated_at: l.updatedAt, _links: hal.links(`/api/v4/leads/${l.id}`) } };
  }

  /** All items are validated first (later items see earlier ones); one invalid item → 400 and nothing applied. */
  function patchMany(ctx: Ctx): Reply {
    const parsed = parseJson(ctx.body);
    if (!parsed.ok) return emptyBody();
    const items = parsed.value;
    if (!Array.isArray(items)) return problem(400, 'Request body must be an array of entities');
    if (items.length === 0) return emptyBody();
    if (items.length > MAX_LIMIT) return problem(400, `Too many entities in one request (maximum ${MAX_LIMIT})`);
    const working = new Map<number, LeadFields>();
    const planned: { lead: LeadState; next: LeadFields; requestId?: string }[] = [];
    const failures: ValidationItem[] = [];
    items.forEach((item: unknown, index) => {
      const rid = isObject(item) && (typeof item.request_id === 'string' || isInt(item.request_id)) ? String(item.request_id) : undefined;
      const requestId = rid ?? String(index);
      if (!isObject(item)) {
        failures.push({ request_id: requestId, errors: [{ code: 'InvalidType', path: '', detail: 'This value should be of type object' }] });
        return;
      }
      if (!isInt(item.id)) {
        failures.push({ request_id: requestId, errors: [{ code: 'NotBlank', path: 'id', detail: 'This value should not be blank' }] });
        return;
      }
      const lead = state.liveLead(item.id);
      if (!lead) {
        failures.push({ request_id: requestId, errors: [{ code: 'NotFound', path: 'id', detail: 'Entity not found' }] });
        return;
      }
      const { errors, next } = state.planChange(working.get(lead.id) ?? lead, item);
      if (errors.length) failures.push({ request_id: requestId, errors });
      else {
        working.set(lead.id, next);
        planned.push({ lead, next, ...(rid !== undefined ? { requestId: rid } : {}) });
      }
    });
    if (failures.length) return validationProblem(failures);
    const at = state.nowSec();
    for (const p of planned) state.changeLead(p.lead, p.next, 'api', at);
    onPatched();
    return {
      status: 200,
      body: {
        _links: hal.links('/api/v4/leads'),
        _embedded: {
          leads: planned.map((p) => ({
            id: p.lead.id,
            updated_at: at,
            ...(p.requestId !== undefined ? { request_id: p.requestId } : {}),
            _links: hal.links(`/api/v4/leads/${p.lead.id}`),
          })),
        },
      },
    };
  }

  return {
    /** An authorized /api/v4 request. */
    api(ctx: Ctx): Reply {
      const id = Number(ctx.params[0]);
      switch (ctx.route) {
        case 'GET /api/v4/account':
          return { status: 200, body: { ...ACCOUNT, _links: hal.links('/api/v4/account') } };
        case 'GET /api/v4/contacts': {
          const withLeads = withs(ctx.search).has('leads');
          return hal.page(ctx, state.contactsMatching(ctx.search.get('query') ?? ''), 'contacts', (c) => hal.contact(c, withLeads));
        }
        case 'GET /api/v4/leads':
          return hal.page(ctx, state.leadsWhere(filterIds(ctx.search, 'id'), filterIds(ctx.search, 'pipeline_id')), 'leads', hal.lead);
        case 'GET /api/v4/leads/:id': {
          const l = state.liveLead(id);
          return l ? { status: 200, body: hal.lead(l) } : { status: 204 };
        }
        case 'PATCH /api/v4/leads/:id':
          return patchOne(ctx);
        case 'PATCH /api/v4/leads':
          return patchMany(ctx);
        case 'GET /api/v4/leads/pipelines': {
          const list = state.pipelines();
          return { status: 200, body: { _total_items: list.length, _links: hal.links('/api/v4/leads/pipelines'), _embedded: { pipelines: list.map(hal.pipeline) } } };
        }
        case 'GET /api/v4/webhooks':
        case 'POST /api/v4/webhooks':
        case 'DELETE /api/v4/webhooks':
          return webhooks(ctx);
        case 'GET /api/v4/events':
          return feed.events.route(ctx);
        case 'GET /api/v4/leads/pipelines/:id': {
          const p = state.pipeline(id);
          return p ? { status: 200, body: hal.pipeline(p) } : problem(404, `Pipeline ${id} not found`);
        }
        default:
          return feed.notes.route(ctx) ?? problem(404, 'Not Found');
      }
    },
  };
}
