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
  const seen = { refreshes: 0, slots: 0, auth: [] as string[] };
  const tokens: TokenSource = {
    current: async () => ({ accessToken: 'token-v1', version: 1 }),
    afterUnauthorized: async (used: AccessToken) => { seen.refreshes++; return { accessToken: `token-v${used.version + 1}`, version: used.version + 1 }; },
  };
  const limiter = { acquire: async () => { seen.slots++; } };
  const amo = amoResources(createAmoHttp(axiosTransport(BASE, timeoutMs), tokens, limiter));
  return { amo, seen };
}
const errorOf = (p: Promise<unknown>) => p.then(() => { throw new Error('expected a failure'); }, (e) => e as AmoError);

describe('request sender', () => {
  it('204 on a contact search means nothing found, not an error', async () => {
    server.use(http.get(`${BASE}/api/v4/contacts`, () => new HttpResponse(null, { status: 204 })));
    expect(await setup().amo.searchContacts('nobody@x.kz')).toEqual([]);
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
    expect(await setup().amo.searchContacts('anna@x.kz')).toEqual([
      { id: 1, name: 'Anna', emails: ['anna@x.kz', 'a2@x.kz'], leadIds: [11, 12] },
      { id: 2, name: 'anna@x.kz', emails: [], leadIds: [] },
    ]);
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
    const err = await errorOf(setup().amo.getAccount());
    expect([err.kind, err.code, err.details.retryAfterMs]).toEqual(['retryable', 'rate_limited', 45_000]);
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
});
