// The request sender (in the spirit of stripe-node's RequestSender): the one place that
// sends to amoCRM, for every caller (the sync, OAuth's token endpoint, the CLI): base URL,
// timeouts, the shared rate limit (the slot a request asks for), the bearer token, one
// refresh and retry on 401, the classification of failures and the report of a 429.
// Resources above it only describe requests and what their answers mean.
import type { AxiosInstance } from 'axios';
import { AmoError, needsOperator, permanent, retryable } from './errors.ts';
import type { RateLimiter } from './rate-limit.ts';
import { warmAgent, type WarmAgent } from './warm-agent.ts';

export type QueryParams = [string, string | number][];

export interface AmoRequest {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  path: string;
  query?: QueryParams;
  body?: unknown;
  /** Non-2xx statuses that are answers for this resource (e.g. 404 → no such deal), not failures. */
  answers?: readonly number[];
  /** The caller no longer wants it (its batch stopped calling amoCRM): not sent if aborted before its slot comes. */
  signal?: AbortSignal;
  /**
   * Whose bearer token: unset, the token source's (refreshed once and retried on a 401);
   * a string, that token as is (one being checked before it is stored: a 401 is its
   * verdict, nothing to refresh); false, none (OAuth's token endpoint).
   */
  bearer?: string | false;
  /**
   * The token refresh's slot: ahead of the queue but counted (rate-limit.ts), and not held
   * behind the invocation's first request, which may be the one waiting for the token.
   */
  priority?: boolean;
}

export interface AmoResponse<T = any> {
  status: number;
  /** null for 204 No Content (amoCRM's "nothing found"). */
  data: T | null;
}

export interface AccessToken {
  accessToken: string;
  version: number;
}

export interface TokenSource {
  current(): Promise<AccessToken>;
  /** After a 401 with `used`: refresh unless someone already did; throws when it cannot. */
  afterUnauthorized(used: AccessToken): Promise<AccessToken>;
}

export interface Transport {
  /** Loads what sending needs, so a taken rate slot is never spent waiting for an import. */
  ready?(): Promise<void>;
  send(req: AmoRequest, bearer?: string): Promise<{ status: number; data: unknown; headers: Record<string, string> }>;
}

// axios (with form-data, proxy agents, mime-db) is the largest import of a function: it is
// loaded on the first amoCRM request, so a status call or a sweep with nothing due never
// pays for it.
let defaultInstance: Promise<AxiosInstance> | undefined;
const loadAxios = () => (defaultInstance ??= import('axios').then((m) => m.default.create()));

export function axiosTransport(baseUrl: string, timeoutMs: number, instance?: AxiosInstance): Transport {
  // A given instance (tests) brings its own connections.
  const warm: WarmAgent | undefined = instance ? undefined : warmAgent(baseUrl);
  return {
    async ready() {
      if (!instance) await loadAxios();
      // The connection too: the slot taken next is a promise to arrive then, not a handshake later.
      await warm?.ready();
    },
    async send(req, bearer) {
      const query = req.query?.length ? `?${new URLSearchParams(req.query.map(([k, v]) => [k, String(v)]))}` : '';
      const client = instance ?? (await loadAxios());
      warm?.sending();
      try {
        const res = await client.request({
          baseURL: baseUrl,
          url: req.path + query,
          method: req.method,
          data: req.body,
          timeout: timeoutMs,
          headers: { 'Content-Type': 'application/json', ...(bearer ? { Authorization: `Bearer ${bearer}` } : {}) },
          // Every status is an answer to classify, not an exception.
          validateStatus: () => true,
          // Blocked accounts and proxies answer with HTML: parse defensively below.
          responseType: 'text',
          transitional: { silentJSONParsing: true, forcedJSONParsing: false, clarifyTimeoutError: true },
          maxRedirects: 0,
          ...(warm ? { httpAgent: warm.agent, httpsAgent: warm.agent } : {}),
        });
        return { status: res.status, data: parseBody(res.data), headers: res.headers as Record<string, string> };
      } catch (err) {
        const code = (err as { code?: string }).code ?? 'ERR_NETWORK';
        const timedOut = code === 'ETIMEDOUT' || code === 'ECONNABORTED';
        throw retryable(timedOut ? 'timeout' : 'network',
          timedOut ? `amoCRM не ответил за ${timeoutMs} мс` : `amoCRM недоступен (${code})`);
      }
    },
  };
}

function parseBody(text: unknown): unknown {
  if (typeof text !== 'string' || text.trim() === '') return null;
  try {
    return JSON.parse(text);
  } catch {
    return { unparsed: text.slice(0, 200) };
  }
}

