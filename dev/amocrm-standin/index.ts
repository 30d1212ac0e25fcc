// A local stand-in for amoCRM's REST API v4 and its OAuth endpoint, including the failure
// modes the sync has to survive: 204 with an empty body, over-matching contact search, lists
// that page at 50 by default (250 at most), single-use refresh tokens, 7 req/s with 429 and
// a 403 block, validation errors, and injected faults (5xx, timeouts, reset sockets,
// "operation done but response lost"). Behaviour follows amoCRM's API v4 documentation
// (https://www.amocrm.ru/developers/content/crm_platform/leads-api and …/contacts-api, Kommo on
// limits and HTTP codes) and what the official PHP SDK's issues report. Used by `npm start`,
// the integration tests and the benchmark. Only node:http, bound to 127.0.0.1.
//
// Order per request: record it → injected fault (replaces everything; only 'after' runs the
// normal path) → 403 when blocked → 413 → rate limit (/api/v4 and /oauth2) → auth (/api/v4)
// → the endpoint.
//
// The other direction, amoCRM → the platform: account webhooks (/api/v4/webhooks) delivered as
// amoCRM delivers them — form-encoded, 2 s, retries, disabling — for every lead change, API or
// manager (managerMove/Win/Lose/Delete), and the events feed (/api/v4/events) that records
// every stage change (https://www.amocrm.ru/developers/content/crm_platform/webhooks-format,
// …/webhooks-api, …/events-and-notes).
//
// Modules: state (data; every lead change in one function), routes (REST endpoints),
// hal (rendering and paging), oauth (tokens), limits (rate, block, faults, latency),
// ledger (recorded requests, counters), notes (notes and tasks on leads), hooks (subscriptions and delivery), hookform (the
// delivery's form body), events (the events feed), server (node:http).
import { createEvents } from './events.ts';
import { ACCOUNT, createHal, problem } from './hal.ts';
import { createHooks } from './hooks.ts';
import { createLedger } from './ledger.ts';
import { createLimits } from './limits.ts';
import { createNotes } from './notes.ts';
import { createOAuth, hex } from './oauth.ts';
import { createRoutes, matchRoute } from './routes.ts';
import { listen, MAX_BODY } from './server.ts';
import { API_USER_ID, createState, LOST, MANAGER_USER_ID, WON, type LeadState } from './state.ts';
import type { AmoStandin, Ctx, Reply, StandinLead, StandinOptions } from './types.ts';

export type {
  AmoStandin, Fault, HookAction, HookAttempt, HookForm, ManagerOptions, RecordedRequest, StandinContact, StandinCounts,
  StandinCustomField, StandinEvent, StandinLead, StandinOptions, StandinPipeline, StandinWebhook,
} from './types.ts';
export type { StandinNote, StandinTask } from './notes.ts';
export { USER_AGENT as HOOK_USER_AGENT } from './hooks.ts';
/** The stand-in's account as its hooks name it: account[id], account[subdomain]. */
export const STANDIN_ACCOUNT = { id: ACCOUNT.id, subdomain: ACCOUNT.subdomain } as const;
/** Who the events and hooks name: the integration's token user, and the manager of manager* calls. */
export const STANDIN_USERS = { api: API_USER_ID, manager: MANAGER_USER_ID } as const;

const MINUTE = 60_000;

const isApiPath = (path: string) => path === '/api/v4' || path.startsWith('/api/v4/');

