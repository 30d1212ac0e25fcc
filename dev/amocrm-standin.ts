// A local stand-in for amoCRM's REST API v4 and its OAuth endpoint, including the failure
// modes we have to survive: 204 with an empty body, over-matching contact search, single-use
// refresh tokens, 7 req/s with 429 and a 403 block, validation errors, and injected faults
// (5xx, timeouts, reset sockets, "operation done but response lost").
// Behaviour follows /work/shared/reference/amocrm-api.md. Used by `npm start`, the
// integration tests and the benchmark. Only node:http, bound to 127.0.0.1.
//
// Order per request: record it → injected fault (replaces everything; only 'after' runs the
// normal path) → 403 when blocked → 413 → rate limit (/api/v4 and /oauth2; only requests let
// through fill the 1 s window) → auth (/api/v4) → the endpoint.
//
// Tokens are obviously fake (`standin-at-…`, `standin-rt-…`) and are never recorded or printed.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { randomBytes } from 'node:crypto';

export interface StandinOptions {
  port?: number; // 0 = random (default)
  clientId?: string; // default 'standin-client-id'
  clientSecret?: string; // default 'standin-client-secret'
  redirectUri?: string; // default 'https://example.test/oauth'
  accessTokenTtlSec?: number; // default 86400
  ratePerSecond?: number; // default 7 (per integration; sliding 1 s window)
  blockAfterViolations?: number; // default 0 = never block; N>0: after N 429s within 60 s, answer 403 to everything until reset()
  latencyMs?: [number, number]; // uniform random delay before answering, default [0, 0]
}
export interface StandinContact { id: number; name: string; emails: string[]; leadIds: number[]; updatedAt?: number }
export interface StandinLead { id: number; name: string; pipelineId: number; statusId: number; updatedAt: number; isDeleted?: boolean }
export interface StandinPipeline { id: number; name: string; statuses: { id: number; name: string; sort: number; type?: 0 | 1 }[] }
export type Fault =
  | { status: number; body?: unknown; headers?: Record<string, string> } // answer this instead
  | { kind: 'timeout' } // never answer (hold the socket until close / 60 s)
  | { kind: 'reset' } // destroy the socket without answering
  | { kind: 'after'; status: number }; // perform the real operation, then answer `status` (e.g. 'response lost' on refresh: rotate, then 502)
/** `at` is Date.now() when the request arrived; `status` is 0 while unanswered or when never answered (timeout/reset). */
export interface RecordedRequest { method: string; path: string; query: string; at: number; status: number; auth?: 'ok' | 'missing' | 'invalid' }
export interface AmoStandin {
  url: string; // e.g. http://127.0.0.1:43123 (base URL; API under /api/v4, OAuth under /oauth2)
  close(): Promise<void>;
  addPipeline(p: StandinPipeline): void;
  addContact(c: StandinContact): void;
  addLead(l: StandinLead): void;
  lead(id: number): StandinLead | undefined; // current state (a copy; tests assert on it)
  setLeadStatus(id: number, statusId: number): void; // a sales manager moving a deal by hand
  /** Issues a fresh token pair as if an authorization code had been exchanged; returns it. */
  issueTokens(): { access_token: string; refresh_token: string; expires_in: number };
  /** An authorization code valid 20 min, single use, for POST /oauth2/access_token grant_type=authorization_code. */
  issueAuthCode(): string;
  expireAccessTokens(): void; // all current access tokens (long-lived ones included) now answer 401
  revokeRefreshTokens(): void; // all current refresh tokens now answer 401 'Token has been revoked'
  issueLongLivedToken(validSec: number): string; // a JWT-shaped token with exp claim, no refresh token
  /** Faults for the next matching requests: route is e.g. 'POST /oauth2/access_token', 'GET /api/v4/contacts', 'PATCH /api/v4/leads/:id', or '*'. times defaults to 1. */
  inject(route: string, fault: Fault, times?: number): void;
  clearFaults(): void;
  requests: RecordedRequest[]; // every request received, in order (including 429/401 answers)
  /**
   * Since the last resetCounts(): total requests, requests per route key, 429 and 401 answers,
   * refresh-token rotations actually performed (a lost 'after' response still counts), and
   * PATCH requests to /api/v4/leads[/:id] that were applied (a batch counts once).
   */
  counts(): { total: number; byRoute: Record<string, number>; tooMany: number; unauthorized: number; refreshes: number; patches: number };
  /** Zeroes the counters and empties `requests` (in place). */
  resetCounts(): void;
  reset(): void; // unblock, clear faults and the rate-limit window (data and tokens stay)
  setLatency(range: [number, number]): void;
}

// ---------------------------------------------------------------------------------------------

const WON = 142;
const LOST = 143;
const MAX_BODY = 1024 * 1024;
const AUTH_CODE_TTL_MS = 20 * 60 * 1000;
const REFRESH_TTL_MS = 90 * 24 * 3600 * 1000;
const TIMEOUT_HOLD_MS = 60_000;
const MAX_LIMIT = 250;
const ACCOUNT = { id: 31234567, name: 'Stand-in School', subdomain: 'standin', current_user_id: 123, country: 'RU', currency: 'RUB' };

