// The amoCRM request sender and resources against msw: status classification, 204,
// one refresh-and-retry on 401, defensive parsing, timeouts, query encoding.
import { http, HttpResponse, delay } from 'msw';
import { setupServer } from 'msw/node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AmoError } from '../../lib/amocrm/errors.ts';
import { axiosTransport, createAmoHttp, type AccessToken, type TokenSource } from '../../lib/amocrm/http.ts';
import { amoResources } from '../../lib/amocrm/resources.ts';

const BASE = 'https://school.amocrm.test';
const server = setupServer();
beforeAll(() => server.listen({ onUnhandledRequest: 'error' }));
afterEach(() => server.resetHandlers());
afterAll(() => server.close());

function setup(timeoutMs = 2000) {
  const seen = { refreshes: 0, slots: 0, rateLimited: [] as (number | undefined)[], auth: [] as string[] };
  const tokens: TokenSource = {
    current: async () => ({ accessToken: 'token-v1', version: 1 }),
    afterUnauthorized: async (used: AccessToken) => { seen.refreshes++; return { accessToken: `token-v${used.version + 1}`, version: used.version + 1 }; },
  };
  const limiter = { acquire: async () => { seen.slots++; }, rateLimited: async (ms?: number) => { seen.rateLimited.push(ms); } };
  const amo = amoResources(createAmoHttp(axiosTransport(BASE, timeoutMs), tokens, limiter));
  return { amo, seen };
}
const errorOf = (p: Promise<unknown>) => p.then(() => { throw new Error('expected a failure'); }, (e) => e as AmoError);

