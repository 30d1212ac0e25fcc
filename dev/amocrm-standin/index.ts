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
// Modules: state (data; every lead change in one function), routes (REST endpoints),
// hal (rendering and paging), oauth (tokens), limits (rate, block, faults, latency),
// ledger (recorded requests, counters), server (node:http).
import { createHal, problem } from './hal.ts';
import { createLedger } from './ledger.ts';
import { createLimits } from './limits.ts';
import { createOAuth, hex } from './oauth.ts';
import { createRoutes, matchRoute } from './routes.ts';
import { listen, MAX_BODY } from './server.ts';
import { createState } from './state.ts';
import type { AmoStandin, Ctx, Reply, StandinOptions } from './types.ts';

export type {
  AmoStandin, Fault, RecordedRequest, StandinContact, StandinCounts, StandinLead, StandinOptions, StandinPipeline,
} from './types.ts';

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
  const routes = createRoutes(state, hal, ledger.patched);

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
    close: server.close,
    addPipeline: state.addPipeline,
    addContact: state.addContact,
    addLead: state.addLead,
    lead(id) {
      const l = state.lead(id);
      return l && { id: l.id, name: l.name, pipelineId: l.pipelineId, statusId: l.statusId, updatedAt: l.updatedAt, isDeleted: l.isDeleted };
    },
    setLeadStatus(id, statusId) {
      const l = state.lead(id);
      if (!l) throw new Error(`stand-in: no lead ${id}`);
      const pipelineId = state.hasStatus(l.pipelineId, statusId) ? l.pipelineId : (state.ownerOf(statusId)?.id ?? l.pipelineId);
      state.changeLead(l, { pipelineId, statusId, name: l.name }, 'manager');
    },
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