const ROUTE_PATTERNS = [
  '/oauth2/access_token',
  '/api/v4/account',
  '/api/v4/contacts',
  '/api/v4/contacts/:id',
  '/api/v4/leads',
  '/api/v4/leads/notes',
  '/api/v4/leads/pipelines',
  '/api/v4/leads/pipelines/:id',
  '/api/v4/leads/pipelines/:id/statuses',
  '/api/v4/leads/pipelines/:id/statuses/:status_id',
  '/api/v4/leads/:id',
  '/api/v4/leads/:id/notes',
] as const;

type Reply =
  | { status: number; body?: unknown; headers?: Record<string, string> } // string body = sent raw (text/html unless headers say otherwise)
  | { kind: 'timeout' }
  | { kind: 'reset' };

interface Ctx {
  method: string;
  path: string;
  route: string;
  params: string[];
  search: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  tooLarge: boolean;
  record: RecordedRequest;
}

interface LeadState { id: number; name: string; pipelineId: number; statusId: number; updatedAt: number; isDeleted: boolean; createdAt: number; closedAt: number | null }
interface ValidationItem { request_id: string; errors: { code: string; path: string; detail: string }[] }

const nowSec = () => Math.floor(Date.now() / 1000);
const hex = (n: number) => randomBytes(n).toString('hex');
const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function problem(status: number, detail?: string, extra: Record<string, unknown> = {}): Reply {
  const title = http.STATUS_CODES[status] ?? 'Error';
  return { status, body: { title, type: `https://httpstatus.es/${status}`, status, detail: detail ?? title, ...extra } };
}

function oauthProblem(status: number, hint: string): Reply {
  return {
    status,
    body: {
      hint,
      title: 'Некорректный запрос',
      status,
      type: 'https://developers.amocrm.ru/v3/errors/OAuthProblemJson',
      detail: 'В запросе отсутствует ряд параметров или параметры невалидны',
    },
  };
}

function validationProblem(items: ValidationItem[]): Reply {
  return problem(400, 'Request validation failed', { 'validation-errors': items });
}

const EMPTY_BODY = () => problem(400, 'Request data can not be empty');
const NOT_SUPPORTED = "The value you've selected is not supported";

const BLOCKED_HTML =
  '<!DOCTYPE html><html><head><title>403 Forbidden</title></head><body><h1>403 Forbidden</h1>' +
  '<p>Access to the API has been blocked for this IP address / account because of repeated limit violations.</p></body></html>';

function matchRoute(method: string, path: string): { route: string; params: string[] } {
  const segs = path.split('/');
  for (const pattern of ROUTE_PATTERNS) {
    const psegs = pattern.split('/');
    if (psegs.length !== segs.length) continue;
    const params: string[] = [];
    let ok = true;
    for (let i = 0; i < psegs.length && ok; i++) {
      const p = psegs[i] as string;
      const s = segs[i] as string;
      if (p.startsWith(':')) {
        if (/^\d{1,15}$/.test(s)) params.push(s);
        else ok = false;
      } else if (p !== s) ok = false;
    }
    if (ok) return { route: `${method} ${pattern}`, params };
  }
  return { route: `${method} ${path}`, params: [] };
}

/** The query string with anything that looks like a credential replaced. */
function redactQuery(raw: string): string {
  if (!raw) return '';
  const sp = new URLSearchParams(raw);
  let touched = false;
  for (const key of new Set(sp.keys())) {
    if (/token|secret|code|password|auth/i.test(key)) {
      sp.set(key, 'REDACTED');
      touched = true;
    }
  }
  return touched ? sp.toString() : raw;
}

function parseJson(body: Buffer): { ok: true; value: unknown } | { ok: false } {
  const text = body.toString('utf8').trim();
  if (!text) return { ok: false };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false };
  }
}