describe('request sender', () => {
  it('an invocation\'s first request goes alone: requests issued with it start after its answer, later ones in parallel', async () => {
    let inFlight = 0;
    let most = 0;
    const log: string[] = [];
    server.use(http.get(`${BASE}/api/v4/contacts`, async ({ request }) => {
      const q = new URL(request.url).searchParams.get('query');
      most = Math.max(most, ++inFlight);
      log.push(`start ${q}`);
      await delay(30);
      log.push(`end ${q}`);
      inFlight--;
      return new HttpResponse(null, { status: 204 });
    }));
    const { amo, seen } = setup();
    await Promise.all(['a@x.kz', 'b@x.kz', 'c@x.kz'].map((q) => amo.searchContacts(q)));
    expect(log.slice(0, 2)).toEqual(['start a@x.kz', 'end a@x.kz']);
    expect(most).toBe(2); // b and c together, once a was answered
    await Promise.all(['d@x.kz', 'e@x.kz'].map((q) => amo.searchContacts(q)));
    expect(log.slice(6, 8).sort()).toEqual(['start d@x.kz', 'start e@x.kz']);
    expect(seen.slots).toBe(5);
  });

  it('a request whose caller gave up before its slot came is not sent', async () => {
    let sent = 0;
    server.use(http.get(`${BASE}/api/v4/contacts`, () => { sent++; return new HttpResponse(null, { status: 204 }); }));
    const { amo, seen } = setup();
    const gaveUp = AbortSignal.abort();
    const err = await errorOf(amo.searchContacts('a@x.kz', gaveUp));
    expect([err.kind, err.code]).toEqual(['retryable', 'cancelled']);
    expect([sent, seen.slots]).toEqual([0, 0]);
  });

  it('204 on a contact search means nothing found, not an error', async () => {
    server.use(http.get(`${BASE}/api/v4/contacts`, () => new HttpResponse(null, { status: 204 })));
    expect(await setup().amo.searchContacts('nobody@x.kz')).toEqual({ contacts: [], complete: true });
  });

  it('parses contacts: e-mails from the EMAIL field, lead ids from _embedded, null fields tolerated', async () => {
    server.use(http.get(`${BASE}/api/v4/contacts`, ({ request }) => {
      const url = new URL(request.url);
      expect([url.searchParams.get('query'), url.searchParams.get('with')]).toEqual(['anna@x.kz', 'leads']);
      return HttpResponse.json({ _embedded: { contacts: [
        { id: 1, name: 'Anna', custom_fields_values: [{ field_code: 'PHONE', values: [{ value: '+7' }] }, { field_code: 'EMAIL', values: [{ value: 'anna@x.kz' }, { value: 'a2@x.kz' }] }], _embedded: { leads: [{ id: 11 }, { id: 12 }] } },
        { id: 2, name: 'anna@x.kz', custom_fields_values: null, _embedded: { leads: [] } },
      ] } });
    }));
    expect(await setup().amo.searchContacts('anna@x.kz')).toEqual({ complete: true, contacts: [
      { id: 1, name: 'Anna', emails: ['anna@x.kz', 'a2@x.kz'], leadIds: [11, 12] },
      { id: 2, name: 'anna@x.kz', emails: [], leadIds: [] },
    ] });
  });

  it('sends filter[id][] for each lead id', async () => {
    server.use(http.get(`${BASE}/api/v4/leads`, ({ request }) => {
      expect(new URL(request.url).searchParams.getAll('filter[id][]')).toEqual(['5', '6']);
      return HttpResponse.json({ _embedded: { leads: [{ id: 5, pipeline_id: 1, status_id: 2, updated_at: 3 }] } });
    }));
    expect(await setup().amo.getLeads([5, 6])).toEqual([{ id: 5, pipeline_id: 1, status_id: 2, updated_at: 3 }]);
  });

  it('on 401 refreshes once and retries with the new token', async () => {
    const auths: (string | null)[] = [];
    server.use(http.get(`${BASE}/api/v4/account`, ({ request }) => {
      auths.push(request.headers.get('authorization'));
      return auths.length === 1 ? HttpResponse.json({ status: 401 }, { status: 401 }) : HttpResponse.json({ id: 1, name: 'School', subdomain: 'school' });
    }));
    const { amo, seen } = setup();
    expect(await amo.getAccount()).toMatchObject({ name: 'School' });
    expect(auths).toEqual(['Bearer token-v1', 'Bearer token-v2']);
    expect([seen.refreshes, seen.slots]).toEqual([1, 2]); // each attempt took a rate slot
  });

  it('a second 401 is not retried again: it needs an operator', async () => {
    let calls = 0;
    server.use(http.get(`${BASE}/api/v4/account`, () => { calls++; return HttpResponse.json({ status: 401 }, { status: 401 }); }));
    const err = await errorOf(setup().amo.getAccount());
    expect([err.kind, err.code, calls]).toEqual(['operator', 'unauthorized', 2]);
  });

  it('429 is retryable and carries the wait amoCRM asked for (header or body)', async () => {
    server.use(http.get(`${BASE}/api/v4/account`, () => HttpResponse.json({ status: 429, retry_after: 45 }, { status: 429, headers: { 'retry-after': '30' } })));
    const { amo, seen } = setup();
    const err = await errorOf(amo.getAccount());
    expect([err.kind, err.code, err.details.retryAfterMs]).toEqual(['retryable', 'rate_limited', 45_000]);
    expect(seen.rateLimited).toEqual([45_000]); // the shared limiter was told, with the wait
  });

  it.each([[500, 'server_error'], [502, 'server_error'], [503, 'server_error']])('%i is retryable', async (status, code) => {
    server.use(http.get(`${BASE}/api/v4/account`, () => HttpResponse.json({ title: 'oops', trace_id: 'x' }, { status })));
    const err = await errorOf(setup().amo.getAccount());
    expect([err.kind, err.code]).toEqual(['retryable', code]);
  });

  it('a 403 with an HTML page (blocked account) is parsed defensively and needs an operator', async () => {
    server.use(http.get(`${BASE}/api/v4/account`, () => new HttpResponse('<html><body>Access denied</body></html>', { status: 403, headers: { 'content-type': 'text/html' } })));
    const err = await errorOf(setup().amo.getAccount());
    expect([err.kind, err.code]).toEqual(['operator', 'account_blocked']);
    expect(err.details.whatToDo).toMatch(/поддержку/);
  });

  it('402 (unpaid account) needs an operator', async () => {
    server.use(http.get(`${BASE}/api/v4/account`, () => HttpResponse.json({ status: 402 }, { status: 402 })));
    expect((await errorOf(setup().amo.getAccount())).code).toBe('payment_required');
  });

  it('a timeout is retryable', async () => {
    server.use(http.get(`${BASE}/api/v4/account`, async () => { await delay(2000); return HttpResponse.json({}); }));
    const err = await errorOf(setup(200).amo.getAccount());
    expect([err.kind, err.code]).toEqual(['retryable', 'timeout']);
  });

  it('a stage amoCRM rejects (400 validation) is a permanent failure', async () => {
    server.use(http.patch(`${BASE}/api/v4/leads/9`, () => HttpResponse.json({ status: 400, 'validation-errors': [{ errors: [{ code: 'NotSupportedChoice', path: 'status_id' }] }] }, { status: 400 })));
    const err = await errorOf(setup().amo.moveLead(9, 1, 2));
    expect([err.kind, err.code]).toEqual(['permanent', 'stage_rejected']);
  });

  it('moves a batch in one PATCH with pipeline and stage on every item', async () => {
    let body: unknown;
    server.use(http.patch(`${BASE}/api/v4/leads`, async ({ request }) => { body = await request.json(); return HttpResponse.json({ _embedded: { leads: [] } }); }));
    expect(await setup().amo.moveLeads([{ id: 1, statusId: 10 }, { id: 2, statusId: 11 }], 77)).toBe('ok');
    expect(body).toEqual([{ id: 1, pipeline_id: 77, status_id: 10, request_id: '1' }, { id: 2, pipeline_id: 77, status_id: 11, request_id: '2' }]);
  });

  // One place classifies every status; a resource names only the statuses that are answers for it.
  it.each([
    ['contact search', (amo: ReturnType<typeof setup>['amo']) => amo.searchContacts('x@x.kz'), 'get', '/api/v4/contacts'],
    ['lead read', (amo: ReturnType<typeof setup>['amo']) => amo.getLeads([1]), 'get', '/api/v4/leads'],
    ['pipeline read', (amo: ReturnType<typeof setup>['amo']) => amo.getPipeline(7), 'get', '/api/v4/leads/pipelines/7'],
    ['pipeline list', (amo: ReturnType<typeof setup>['amo']) => amo.listPipelines(), 'get', '/api/v4/leads/pipelines'],
  ] as const)('a 400 to a %s is a permanent bad_request, never retried', async (_name, call, method, path) => {
    let calls = 0;
    server.use(http[method](`${BASE}${path}`, () => { calls++; return HttpResponse.json({ title: 'Bad Request', status: 400, detail: 'query invalid' }, { status: 400 }); }));
    const err = await errorOf(call(setup().amo));
    expect([err.kind, err.code, calls]).toEqual(['permanent', 'bad_request', 1]);
  });

  it('a 500 on a pipeline read is retryable, not swallowed as "no pipeline"', async () => {
    server.use(http.get(`${BASE}/api/v4/leads/pipelines/7`, () => HttpResponse.json({ title: 'oops' }, { status: 500 })));
    const err = await errorOf(setup().amo.getPipeline(7));
    expect([err.kind, err.code]).toEqual(['retryable', 'server_error']);
  });

  it('404 is an answer where the resource says so: no deal, no pipeline', async () => {
    server.use(http.get(`${BASE}/api/v4/leads/5`, () => HttpResponse.json({ status: 404 }, { status: 404 })));
    server.use(http.get(`${BASE}/api/v4/leads/pipelines/7`, () => HttpResponse.json({ status: 404 }, { status: 404 })));
    const { amo } = setup();
    expect(await amo.getLead(5)).toBeNull();
    expect(await amo.getPipeline(7)).toBeNull();
  });

  it('reads more than 50 deals: 250 ids per request, following _links.next', async () => {
    const asked: string[][] = [];
    server.use(http.get(`${BASE}/api/v4/leads`, ({ request }) => {
      const url = new URL(request.url);
      const ids = url.searchParams.getAll('filter[id][]');
      const page = Number(url.searchParams.get('page'));
      expect(url.searchParams.get('limit')).toBe('250');
      asked.push(ids);
      // amoCRM's default page is 50; pretend it pages at 100 to check that the pages are followed.
      const slice = ids.slice((page - 1) * 100, page * 100);
      const next = page * 100 < ids.length ? { next: { href: 'x' } } : {};
      return HttpResponse.json({ _embedded: { leads: slice.map((id) => ({ id: Number(id), pipeline_id: 1, status_id: 2, updated_at: 3 })) }, _links: next });
    }));
    const ids = Array.from({ length: 260 }, (_, i) => i + 1);
    const leads = await setup().amo.getLeads(ids);
    expect(leads.map((l) => l.id)).toEqual(ids);
    expect(asked.map((a) => a.length)).toEqual([250, 250, 250, 10]); // 3 pages of the first 250 ids, then the last 10
  });

  it('a contact search that hits its page cap says so instead of "nothing more"', async () => {
    let pages = 0;
    server.use(http.get(`${BASE}/api/v4/contacts`, () => {
      pages++;
      return HttpResponse.json({ _embedded: { contacts: [{ id: pages, name: 'x', custom_fields_values: [], _embedded: { leads: [] } }] }, _links: { next: { href: 'x' } } });
    }));
    const result = await setup().amo.searchContacts('common@x.kz');
    expect(result.complete).toBe(false);
    expect(pages).toBe(4);
  });
});