export async function startAmoStandin(options: StandinOptions = {}): Promise<AmoStandin> {
  const now = options.now ?? Date.now;
  const nowSec = () => Math.floor(now() / 1000);
  const ledger = createLedger(now);
  const state = createState(nowSec);
  const limits = createLimits({
    ratePerSecond: options.ratePerSecond ?? 7,
    blockAfterViolations: options.blockAfterViolations ?? 0,
    latencyMs: options.latencyMs ?? [0, 0],
    now,
  });
  const oauth = createOAuth({
    clientId: options.clientId ?? 'standin-client-id',
    clientSecret: options.clientSecret ?? 'standin-client-secret',
    redirectUri: options.redirectUri ?? 'https://example.test/oauth',
    accessTtlSec: options.accessTokenTtlSec ?? 86400,
    now,
    onRefresh: ledger.refreshed,
  });
  let baseUrl = '';
  const hal = createHal(() => baseUrl, state);
  const hooks = createHooks({
    now,
    timeoutMs: options.hookTimeoutMs ?? 2000,
    retryDelaysMs: {
      invalid: options.hookRetryDelaysMs?.invalid ?? [5 * MINUTE, 15 * MINUTE],
      server: options.hookRetryDelaysMs?.server ?? [15 * MINUTE, 60 * MINUTE],
    },
    disableAfter: options.hookDisableAfter ?? 100,
    form: options.hookForm ?? 'full',
  });
  const events = createEvents(now, hal);
  state.onLeadChange(events.onLeadChange);
  state.onLeadChange(hooks.onLeadChange);
  let admin = true;
  const notes = createNotes(state, hal, API_USER_ID);
  const routes = createRoutes(state, hal, ledger.patched, { hooks, events, isAdmin: () => admin, notes });

  const leadCopy = (l: LeadState): StandinLead => ({
    id: l.id, name: l.name, pipelineId: l.pipelineId, statusId: l.statusId, updatedAt: l.updatedAt, isDeleted: l.isDeleted,
    price: l.price, responsibleUserId: l.responsibleUserId, createdBy: l.createdBy, updatedBy: l.updatedBy,
    customFields: l.customFields.map((f) => ({ ...f, values: f.values.map((v) => ({ ...v })) })),
  });
  const liveOrThrow = (id: number) => {
    const l = state.liveLead(id);
    if (!l) throw new Error(`stand-in: no lead ${id}${state.lead(id) ? ' (it is deleted)' : ''}`);
    return l;
  };
  /** A manager's move: the deal's pipeline when it has the stage, else the pipeline that has it. */
  function managerMove(id: number, to: { statusId: number; pipelineId?: number; userId?: number }) {
    const l = liveOrThrow(id);
    const pipelineId = to.pipelineId ?? (state.hasStatus(l.pipelineId, to.statusId) ? l.pipelineId : state.ownerOf(to.statusId)?.id);
    if (pipelineId === undefined || !state.pipeline(pipelineId)) throw new Error(`stand-in: no pipeline has stage ${to.statusId}`);
    if (!state.hasStatus(pipelineId, to.statusId)) throw new Error(`stand-in: pipeline ${pipelineId} has no stage ${to.statusId}`);
    state.changeLead(l, { pipelineId, statusId: to.statusId, name: l.name }, 'manager', state.nowSec(), to.userId ?? MANAGER_USER_ID);
    return leadCopy(l);
  }

  /** Everything a request goes through when no fault replaces it. */
  function normal(ctx: Ctx): Reply {
    const blocked = limits.block();
    if (blocked) return blocked;
    if (ctx.tooLarge) return problem(413, `Request body larger than ${MAX_BODY} bytes`);
    const isApi = isApiPath(ctx.path);
    const isOauth = ctx.path.startsWith('/oauth2/');
    if (!isApi && !isOauth) return problem(404, 'Not Found');
    const limited = limits.admit();
    if (limited) return limited;
    if (isOauth) return ctx.route === 'POST /oauth2/access_token' ? oauth.tokenEndpoint(ctx) : problem(404, 'Not Found');
    if (ctx.record.auth !== 'ok') {
      return problem(401, ctx.record.auth === 'missing' ? 'Authorization header is missing' : 'Access token is invalid or expired');
    }
    return routes.api(ctx);
  }

  function handle(ctx: Ctx): Reply {
    const fault = limits.takeFault(ctx.route);
    if (!fault) return normal(ctx);
    if ('kind' in fault) {
      if (fault.kind === 'late') {
        // amoCRM took the request and applies it after the client has given up waiting.
        setTimeout(() => normal(ctx), fault.applyAfterMs).unref();
        return { kind: 'timeout' };
      }
      if (fault.kind !== 'after') return { kind: fault.kind };
      normal(ctx); // the operation happens; its answer is lost
      return problem(fault.status);
    }
    if (fault.body === undefined && fault.status !== 204) return { ...problem(fault.status), headers: fault.headers };
    return { status: fault.status, body: fault.body, headers: fault.headers };
  }

  const server = await listen(options.port ?? 0, {
    delay: limits.delay,
    arrive({ method, url, path, headers }) {
      const { route, params } = matchRoute(method, path);
      const record = ledger.arrived(method, path, url.search.slice(1), route, isApiPath(path) ? oauth.verdict(headers) : undefined);
      return (body, tooLarge) => {
        let reply: Reply;
        try {
          reply = handle({ method, path, route, params, search: url.searchParams, headers, body, tooLarge, record });
        } catch {
          reply = problem(500, 'Internal stand-in error', { trace_id: hex(8) });
        }
        if (!('kind' in reply)) ledger.answered(record, reply.status);
        return reply;
      };
    },
  });
  baseUrl = server.url;

  return {
    url: server.url,
    requests: ledger.requests,
    async close() {
      hooks.close();
      await server.close();
    },
    addPipeline: state.addPipeline,
    addContact: state.addContact,
    addLead: state.addLead,
    lead(id) {
      const l = state.lead(id);
      return l && leadCopy(l);
    },
    setLeadStatus(id, statusId) {
      const l = state.lead(id);
      if (!l) throw new Error(`stand-in: no lead ${id}`);
      const pipelineId = state.hasStatus(l.pipelineId, statusId) ? l.pipelineId : (state.ownerOf(statusId)?.id ?? l.pipelineId);
      state.changeLead(l, { pipelineId, statusId, name: l.name }, 'manager');
    },
    managerMove,
    managerWin: (id, opts = {}) => managerMove(id, { statusId: WON, pipelineId: liveOrThrow(id).pipelineId, userId: opts.userId }),
    managerLose: (id, opts = {}) => managerMove(id, { statusId: LOST, pipelineId: liveOrThrow(id).pipelineId, userId: opts.userId }),
    managerDelete(id, opts = {}) {
      const l = liveOrThrow(id);
      state.deleteLead(l, 'manager', state.nowSec(), opts.userId ?? MANAGER_USER_ID);
      return leadCopy(l);
    },
    webhooks: () => hooks.list(),
    subscribe: (destination, settings) => hooks.subscribe(destination, settings),
    unsubscribe: hooks.unsubscribe,
    enableHook: hooks.enable,
    hooksOff: () => hooks.setOff(true),
    hooksOn: () => hooks.setOff(false),
    dropNextHooks: hooks.dropNext,
    setHookForm: hooks.setForm,
    hookAttempts: hooks.attempts,
    hooksSettled: hooks.settled,
    setAdminRights(value) {
      admin = value;
    },
    leadEvents: events.list,
    notes: notes.notes,
    tasks: notes.tasks,
    issueTokens: oauth.issueTokens,
    issueAuthCode: oauth.issueAuthCode,
    expireAccessTokens: oauth.expireAccessTokens,
    revokeRefreshTokens: oauth.revokeRefreshTokens,
    issueLongLivedToken: oauth.issueLongLivedToken,
    inject: limits.inject,
    clearFaults: limits.clearFaults,
    counts: ledger.counts,
    resetCounts: ledger.resetCounts,
    reset: limits.reset,
    setLatency: limits.setLatency,
  };
}