function parseWith(search: URLSearchParams): Set<string> {
  return new Set(search.getAll('with').flatMap((w) => w.split(',')).map((w) => w.trim()).filter(Boolean));
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

function parsePaging(search: URLSearchParams): { limit: number; page: number } | Reply {
  const rawLimit = search.get('limit');
  const rawPage = search.get('page');
  let limit = 50;
  let page = 1;
  if (rawLimit !== null) {
    limit = Number(rawLimit);
    if (!Number.isSafeInteger(limit) || limit < 1) return problem(400, 'Request validation failed: limit');
    if (limit > MAX_LIMIT) return problem(422, `Limit must not be greater than ${MAX_LIMIT}`);
  }
  if (rawPage !== null) {
    page = Number(rawPage);
    if (!Number.isSafeInteger(page) || page < 1) return problem(400, 'Request validation failed: page');
  }
  return { limit, page };
}

function randomDelay([min, max]: [number, number]): number {
  const lo = Math.max(0, Math.min(min, max));
  const hi = Math.max(0, Math.max(min, max));
  return lo + Math.random() * (hi - lo);
}

// ---------------------------------------------------------------------------------------------

export async function startAmoStandin(options: StandinOptions = {}): Promise<AmoStandin> {
  const clientId = options.clientId ?? 'standin-client-id';
  const clientSecret = options.clientSecret ?? 'standin-client-secret';
  const redirectUri = options.redirectUri ?? 'https://example.test/oauth';
  const accessTtlSec = options.accessTokenTtlSec ?? 86400;
  const ratePerSecond = options.ratePerSecond ?? 7;
  const blockAfter = options.blockAfterViolations ?? 0;
  let latency: [number, number] = options.latencyMs ?? [0, 0];

  // Data
  const pipelines = new Map<number, StandinPipeline & { isMain: boolean; sort: number }>();
  const contacts = new Map<number, StandinContact & { updatedAt: number; createdAt: number }>();
  const leads = new Map<number, LeadState>();
  let nextNoteId = 1;

  // Tokens (values never leave these maps except through the issuing functions / token endpoint)
  const accessTokens = new Map<string, { expiresAt: number }>();
  const refreshTokens = new Map<string, { state: 'valid' | 'used' | 'revoked'; expiresAt: number }>();
  const authCodes = new Map<string, { used: boolean; expiresAt: number }>();

  // Limits, faults, bookkeeping
  let window: number[] = [];
  let violations: number[] = [];
  let blocked = false;
  let faults: { route: string; fault: Fault; remaining: number }[] = [];
  const requests: RecordedRequest[] = [];
  let counters = { total: 0, byRoute: {} as Record<string, number>, tooMany: 0, unauthorized: 0, refreshes: 0, patches: 0 };

  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let closed = false;
  let baseUrl = '';

  const later = (ms: number, fn: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    t.unref();
    timers.add(t);
  };

  // --- token helpers -------------------------------------------------------------------------

  function newPair() {
    const access_token = `standin-at-${hex(24)}`;
    const refresh_token = `standin-rt-${hex(32)}`;
    accessTokens.set(access_token, { expiresAt: Date.now() + accessTtlSec * 1000 });
    refreshTokens.set(refresh_token, { state: 'valid', expiresAt: Date.now() + REFRESH_TTL_MS });
    return { token_type: 'Bearer' as const, expires_in: accessTtlSec, access_token, refresh_token };
  }

  function authVerdict(headers: http.IncomingHttpHeaders): 'ok' | 'missing' | 'invalid' {
    const h = headers.authorization;
    if (h === undefined || h.trim() === '') return 'missing';
    const m = /^Bearer\s+(\S+)\s*$/i.exec(h);
    if (!m) return 'invalid';
    const t = accessTokens.get(m[1] as string);
    return t && t.expiresAt > Date.now() ? 'ok' : 'invalid';
  }

  // --- rendering -----------------------------------------------------------------------------

  const href = (path: string) => ({ self: { href: `${baseUrl}${path}` } });

  function pipelineJson(p: StandinPipeline & { isMain: boolean; sort: number }) {
    return {
      id: p.id,
      name: p.name,
      sort: p.sort,
      is_main: p.isMain,
      is_unsorted_on: p.statuses.some((s) => s.type === 1),
      is_archive: false,
      account_id: ACCOUNT.id,
      _links: href(`/api/v4/leads/pipelines/${p.id}`),
      _embedded: { statuses: [...p.statuses].sort((a, b) => a.sort - b.sort).map((s) => statusJson(p.id, s)) },
    };
  }

  function statusJson(pipelineId: number, s: StandinPipeline['statuses'][number]) {
    const system = s.id === WON || s.id === LOST || s.type === 1;
    return {
      id: s.id,
      name: s.name,
      sort: s.sort,
      is_editable: !system,
      pipeline_id: pipelineId,
      color: s.id === WON ? '#CCFF66' : s.id === LOST ? '#D5D8DB' : '#99ccff',
      type: s.type ?? 0,
      account_id: ACCOUNT.id,
      _links: href(`/api/v4/leads/pipelines/${pipelineId}/statuses/${s.id}`),
    };
  }

  function leadJson(l: LeadState, withs: Set<string>) {
    const embedded: Record<string, unknown> = { tags: [], companies: [] };
    if (withs.has('contacts')) {
      const linked = [...contacts.values()].filter((c) => c.leadIds.includes(l.id));
      embedded.contacts = linked.map((c, i) => ({ id: c.id, is_main: i === 0, _links: href(`/api/v4/contacts/${c.id}`) }));
    }
    return {
      id: l.id,
      name: l.name,
      price: 0,
      responsible_user_id: ACCOUNT.current_user_id,
      group_id: 0,
      status_id: l.statusId,
      pipeline_id: l.pipelineId,
      loss_reason_id: null,
      created_by: ACCOUNT.current_user_id,
      updated_by: ACCOUNT.current_user_id,
      created_at: l.createdAt,
      updated_at: l.updatedAt,
      closed_at: l.closedAt,
      closest_task_at: null,
      is_deleted: false,
      custom_fields_values: null,
      score: null,
      account_id: ACCOUNT.id,
      labor_cost: null,
      _links: href(`/api/v4/leads/${l.id}`),
      _embedded: embedded,
    };
  }

  function contactJson(c: StandinContact & { updatedAt: number; createdAt: number }, withs: Set<string>) {
    const embedded: Record<string, unknown> = { tags: [], companies: [] };
    if (withs.has('leads')) {
      embedded.leads = c.leadIds
        .filter((id) => !leads.get(id)?.isDeleted)
        .map((id) => ({ id, _links: href(`/api/v4/leads/${id}`) }));
    }
    return {
      id: c.id,
      name: c.name,
      first_name: '',
      last_name: '',
      responsible_user_id: ACCOUNT.current_user_id,
      group_id: 0,
      created_by: ACCOUNT.current_user_id,
      updated_by: ACCOUNT.current_user_id,
      created_at: c.createdAt,
      updated_at: c.updatedAt,
      closest_task_at: null,
      is_deleted: false,
      custom_fields_values:
        c.emails.length === 0
          ? null
          : [
              {
                field_id: 1,
                field_name: 'Email',
                field_code: 'EMAIL',
                field_type: 'multitext',
                values: c.emails.map((value) => ({ value, enum_id: 1, enum_code: 'WORK' })),
              },
            ],
      account_id: ACCOUNT.id,
      _links: href(`/api/v4/contacts/${c.id}`),
      _embedded: embedded,
    };
  }

  function listPage<T>(ctx: Ctx, items: T[], key: string, render: (item: T) => unknown): Reply {
    const paging = parsePaging(ctx.search);
    if ('status' in paging || 'kind' in paging) return paging;
    const start = (paging.page - 1) * paging.limit;
    const slice = items.slice(start, start + paging.limit);
    if (slice.length === 0) return { status: 204 };
    const self = new URLSearchParams(ctx.search);
    const links: Record<string, { href: string }> = { self: { href: `${baseUrl}${ctx.path}${self.size ? `?${self}` : ''}` } };
    if (start + paging.limit < items.length) {
      const next = new URLSearchParams(ctx.search);
      next.set('page', String(paging.page + 1));
      next.set('limit', String(paging.limit));
      links.next = { href: `${baseUrl}${ctx.path}?${next}` };
    }
    if (paging.page > 1) {
      const prev = new URLSearchParams(ctx.search);
      prev.set('page', String(paging.page - 1));
      links.prev = { href: `${baseUrl}${ctx.path}?${prev}` };
    }
    return { status: 200, body: { _page: paging.page, _links: links, _embedded: { [key]: slice.map(render) } } };
  }

  // --- lead changes --------------------------------------------------------------------------

  /** Validates one lead change against `cur`; returns the errors or the resulting state. */
  function planChange(
    cur: { pipelineId: number; statusId: number; name: string },
    item: Record<string, unknown>,
  ): { errors: ValidationItem['errors']; next: { pipelineId: number; statusId: number; name: string } } {
    const errors: ValidationItem['errors'] = [];
    const next = { ...cur };
    if ('pipeline_id' in item) {
      const pid = item.pipeline_id;
      if (!isInt(pid) || !pipelines.has(pid)) errors.push({ code: 'NotSupportedChoice', path: 'pipeline_id', detail: NOT_SUPPORTED });
      else next.pipelineId = pid;
    }
    if ('status_id' in item) {
      const sid = item.status_id;
      const pipeline = pipelines.get(next.pipelineId);
      const ok = isInt(sid) && (sid === WON || sid === LOST || !!pipeline?.statuses.some((s) => s.id === sid));
      if (!ok) errors.push({ code: 'NotSupportedChoice', path: 'status_id', detail: NOT_SUPPORTED });
      else next.statusId = sid;
    } else if (errors.length === 0 && next.pipelineId !== cur.pipelineId) {
      // Moving to another pipeline without a stage: amoCRM puts the lead into its first regular stage.
      const first = [...(pipelines.get(next.pipelineId)?.statuses ?? [])]
        .filter((s) => s.type !== 1 && s.id !== WON && s.id !== LOST)
        .sort((a, b) => a.sort - b.sort)[0];
      if (first) next.statusId = first.id;
      else errors.push({ code: 'NotSupportedChoice', path: 'pipeline_id', detail: NOT_SUPPORTED });
    }
    if ('name' in item) {
      if (typeof item.name !== 'string') errors.push({ code: 'InvalidType', path: 'name', detail: 'This value should be of type string' });
      else next.name = item.name;
    }
    return { errors, next };
  }

  function applyChange(l: LeadState, next: { pipelineId: number; statusId: number; name: string }, at: number) {
    const wasClosed = l.statusId === WON || l.statusId === LOST;
    const isClosed = next.statusId === WON || next.statusId === LOST;
    l.pipelineId = next.pipelineId;
    l.statusId = next.statusId;
    l.name = next.name;
    l.updatedAt = at;
    if (isClosed && (!wasClosed || l.closedAt === null)) l.closedAt = at;
    if (!isClosed) l.closedAt = null;
  }

  const liveLead = (id: number) => {
    const l = leads.get(id);
    return l && !l.isDeleted ? l : undefined;
  };

  // --- handlers ------------------------------------------------------------------------------

  function oauthToken(ctx: Ctx): Reply {
    const text = ctx.body.toString('utf8').trim();
    let params: Record<string, unknown>;
    const ct = String(ctx.headers['content-type'] ?? '');
    if (ct.includes('json') || text.startsWith('{')) {
      const parsed = parseJson(ctx.body);
      if (!parsed.ok || !isObject(parsed.value)) return oauthProblem(400, 'Check the `grant_type` parameter');
      params = parsed.value;
    } else {
      params = Object.fromEntries(new URLSearchParams(text));
    }
    const str = (k: string) => (typeof params[k] === 'string' ? (params[k] as string) : undefined);
    const grant = str('grant_type');
    if (!grant) return oauthProblem(400, 'Check the `grant_type` parameter');
    if (!str('client_id')) return oauthProblem(400, 'Check the `client_id` parameter');
    if (str('client_id') !== clientId || str('client_secret') !== clientSecret) return oauthProblem(401, 'Client authentication failed');
    const redirect = str('redirect_uri');
    if (redirect !== undefined && redirect !== redirectUri) return oauthProblem(400, 'Redirect URI mismatch');

    if (grant === 'authorization_code') {
      const code = str('code');
      if (!code) return oauthProblem(400, 'Check the `code` parameter');
      if (redirect === undefined) return oauthProblem(400, 'Check the `redirect_uri` parameter');
      const entry = authCodes.get(code);
      if (!entry) return oauthProblem(400, 'Cannot decrypt the authorization code');
      if (entry.used) return oauthProblem(400, 'Authorization code has been revoked');
      if (entry.expiresAt <= Date.now()) return oauthProblem(400, 'Authorization code has expired');
      entry.used = true;
      return { status: 200, body: newPair() };
    }
    if (grant === 'refresh_token') {
      const token = str('refresh_token');
      if (!token) return oauthProblem(400, 'Check the `refresh_token` parameter');
      const entry = refreshTokens.get(token);
      if (!entry || entry.state !== 'valid') return oauthProblem(401, 'Token has been revoked');
      if (entry.expiresAt <= Date.now()) return oauthProblem(401, 'Token has expired');
      entry.state = 'used'; // single use: dies now; the old access token lives on until its own expiry
      counters.refreshes++;
      return { status: 200, body: newPair() };
    }
    return oauthProblem(400, 'The authorization grant type is not supported by the authorization server.');
  }

  function patchOne(ctx: Ctx): Reply {
    const parsed = parseJson(ctx.body);
    if (!parsed.ok || !isObject(parsed.value) || Object.keys(parsed.value).length === 0) return EMPTY_BODY();
    const id = Number(ctx.params[0]);
    const l = liveLead(id);
    if (!l) return problem(404, `Lead ${id} not found`);
    const { errors, next } = planChange(l, parsed.value);
    if (errors.length) return validationProblem([{ request_id: '0', errors }]);
    applyChange(l, next, nowSec());
    counters.patches++;
    return { status: 200, body: { id: l.id, updated_at: l.updatedAt, _links: href(`/api/v4/leads/${l.id}`) } };
  }

  function patchMany(ctx: Ctx): Reply {
    const parsed = parseJson(ctx.body);
    if (!parsed.ok) return EMPTY_BODY();
    const items = parsed.value;
    if (!Array.isArray(items)) return problem(400, 'Request body must be an array of entities');
    if (items.length === 0) return EMPTY_BODY();
    if (items.length > MAX_LIMIT) return problem(400, `Too many entities in one request (maximum ${MAX_LIMIT})`);
    const working = new Map<number, { pipelineId: number; statusId: number; name: string }>();
    const planned: { lead: LeadState; next: { pipelineId: number; statusId: number; name: string }; requestId?: string }[] = [];
    const failures: ValidationItem[] = [];
    items.forEach((item: unknown, index) => {
      const rid = isObject(item) && (typeof item.request_id === 'string' || isInt(item.request_id)) ? String(item.request_id) : undefined;
      const requestId = rid ?? String(index);
      if (!isObject(item)) {
        failures.push({ request_id: requestId, errors: [{ code: 'InvalidType', path: '', detail: 'This value should be of type object' }] });
        return;
      }
      const lead = isInt(item.id) ? liveLead(item.id) : undefined;
      if (!isInt(item.id)) {
        failures.push({ request_id: requestId, errors: [{ code: 'NotBlank', path: 'id', detail: 'This value should not be blank' }] });
        return;
      }
      if (!lead) {
        failures.push({ request_id: requestId, errors: [{ code: 'NotFound', path: 'id', detail: 'Entity not found' }] });
        return;
      }
      const cur = working.get(lead.id) ?? { pipelineId: lead.pipelineId, statusId: lead.statusId, name: lead.name };
      const { errors, next } = planChange(cur, item);
      if (errors.length) failures.push({ request_id: requestId, errors });
      else {
        working.set(lead.id, next);
        planned.push({ lead, next, ...(rid !== undefined ? { requestId: rid } : {}) });
      }
    });
    if (failures.length) return validationProblem(failures);
    const at = nowSec();
    for (const p of planned) applyChange(p.lead, p.next, at);
    counters.patches++;
    return {
      status: 200,
      body: {
        _links: href('/api/v4/leads'),
        _embedded: {
          leads: planned.map((p) => ({
            id: p.lead.id,
            updated_at: at,
            ...(p.requestId !== undefined ? { request_id: p.requestId } : {}),
            _links: href(`/api/v4/leads/${p.lead.id}`),
          })),
        },
      },
    };
  }

  function addNotes(ctx: Ctx, pathLeadId: number | undefined): Reply {
    const parsed = parseJson(ctx.body);
    if (!parsed.ok) return EMPTY_BODY();
    if (!Array.isArray(parsed.value)) return problem(400, 'Request body must be an array of entities');
    const items = parsed.value as unknown[];
    if (items.length === 0) return EMPTY_BODY();
    if (items.length > MAX_LIMIT) return problem(400, `Too many entities in one request (maximum ${MAX_LIMIT})`);
    if (pathLeadId !== undefined && !liveLead(pathLeadId)) return problem(404, `Lead ${pathLeadId} not found`);
    const failures: ValidationItem[] = [];
    const ok: { entityId: number; requestId: string }[] = [];
    items.forEach((item, index) => {
      const requestId = isObject(item) && (typeof item.request_id === 'string' || isInt(item.request_id)) ? String(item.request_id) : String(index);
      if (!isObject(item)) {
        failures.push({ request_id: requestId, errors: [{ code: 'InvalidType', path: '', detail: 'This value should be of type object' }] });
        return;
      }
      const errors: ValidationItem['errors'] = [];
      const entityId = pathLeadId ?? item.entity_id;
      if (!isInt(entityId) || !liveLead(entityId)) errors.push({ code: 'NotFound', path: 'entity_id', detail: 'Entity not found' });
      if (typeof item.note_type !== 'string') errors.push({ code: 'NotSupportedChoice', path: 'note_type', detail: NOT_SUPPORTED });
      if (errors.length) failures.push({ request_id: requestId, errors });
      else ok.push({ entityId: entityId as number, requestId });
    });
    if (failures.length) return validationProblem(failures);
    return {
      status: 200,
      body: {
        _links: href(ctx.path),
        _embedded: {
          notes: ok.map((n) => {
            const id = nextNoteId++;
            return { id, entity_id: n.entityId, request_id: n.requestId, _links: href(`/api/v4/leads/${n.entityId}/notes/${id}`) };
          }),
        },
      },
    };
  }

  function api(ctx: Ctx): Reply {
    const withs = parseWith(ctx.search);
    const id = Number(ctx.params[0]);
    switch (ctx.route) {
      case 'GET /api/v4/account':
        return { status: 200, body: { ...ACCOUNT, _links: href('/api/v4/account') } };

      case 'GET /api/v4/contacts': {
        const q = (ctx.search.get('query') ?? '').toLowerCase();
        const found = [...contacts.values()]
          .filter((c) => !q || c.name.toLowerCase().includes(q) || c.emails.some((e) => e.toLowerCase().includes(q)))
          .sort((a, b) => a.id - b.id);
        return listPage(ctx, found, 'contacts', (c) => contactJson(c, withs));
      }
      case 'GET /api/v4/contacts/:id': {
        const c = contacts.get(id);
        return c ? { status: 200, body: contactJson(c, withs) } : { status: 204 };
      }

      case 'GET /api/v4/leads': {
        const ids = filterIds(ctx.search, 'id');
        const pids = filterIds(ctx.search, 'pipeline_id');
        const found = [...leads.values()]
          .filter((l) => !l.isDeleted && (!ids || ids.has(l.id)) && (!pids || pids.has(l.pipelineId)))
          .sort((a, b) => a.id - b.id);
        return listPage(ctx, found, 'leads', (l) => leadJson(l, withs));
      }
      case 'GET /api/v4/leads/:id': {
        const l = liveLead(id);
        return l ? { status: 200, body: leadJson(l, withs) } : { status: 204 };
      }
      case 'PATCH /api/v4/leads/:id':
        return patchOne(ctx);
      case 'PATCH /api/v4/leads':
        return patchMany(ctx);
      case 'POST /api/v4/leads/:id/notes':
        return addNotes(ctx, id);
      case 'POST /api/v4/leads/notes':
        return addNotes(ctx, undefined);

      case 'GET /api/v4/leads/pipelines': {
        const list = [...pipelines.values()].sort((a, b) => a.sort - b.sort);
        return {
          status: 200,
          body: { _total_items: list.length, _links: href('/api/v4/leads/pipelines'), _embedded: { pipelines: list.map(pipelineJson) } },
        };
      }
      case 'GET /api/v4/leads/pipelines/:id': {
        const p = pipelines.get(id);
        return p ? { status: 200, body: pipelineJson(p) } : problem(404, `Pipeline ${id} not found`);
      }
      case 'GET /api/v4/leads/pipelines/:id/statuses': {
        const p = pipelines.get(id);
        if (!p) return problem(404, `Pipeline ${id} not found`);
        const statuses = [...p.statuses].sort((a, b) => a.sort - b.sort).map((s) => statusJson(p.id, s));
        return { status: 200, body: { _total_items: statuses.length, _links: href(ctx.path), _embedded: { statuses } } };
      }
      case 'GET /api/v4/leads/pipelines/:id/statuses/:status_id': {
        const p = pipelines.get(id);
        const s = p?.statuses.find((x) => x.id === Number(ctx.params[1]));
        return p && s ? { status: 200, body: statusJson(p.id, s) } : problem(404, 'Status not found');
      }
      default:
        return problem(404, 'Not Found');
    }
  }

  /** Everything a request goes through when no fault replaces it. */
  function normal(ctx: Ctx): Reply {
    if (blocked) return { status: 403, body: BLOCKED_HTML };
    if (ctx.tooLarge) return problem(413, `Request body larger than ${MAX_BODY} bytes`);

    const isApi = ctx.path === '/api/v4' || ctx.path.startsWith('/api/v4/');
    const isOauth = ctx.path.startsWith('/oauth2/');
    if (isApi || isOauth) {
      const now = Date.now();
      window = window.filter((t) => t > now - 1000);
      if (window.length >= ratePerSecond) {
        if (blockAfter > 0) {
          violations = violations.filter((t) => t > now - 60_000);
          violations.push(now);
          if (violations.length >= blockAfter) blocked = true;
        }
        const reply = problem(429, 'You have sent too many requests. Please slow down (at most ' + ratePerSecond + ' requests per second).', {
          retry_after: 1,
        }) as { status: number; body: unknown };
        return { ...reply, headers: { 'retry-after': '1' } };
      }
      window.push(now);
    }

    if (isOauth) return ctx.route === 'POST /oauth2/access_token' ? oauthToken(ctx) : problem(404, 'Not Found');
    if (isApi) {
      if (ctx.record.auth !== 'ok') {
        return problem(401, ctx.record.auth === 'missing' ? 'Authorization header is missing' : 'Access token is invalid or expired');
      }
      return api(ctx);
    }
    return problem(404, 'Not Found');
  }

  function takeFault(route: string): Fault | undefined {
    const i = faults.findIndex((f) => f.route === '*' || f.route === route);
    if (i < 0) return undefined;
    const f = faults[i]!;
    f.remaining--;
    if (f.remaining <= 0) faults.splice(i, 1);
    return f.fault;
  }

  function handle(ctx: Ctx): Reply {
    const fault = takeFault(ctx.route);
    if (!fault) return normal(ctx);
    if ('kind' in fault) {
      if (fault.kind === 'after') {
        normal(ctx); // the operation happens; its answer is lost
        return problem(fault.status);
      }
      return { kind: fault.kind };
    }
    if (fault.body === undefined && fault.status !== 204) {
      const p = problem(fault.status) as { status: number; body: unknown };
      return { ...p, headers: fault.headers };
    }
    return { status: fault.status, body: fault.body, headers: fault.headers };
  }

  function send(req: http.IncomingMessage, res: http.ServerResponse, reply: Reply) {
    if (closed) return;
    if ('kind' in reply) {
      if (reply.kind === 'reset') req.socket.destroy();
      else later(TIMEOUT_HOLD_MS, () => req.socket.destroy()); // timeout: hold, then drop
      return;
    }
    const headers: Record<string, string> = {};
    let payload: string | undefined;
    if (reply.status !== 204 && reply.status !== 304 && reply.body !== undefined) {
      if (typeof reply.body === 'string') {
        payload = reply.body;
        headers['content-type'] = 'text/html; charset=utf-8';
      } else {
        payload = JSON.stringify(reply.body);
        headers['content-type'] = reply.status >= 400 ? 'application/problem+json' : 'application/hal+json';
      }
    }
    for (const [k, v] of Object.entries(reply.headers ?? {})) headers[k.toLowerCase()] = v;
    if (payload !== undefined) headers['content-length'] = String(Buffer.byteLength(payload));
    res.writeHead(reply.status, headers);
    res.end(payload);
  }

  // --- server --------------------------------------------------------------------------------

  const server = http.createServer((req, res) => {
    const method = (req.method ?? 'GET').toUpperCase();
    const url = new URL(`http://127.0.0.1${(req.url ?? '/').startsWith('/') ? '' : '/'}${req.url ?? ''}`);
    const path = url.pathname.length > 1 ? url.pathname.replace(/\/+$/, '') : url.pathname;
    const { route, params } = matchRoute(method, path);
    const isApi = path === '/api/v4' || path.startsWith('/api/v4/');
    const record: RecordedRequest = { method, path, query: redactQuery(url.search.slice(1)), at: Date.now(), status: 0 };
    if (isApi) record.auth = authVerdict(req.headers);
    requests.push(record);
    counters.total++;
    counters.byRoute[route] = (counters.byRoute[route] ?? 0) + 1;

    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = Number(req.headers['content-length'] ?? 0) > MAX_BODY;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY) tooLarge = true;
      if (!tooLarge) chunks.push(chunk);
    });
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    req.on('end', () => {
      if (closed) return;
      const ctx: Ctx = {
        method,
        path,
        route,
        params,
        search: url.searchParams,
        headers: req.headers,
        body: tooLarge ? Buffer.alloc(0) : Buffer.concat(chunks),
        tooLarge,
        record,
      };
      let reply: Reply;
      try {
        reply = handle(ctx);
      } catch {
        reply = problem(500, 'Internal stand-in error', { trace_id: hex(8) });
      }
      if (!('kind' in reply)) {
        record.status = reply.status;
        if (reply.status === 429) counters.tooMany++;
        if (reply.status === 401) counters.unauthorized++;
      }
      const delay = randomDelay(latency);
      if (delay > 0) later(delay, () => send(req, res, reply));
      else send(req, res, reply);
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (_err, socket) => socket.destroy());

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  // --- public API ----------------------------------------------------------------------------

  const standin: AmoStandin = {
    url: baseUrl,
    requests,

    async close() {
      if (closed) return;
      closed = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const s of sockets) s.destroy();
      sockets.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },

    addPipeline(p) {
      const statuses = p.statuses.map((s) => ({ ...s }));
      if (!statuses.some((s) => s.id === WON)) statuses.push({ id: WON, name: 'Успешно реализовано', sort: 10000, type: 0 });
      if (!statuses.some((s) => s.id === LOST)) statuses.push({ id: LOST, name: 'Закрыто и не реализовано', sort: 11000, type: 0 });
      const existing = pipelines.get(p.id);
      pipelines.set(p.id, {
        id: p.id,
        name: p.name,
        statuses,
        isMain: existing?.isMain ?? pipelines.size === 0,
        sort: existing?.sort ?? (pipelines.size + 1) * 100,
      });
    },

    addContact(c) {
      const now = nowSec();
      contacts.set(c.id, { ...c, emails: [...c.emails], leadIds: [...c.leadIds], updatedAt: c.updatedAt ?? now, createdAt: c.updatedAt ?? now });
    },

    addLead(l) {
      const closedNow = l.statusId === WON || l.statusId === LOST;
      leads.set(l.id, {
        id: l.id,
        name: l.name,
        pipelineId: l.pipelineId,
        statusId: l.statusId,
        updatedAt: l.updatedAt,
        isDeleted: l.isDeleted ?? false,
        createdAt: l.updatedAt,
        closedAt: closedNow ? l.updatedAt : null,
      });
    },

    lead(id) {
      const l = leads.get(id);
      if (!l) return undefined;
      return { id: l.id, name: l.name, pipelineId: l.pipelineId, statusId: l.statusId, updatedAt: l.updatedAt, isDeleted: l.isDeleted };
    },

    setLeadStatus(id, statusId) {
      const l = leads.get(id);
      if (!l) throw new Error(`stand-in: no lead ${id}`);
      let pipelineId = l.pipelineId;
      const inCurrent = statusId === WON || statusId === LOST || !!pipelines.get(pipelineId)?.statuses.some((s) => s.id === statusId);
      if (!inCurrent) {
        const owner = [...pipelines.values()].find((p) => p.statuses.some((s) => s.id === statusId));
        if (owner) pipelineId = owner.id;
      }
      applyChange(l, { pipelineId, statusId, name: l.name }, nowSec());
    },

    issueTokens() {
      const { access_token, refresh_token, expires_in } = newPair();
      return { access_token, refresh_token, expires_in };
    },

    issueAuthCode() {
      const code = `standin-code-${hex(16)}`;
      authCodes.set(code, { used: false, expiresAt: Date.now() + AUTH_CODE_TTL_MS });
      return code;
    },

    expireAccessTokens() {
      const past = Date.now() - 1;
      for (const t of accessTokens.values()) t.expiresAt = Math.min(t.expiresAt, past);
    },

    revokeRefreshTokens() {
      for (const t of refreshTokens.values()) t.state = 'revoked';
    },

    issueLongLivedToken(validSec) {
      const iat = nowSec();
      const payload = {
        iss: 'amocrm-standin',
        aud: clientId,
        jti: hex(16),
        iat,
        nbf: iat,
        exp: iat + validSec,
        account_id: ACCOUNT.id,
        api_domain: 'api-b.amocrm.ru',
        scopes: ['crm'],
        long_lived: true,
      };
      // Not 'eyJ…' at the start: only the middle segment is base64url JSON (with exp).
      const token = `standin.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.sig`;
      accessTokens.set(token, { expiresAt: (iat + validSec) * 1000 });
      return token;
    },

    inject(route, fault, times = 1) {
      if (times <= 0) return;
      faults.push({ route: route.trim().replace(/\s+/g, ' ').replace(/^(\S+)/, (m) => (m === '*' ? m : m.toUpperCase())), fault, remaining: times });
    },

    clearFaults() {
      faults = [];
    },

    counts() {
      return { ...counters, byRoute: { ...counters.byRoute } };
    },

    resetCounts() {
      counters = { total: 0, byRoute: {}, tooMany: 0, unauthorized: 0, refreshes: 0, patches: 0 };
      requests.length = 0;
    },

    reset() {
      blocked = false;
      violations = [];
      window = [];
      faults = [];
    },

    setLatency(range) {
      latency = [range[0], range[1]];
    },
  };
  return standin;
}