/** Milliseconds amoCRM asks us to wait: the Retry-After header or the body's retry_after. */
export function retryAfterMs(headers: Record<string, string>, data: unknown): number | undefined {
  const header = Number(headers['retry-after']);
  const body = Number((data as { retry_after?: unknown } | null)?.retry_after);
  const seconds = [header, body].filter((n) => Number.isFinite(n) && n > 0);
  return seconds.length ? Math.max(...seconds) * 1000 : undefined;
}

/**
 * The one place that says what an amoCRM status means for the sync. A resource never
 * second-guesses it: it only names the statuses that are answers for it (`answers`).
 */
export function classifyStatus(status: number, headers: Record<string, string>, data: unknown): AmoError {
  const body = data as { detail?: string; title?: string } | null;
  const detail = body?.detail ?? body?.title;
  const text = `amoCRM: ${status}${detail ? ` ${String(detail).slice(0, 200)}` : ''}`;
  if (status === 429) return retryable('rate_limited', 'amoCRM: 429 Too Many Requests', { status, retryAfterMs: retryAfterMs(headers, data) });
  if (status >= 500) return retryable('server_error', text, { status });
  if (status === 402) return needsOperator('payment_required', 'amoCRM: 402 — оплаченный период аккаунта закончился', 'продлите подписку amoCRM; события продолжатся сами', { status });
  if (status === 403) return needsOperator('account_blocked', 'amoCRM: 403 — API заблокирован для аккаунта или не хватает прав', 'проверьте права интеграции; при блокировке за превышение лимита обратитесь в поддержку amoCRM', { status });
  if (status === 401) return needsOperator('unauthorized', 'amoCRM: 401 и после обновления токена — интеграция отключена или токен отозван', 'проверьте, что интеграция включена, и авторизуйте её заново: npm run amocrm -- exchange-code <код>', { status });
  // A request amoCRM refuses as malformed fails the same way however often it is sent.
  if (status === 400 || status === 422) return permanent('bad_request', `amoCRM отклонил запрос: ${text}`, { status });
  if (status === 404) return permanent('not_found', `amoCRM: 404 — ${detail ?? 'не найдено'}`, { status });
  if (status >= 300 && status < 400) {
    return needsOperator('unexpected_redirect', `amoCRM перенаправляет запрос (${status})`, 'проверьте AMOCRM_SUBDOMAIN и AMOCRM_BASE_DOMAIN: адрес аккаунта изменился?', { status });
  }
  return permanent(`http_${status}`, text, { status });
}

export interface AmoHttp {
  /** Sends one request. 2xx and the request's own `answers` come back; anything else throws a classified AmoError. */
  request<T = any>(req: AmoRequest): Promise<AmoResponse<T>>;
}

/**
 * An invocation's first request goes alone; requests issued meanwhile wait for its answer
 * before taking their slots. amoCRM counts requests when they arrive: the first one pays
 * for what a warm invocation does not (a new connection, lazy initialisation) and can
 * arrive after the next, which left on time, so two would land in one slot's gap. It also
 * means a run that meets a 429 or an outage asks once, not once per request in flight.
 * A priority request (the refresh) never waits for the first: the first may be waiting for it.
 */
export function createAmoHttp(transport: Transport, tokens: TokenSource, limiter: RateLimiter): AmoHttp {
  let first: Promise<unknown> | undefined; // settled: the invocation is warm

  /** One attempt: its slot (unless the caller gave up), then the request. */
  async function attempt(req: AmoRequest, bearer: string | undefined) {
    if (!req.signal?.aborted) await (req.priority ? limiter.acquire({ priority: true }) : limiter.acquire());
    if (req.signal?.aborted) throw retryable('cancelled', 'запрос к amoCRM отменён: пакет остановлен');
    return transport.send(req, bearer);
  }

  async function exchange<T>(req: AmoRequest): Promise<AmoResponse<T>> {
    let token = req.bearer === undefined ? await tokens.current() : undefined;
    // Before the slot: a slot is a promise to send now, not after axios has loaded.
    await transport.ready?.();
    let res = await attempt(req, token?.accessToken ?? (req.bearer || undefined));
    if (res.status === 401 && token) {
      token = await tokens.afterUnauthorized(token); // refresh once, then retry once
      res = await attempt(req, token.accessToken);
    }
    if ((res.status >= 200 && res.status < 300) || req.answers?.includes(res.status)) {
      return { status: res.status, data: res.status === 204 ? null : (res.data as T) };
    }
    const error = classifyStatus(res.status, res.headers, res.data);
    if (res.status === 429) await limiter.rateLimited(error.details.retryAfterMs).catch(() => undefined);
    throw error;
  }

  return {
    async request<T>(req: AmoRequest): Promise<AmoResponse<T>> {
      if (req.priority) return exchange<T>(req);
      if (first) {
        await first;
        return exchange<T>(req);
      }
      const mine = exchange<T>(req);
      first = mine.catch(() => undefined);
      return mine;
    },
  };
}
