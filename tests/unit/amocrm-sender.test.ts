// One sender for every amoCRM request: the OAuth token endpoint and a token being checked
// go through the same ready → slot → send → classify → report-429 as the resources, with
// the request saying whose bearer and which slot.
import { http, HttpResponse, delay } from 'msw';
import { setupServer } from 'msw/node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AmoError } from '../../lib/amocrm/errors.ts';
import { axiosTransport, createAmoHttp, type AccessToken, type TokenSource, type Transport } from '../../lib/amocrm/http.ts';
import { createOAuthClient } from '../../lib/amocrm/oauth.ts';
import { amoResources } from '../../lib/amocrm/resources.ts';

const BASE = 'https://school.amocrm.test';
const server = setupServer();
beforeAll(() => server.listen({ onUnhandledRequest: 'error' }));
afterEach(() => server.resetHandlers());
afterAll(() => server.close());

const settings = { clientId: 'id', clientSecret: 'secret', redirectUri: 'https://x.kz/cb' };
const clock = { now: () => Date.UTC(2026, 0, 1), sleep: async () => undefined };
const errorOf = (p: Promise<unknown>) => p.then(() => { throw new Error('expected a failure'); }, (e) => e as AmoError);

/** A sender whose token source refreshes through the OAuth resource over that same sender. */
function setup() {
  const seen = { slots: [] as string[], rateLimited: [] as (number | undefined)[], reads: 0, sends: 0, readies: 0 };
  const real = axiosTransport(BASE, 2000);
  const transport: Transport = {
    ready: async () => { seen.readies++; await real.ready?.(); },
    send: (req, bearer) => { seen.sends++; return real.send(req, bearer); },
  };
  const limiter = {
    acquire: async (o?: { priority?: boolean }) => { seen.slots.push(o?.priority ? 'priority' : 'ordinary'); },
    rateLimited: async (ms?: number) => { seen.rateLimited.push(ms); },
  };
  let token: AccessToken = { accessToken: 'old', version: 1 };
  const tokens: TokenSource = {
    current: async () => { seen.reads++; return token; },
    afterUnauthorized: async (used) => {
      const pair = await oauth.exchange({ refreshToken: `refresh-v${used.version}` });
      return (token = { accessToken: pair.accessToken, version: used.version + 1 });
    },
  };
  const sender = createAmoHttp(transport, tokens, limiter);
  const oauth = createOAuthClient(sender, clock, settings);
  return { amo: amoResources(sender), oauth, seen };
}

describe('one sender', () => {
  it('the token endpoint: no bearer, no token read, the priority slot, the pair dated by the clock', async () => {
    const auths: (string | null)[] = [];
    let body: unknown;
    server.use(http.post(`${BASE}/oauth2/access_token`, async ({ request }) => {
      auths.push(request.headers.get('authorization'));
      body = await request.json();
      return HttpResponse.json({ access_token: 'A2', refresh_token: 'R2', expires_in: 3600 });
    }));
    const { oauth, seen } = setup();
    const pair = await oauth.exchange({ code: 'c0de' });
    expect(pair).toEqual({ accessToken: 'A2', refreshToken: 'R2', expiresAt: new Date(clock.now() + 3_600_000) });
    expect(auths).toEqual([null]);
    expect(body).toEqual({ client_id: 'id', client_secret: 'secret', redirect_uri: 'https://x.kz/cb', grant_type: 'authorization_code', code: 'c0de' });
    expect([seen.slots, seen.reads, seen.readies, seen.sends]).toEqual([['priority'], 0, 1, 1]);
  });

  it.each([400, 401])('a %i from the token endpoint is its answer: the grant is refused, once, nothing refreshed', async (status) => {
    let calls = 0;
    server.use(http.post(`${BASE}/oauth2/access_token`, () => { calls++; return HttpResponse.json({ hint: 'Token has been revoked' }, { status }); }));
    const { oauth, seen } = setup();
    const err = await errorOf(oauth.exchange({ refreshToken: 'R1' }));
    expect([err.kind, err.code, err.message, err.details.status, calls]).toEqual(['operator', 'refresh_rejected', 'amoCRM отклонил refresh-токен: Token has been revoked', status, 1]);
    expect(seen.reads).toBe(0);
  });

  it('a 429 from the token endpoint is classified and reported by the sender like any other', async () => {
    server.use(http.post(`${BASE}/oauth2/access_token`, () => HttpResponse.json({ retry_after: 3 }, { status: 429 })));
    const { oauth, seen } = setup();
    const err = await errorOf(oauth.exchange({ refreshToken: 'R1' }));
    expect([err.kind, err.code]).toEqual(['retryable', 'rate_limited']);
    expect(seen.rateLimited).toEqual([3000]);
  });

  it('a 200 without tokens is a retryable bad_token_response; a 500 a retryable server_error', async () => {
    server.use(http.post(`${BASE}/oauth2/access_token`, () => HttpResponse.json({ token_type: 'Bearer' })));
    expect((await errorOf(setup().oauth.exchange({ code: 'c' }))).code).toBe('bad_token_response');
    server.use(http.post(`${BASE}/oauth2/access_token`, () => HttpResponse.json({ title: 'oops' }, { status: 500 })));
    expect((await errorOf(setup().oauth.exchange({ code: 'c' }))).code).toBe('server_error');
  });

  it('the refresh a first request needs is not held behind that first request', async () => {
    const auths: (string | null)[] = [];
    server.use(
      http.get(`${BASE}/api/v4/account`, ({ request }) => {
        auths.push(request.headers.get('authorization'));
        return auths.length === 1 ? HttpResponse.json({}, { status: 401 }) : HttpResponse.json({ id: 1, name: 'School', subdomain: 'school' });
      }),
      http.post(`${BASE}/oauth2/access_token`, async () => { await delay(10); return HttpResponse.json({ access_token: 'new', refresh_token: 'R2' }); }),
    );
    const { amo, seen } = setup();
    const [account, other] = await Promise.all([amo.getAccount(), amo.getAccount()]);
    expect([account.name, other.name]).toEqual(['School', 'School']);
    expect(auths).toEqual(['Bearer old', 'Bearer new', 'Bearer new']);
    expect(seen.slots).toEqual(['ordinary', 'priority', 'ordinary', 'ordinary']);
  });

  it('a token being checked is sent as is: a 401 is its verdict, not a refresh', async () => {
    const auths: (string | null)[] = [];
    server.use(http.get(`${BASE}/api/v4/account`, ({ request }) => {
      auths.push(request.headers.get('authorization'));
      return request.headers.get('authorization') === 'Bearer good'
        ? HttpResponse.json({ id: 1, name: 'School', subdomain: 'school' })
        : HttpResponse.json({}, { status: 401 });
    }));
    const { amo, seen } = setup();
    expect(await amo.getAccountWith('wrong')).toBeNull();
    expect(await amo.getAccountWith('good')).toMatchObject({ name: 'School' });
    expect(auths).toEqual(['Bearer wrong', 'Bearer good']);
    expect([seen.reads, seen.slots]).toEqual([0, ['ordinary', 'ordinary']]);
  });

  it('a token being checked meets the same classification: a 403 is an AmoError with its status', async () => {
    server.use(http.get(`${BASE}/api/v4/account`, () => HttpResponse.json({}, { status: 403 })));
    const err = await errorOf(setup().amo.getAccountWith('t'));
    expect([err.code, err.details.status]).toEqual(['account_blocked', 403]);
  });
});
