import { afterEach, describe, expect, it, vi } from 'vitest';
import { startAmoStandin, type AmoStandin, type StandinOptions } from '../dev/amocrm-standin/index.ts';

const CLIENT = { client_id: 'standin-client-id', client_secret: 'standin-client-secret', redirect_uri: 'https://example.test/oauth' };
const TRIPWIRE = 7777;
const OTHER = 8888;

const open: AmoStandin[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

/** A stand-in with two pipelines, a few contacts and leads, and a valid token pair. */
async function start(options: StandinOptions = {}) {
  const amo = await startAmoStandin(options);
  open.push(amo);
  amo.addPipeline({
    id: TRIPWIRE,
    name: 'Tripwire',
    statuses: [
      { id: 100, name: 'Неразобранное', sort: 10, type: 1 },
      { id: 101, name: 'Lesson 1', sort: 20 },
      { id: 102, name: 'Lesson 2', sort: 30 },
    ],
  });
  amo.addPipeline({ id: OTHER, name: 'Other', statuses: [{ id: 201, name: 'Other stage', sort: 20 }] });
  amo.addContact({ id: 1, name: 'Anna', emails: ['anna@school.ru'], leadIds: [11] });
  amo.addContact({ id: 2, name: 'Maryanna', emails: ['MaryAnna@school.ru', 'm@home.ru'], leadIds: [12, 13] });
  amo.addContact({ id: 3, name: 'anna@school.ru', emails: ['other@school.ru'], leadIds: [] });
  amo.addContact({ id: 4, name: 'Boris', emails: ['boris@school.ru'], leadIds: [14] });
  amo.addContact({ id: 5, name: 'No mail', emails: [], leadIds: [] });
  amo.addLead({ id: 11, name: 'Deal 11', pipelineId: TRIPWIRE, statusId: 101, updatedAt: 1_700_000_000 });
  amo.addLead({ id: 12, name: 'Deal 12', pipelineId: TRIPWIRE, statusId: 142, updatedAt: 1_700_000_000 });
  amo.addLead({ id: 13, name: 'Deal 13', pipelineId: OTHER, statusId: 201, updatedAt: 1_700_000_000, isDeleted: true });
  amo.addLead({ id: 14, name: 'Deal 14', pipelineId: TRIPWIRE, statusId: 102, updatedAt: 1_700_000_000 });
  const tokens = amo.issueTokens();
  const api = (path: string, init: RequestInit = {}, token: string | null = tokens.access_token) =>
    fetch(`${amo.url}${path}`, {
      ...init,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(init.body ? { 'content-type': 'application/json' } : {}),
        ...(init.headers as Record<string, string> | undefined),
      },
    });
  const oauth = (body: Record<string, unknown>) =>
    fetch(`${amo.url}/oauth2/access_token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const refresh = (refresh_token: string) => oauth({ ...CLIENT, grant_type: 'refresh_token', refresh_token });
  return { amo, tokens, api, oauth, refresh };
}

/** A clock the test moves by hand: the stand-in's rate window and block read it, so counts are exact on any machine. */
function manualClock() {
  let t = Date.now();
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

/** Lets pending I/O run (setImmediate is never faked here). */
const ioTurn = () => new Promise<void>((r) => setImmediate(r));
/** Waits for a condition, turning the event loop; the deadline only guards against a hang. */
async function until(check: () => boolean, what: string) {
  const deadline = Date.now() + 10_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`never happened: ${what}`);
    await ioTurn();
  }
}

/** Follows `_links.next` from `path`; returns every page's items under `key`. */
async function allPages(api: (path: string) => Promise<Response>, path: string, key: string) {
  const pages: any[][] = [];
  let next: string | undefined = path;
  while (next) {
    const res = await api(next);
    if (res.status === 204) break;
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    pages.push(body._embedded[key]);
    if (!body._links.next) break;
    const url = new URL(body._links.next.href);
    next = url.pathname + url.search;
  }
  return pages;
}

describe('contacts search', () => {
  it('answers 204 with an empty body when nothing matches', async () => {
    const { api } = await start();
    const res = await api('/api/v4/contacts?query=nobody%40nowhere.ru&with=leads');
    expect(res.status).toBe(204);
    expect(await res.text()).toBe('');
  });

  it('over-matches by case-insensitive substring over names and all e-mails', async () => {
    const { api } = await start();
    const res = await api('/api/v4/contacts?query=ANNA%40school.ru&with=leads');
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('application/hal+json');
    const body = (await res.json()) as any;
    const found = body._embedded.contacts as any[];
    expect(found.map((c) => c.id)).toEqual([1, 2, 3]); // maryanna@ and the contact *named* after the address too
    const maryanna = found.find((c) => c.id === 2);
    expect(maryanna.custom_fields_values).toEqual([
      {
        field_id: 1,
        field_name: 'Email',
        field_code: 'EMAIL',
        field_type: 'multitext',
        values: [
          { value: 'MaryAnna@school.ru', enum_id: 1, enum_code: 'WORK' },
          { value: 'm@home.ru', enum_id: 1, enum_code: 'WORK' },
        ],
      },
    ]);
    // Lead 13 is deleted, so only 12 is attached.
    expect(maryanna._embedded.leads.map((l: any) => l.id)).toEqual([12]);
    expect(maryanna._embedded.leads[0]._links.self.href).toMatch(/\/api\/v4\/leads\/12$/);
    expect(body._page).toBe(1);
    expect(body._links.next).toBeUndefined();
  });

  it('attaches leads only with with=leads and gives null custom fields without e-mails', async () => {
    const { api } = await start();
    const body = (await (await api('/api/v4/contacts?query=no%20mail')).json()) as any;
    expect(body._embedded.contacts).toHaveLength(1);
    expect(body._embedded.contacts[0].custom_fields_values).toBeNull();
    expect(body._embedded.contacts[0]._embedded.leads).toBeUndefined();
  });

  it('paginates with _links.next, 204 past the end, 422 for limit above 250', async () => {
    const { api } = await start();
    const first = (await (await api('/api/v4/contacts?query=school&limit=2')).json()) as any;
    expect(first._embedded.contacts.map((c: any) => c.id)).toEqual([1, 2]);
    const next = new URL(first._links.next.href);
    expect(next.searchParams.get('page')).toBe('2');
    const second = (await (await api(next.pathname + next.search)).json()) as any;
    expect(second._embedded.contacts.map((c: any) => c.id)).toEqual([3, 4]);
    expect(second._links.next).toBeUndefined();
    expect((await api('/api/v4/contacts?query=school&limit=2&page=3')).status).toBe(204);
    const tooBig = await api('/api/v4/contacts?query=school&limit=251');
    expect(tooBig.status).toBe(422);
    expect(tooBig.headers.get('content-type')).toBe('application/problem+json');
  });
});

describe('contacts search with many matches', () => {
  it('pages 231 matches 50 at a time by default, 250 with limit=250; the exact address is on page 5', async () => {
    const { amo, api } = await start({ ratePerSecond: 1000 });
    for (let i = 0; i < 230; i++) amo.addContact({ id: 1000 + i, name: `Namesake ${i}`, emails: [`x${i}.many@school.ru`], leadIds: [] });
    amo.addContact({ id: 5000, name: 'The student', emails: ['many@school.ru'], leadIds: [11] });
    const query = '/api/v4/contacts?query=many%40school.ru&with=leads';

    const pages = await allPages(api, query, 'contacts');
    expect(pages.map((p) => p.length)).toEqual([50, 50, 50, 50, 31]);
    const ids = pages.flat().map((c) => c.id);
    expect(new Set(ids).size).toBe(231);
    expect(pages[4]!.map((c) => c.id)).toContain(5000);
    expect(pages[4]!.find((c) => c.id === 5000)._embedded.leads.map((l: any) => l.id)).toEqual([11]); // with=leads kept on page 5
    // A reader that stops after 4 pages of 50 never sees the student.
    expect(pages.slice(0, 4).flat().map((c) => c.id)).not.toContain(5000);

    const first = (await (await api(query)).json()) as any;
    const next = new URL(first._links.next.href);
    expect(Object.fromEntries(next.searchParams)).toMatchObject({ query: 'many@school.ru', with: 'leads', page: '2', limit: '50' });

    const wide = await allPages(api, `${query}&limit=250`, 'contacts');
    expect(wide.map((p) => p.length)).toEqual([231]);
    expect((await api(`${query}&limit=250&page=2`)).status).toBe(204);
  });
});

describe('auth and tokens', () => {
  it('401 for missing and unknown tokens, records the verdict but never the token', async () => {
    const { amo, api, tokens } = await start();
    const missing = await api('/api/v4/account', {}, null);
    expect(missing.status).toBe(401);
    const body = (await missing.json()) as any;
    expect(body).toMatchObject({ title: 'Unauthorized', status: 401, type: 'https://httpstatus.es/401' });
    expect((await api('/api/v4/account', {}, 'standin-at-unknown')).status).toBe(401);
    const ok = await api('/api/v4/account');
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ id: expect.any(Number), subdomain: 'standin', country: 'RU', currency: 'RUB', current_user_id: expect.any(Number) });
    expect(amo.requests.map((r) => [r.status, r.auth])).toEqual([
      [401, 'missing'],
      [401, 'invalid'],
      [200, 'ok'],
    ]);
    expect(amo.counts().unauthorized).toBe(2);
    expect(JSON.stringify(amo.requests)).not.toContain(tokens.access_token);
  });

  it('issues obviously fake opaque tokens', async () => {
    const { tokens } = await start();
    expect(tokens.access_token).toMatch(/^standin-at-[0-9a-f]+$/);
    expect(tokens.refresh_token).toMatch(/^standin-rt-[0-9a-f]+$/);
    expect(tokens.expires_in).toBe(86400);
  });

  it('rotates refresh tokens: single use, second use 401 Token has been revoked', async () => {
    const { amo, api, tokens, refresh } = await start();
    const first = await refresh(tokens.refresh_token);
    expect(first.status).toBe(200);
    const pair = (await first.json()) as any;
    expect(pair).toMatchObject({ token_type: 'Bearer', expires_in: 86400 });
    expect(pair.access_token).not.toBe(tokens.access_token);
    expect(pair.refresh_token).not.toBe(tokens.refresh_token);

    const again = await refresh(tokens.refresh_token);
    expect(again.status).toBe(401);
    expect(await again.json()).toEqual({
      hint: 'Token has been revoked',
      title: 'Некорректный запрос',
      status: 401,
      type: 'https://developers.amocrm.ru/v3/errors/OAuthProblemJson',
      detail: 'В запросе отсутствует ряд параметров или параметры невалидны',
    });

    expect((await api('/api/v4/account', {}, pair.access_token)).status).toBe(200);
    expect((await api('/api/v4/account')).status).toBe(200); // old access token lives until its own expiry
    expect((await api('/api/v4/account', {}, `${pair.access_token}x`)).status).toBe(401);
    expect(amo.counts().refreshes).toBe(1);
  });

  it('checks client credentials and redirect_uri; auth codes are single use', async () => {
    const { amo, oauth } = await start();
    const code = amo.issueAuthCode();
    const badSecret = await oauth({ ...CLIENT, client_secret: 'nope', grant_type: 'authorization_code', code });
    expect(badSecret.status).toBe(401);
    expect(((await badSecret.json()) as any).hint).toBe('Client authentication failed');
    const badRedirect = await oauth({ ...CLIENT, redirect_uri: 'https://evil.test/', grant_type: 'authorization_code', code });
    expect(badRedirect.status).toBe(400);
    expect(((await badRedirect.json()) as any).hint).toEqual(expect.any(String));

    const ok = await oauth({ ...CLIENT, grant_type: 'authorization_code', code });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ token_type: 'Bearer', access_token: expect.stringMatching(/^standin-at-/) });
    const reused = await oauth({ ...CLIENT, grant_type: 'authorization_code', code });
    expect(reused.status).toBe(400);
    expect(((await reused.json()) as any).hint).toBe('Authorization code has been revoked');
  });

  it('expireAccessTokens and revokeRefreshTokens take effect immediately', async () => {
    const { amo, api, tokens, refresh } = await start();
    amo.expireAccessTokens();
    expect((await api('/api/v4/account')).status).toBe(401);
    amo.revokeRefreshTokens();
    const res = await refresh(tokens.refresh_token);
    expect(res.status).toBe(401);
    expect(((await res.json()) as any).hint).toBe('Token has been revoked');
  });

  it('long-lived tokens are JWT-shaped with exp, accepted until exp', async () => {
    const { api, amo } = await start();
    const token = amo.issueLongLivedToken(3600);
    expect(token.startsWith('eyJ')).toBe(false);
    const parts = token.split('.');
    expect(parts).toHaveLength(3);
    const payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    expect(payload.exp).toBeGreaterThan(Date.now() / 1000 + 3500);
    expect((await api('/api/v4/account', {}, token)).status).toBe(200);
    expect((await api('/api/v4/account', {}, amo.issueLongLivedToken(-1))).status).toBe(401);
  });
});

describe('rate limit and blocking', () => {
  it('lets exactly 7 of 20 requests within one second through, the rest get 429 with retry_after', async () => {
    const clock = manualClock();
    const { amo, api } = await start({ now: clock.now });
    const responses = await Promise.all(Array.from({ length: 20 }, () => api('/api/v4/account')));
    const statuses = responses.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(7);
    expect(statuses.filter((s) => s === 429)).toHaveLength(13);
    const limited = responses.find((r) => r.status === 429)!;
    expect(limited.headers.get('retry-after')).toBe('1');
    expect(await limited.json()).toMatchObject({ title: 'Too Many Requests', type: 'https://httpstatus.es/429', status: 429, retry_after: 1 });
    expect(amo.counts().tooMany).toBe(13);
    clock.advance(1000);
    expect((await api('/api/v4/account')).status).toBe(200);
  });

  it('slides: a place frees exactly when the request holding it is a second old', async () => {
    const clock = manualClock();
    const { api } = await start({ now: clock.now, ratePerSecond: 2 });
    expect((await api('/api/v4/account')).status).toBe(200);
    clock.advance(500);
    expect((await api('/api/v4/account')).status).toBe(200);
    clock.advance(499);
    expect((await api('/api/v4/account')).status).toBe(429); // the first is 999 ms old
    clock.advance(1);
    expect((await api('/api/v4/account')).status).toBe(200); // …now it is out of the window
    expect((await api('/api/v4/account')).status).toBe(429); // a rejected request took no place
  });

  it('counts /oauth2 requests in the same window', async () => {
    const clock = manualClock();
    const { api, refresh } = await start({ now: clock.now, ratePerSecond: 2 });
    expect((await api('/api/v4/account')).status).toBe(200);
    expect((await refresh('standin-rt-unknown')).status).toBe(401);
    expect((await refresh('standin-rt-unknown')).status).toBe(429);
    expect((await api('/api/v4/account')).status).toBe(429);
  });

  it('blocks with 403 everywhere after N violations, until reset()', async () => {
    const clock = manualClock();
    const { amo, api } = await start({ now: clock.now, ratePerSecond: 2, blockAfterViolations: 3 });
    const statuses = (await Promise.all(Array.from({ length: 5 }, () => api('/api/v4/account')))).map((r) => r.status);
    expect(statuses.filter((s) => s === 429)).toHaveLength(3);
    clock.advance(1000); // the rate window is clear again, the block is not
    const blocked = await api('/api/v4/account');
    expect(blocked.status).toBe(403);
    expect(blocked.headers.get('content-type')).toMatch(/^text\/html/);
    expect(await blocked.text()).toContain('403');
    expect((await fetch(`${amo.url}/anything`)).status).toBe(403);
    expect((await fetch(`${amo.url}/oauth2/access_token`, { method: 'POST' })).status).toBe(403);
    amo.reset();
    expect((await api('/api/v4/account')).status).toBe(200);
  });

  it('does not block when blockAfterViolations is 0, under traffic that blocks when it is set', async () => {
    const storm = async (blockAfterViolations?: number) => {
      const clock = manualClock();
      const { amo, api } = await start({ now: clock.now, ratePerSecond: 1, ...(blockAfterViolations === undefined ? {} : { blockAfterViolations }) });
      const statuses = (await Promise.all(Array.from({ length: 10 }, () => api('/api/v4/account')))).map((r) => r.status);
      clock.advance(1000);
      return { statuses, after: (await api('/api/v4/account')).status, tooMany: amo.counts().tooMany };
    };
    const unblocked = await storm(0);
    expect(unblocked.tooMany).toBe(9);
    expect(unblocked.statuses.filter((s) => s === 429)).toHaveLength(9);
    expect(unblocked.statuses).not.toContain(403);
    expect(unblocked.after).toBe(200);
    expect((await storm()).after).toBe(200); // 0 is also the default
    expect((await storm(3)).after).toBe(403); // the same storm blocks when blocking is on
  });

  it('forgets violations older than 60 s', async () => {
    const clock = manualClock();
    const { api } = await start({ now: clock.now, ratePerSecond: 1, blockAfterViolations: 3 });
    const twoViolations = async () => {
      const statuses = (await Promise.all(Array.from({ length: 3 }, () => api('/api/v4/account')))).map((r) => r.status);
      expect(statuses.filter((s) => s === 429)).toHaveLength(2);
    };
    await twoViolations();
    clock.advance(60_001);
    await twoViolations(); // 4 in all, but only 2 within the last 60 s
    clock.advance(1000);
    expect((await api('/api/v4/account')).status).toBe(200);
    expect((await api('/api/v4/account')).status).toBe(429); // the third within 60 s
    clock.advance(1000);
    expect((await api('/api/v4/account')).status).toBe(403);
  });
});

describe('leads', () => {
  it('supports the filter[id] forms, skips deleted leads, 204 when none', async () => {
    const { api } = await start({ ratePerSecond: 100 });
    const ids = async (q: string) => {
      const res = await api(`/api/v4/leads?${q}`);
      return res.status === 204 ? 204 : ((await res.json()) as any)._embedded.leads.map((l: any) => l.id);
    };
    expect(await ids('filter[id][]=11&filter[id][]=12')).toEqual([11, 12]);
    expect(await ids('filter[id]=14')).toEqual([14]);
    expect(await ids('filter%5Bid%5D%5B0%5D=11&filter%5Bid%5D%5B1%5D=14')).toEqual([11, 14]);
    expect(await ids('filter[id][]=13')).toBe(204);
    const empty = await api('/api/v4/leads?filter[id][]=999');
    expect(empty.status).toBe(204);
    expect(await empty.text()).toBe('');

    const body = (await (await api('/api/v4/leads?filter[id][]=11&filter[id][]=12')).json()) as any;
    const [open11, won12] = body._embedded.leads;
    expect(open11).toMatchObject({ id: 11, price: 0, status_id: 101, pipeline_id: TRIPWIRE, closed_at: null, is_deleted: false, updated_at: 1_700_000_000 });
    expect(won12).toMatchObject({ id: 12, status_id: 142, closed_at: 1_700_000_000 });
  });

  it('answers 50 leads per page by default: a read of 60 ids without paging misses 10', async () => {
    const { amo, api } = await start({ ratePerSecond: 1000 });
    const ids = Array.from({ length: 60 }, (_, i) => 2000 + i);
    for (const id of ids) amo.addLead({ id, name: `Deal ${id}`, pipelineId: TRIPWIRE, statusId: 101, updatedAt: 1_700_000_000 });
    const query = `/api/v4/leads?${ids.map((id) => `filter[id][]=${id}`).join('&')}`;
    const first = (await (await api(query)).json()) as any;
    expect(first._embedded.leads).toHaveLength(50);
    expect(first._page).toBe(1);
    expect(first._links.next.href).toMatch(/[?&]page=2(&|$)/);
    const pages = await allPages(api, query, 'leads');
    expect(pages.map((p) => p.length)).toEqual([50, 10]);
    expect(pages.flat().map((l) => l.id)).toEqual(ids);
  });

  it('reads 251 ids as 250 + 1 with limit=250, and 422 above 250', async () => {
    const { amo, api } = await start({ ratePerSecond: 1000 });
    const ids = Array.from({ length: 251 }, (_, i) => 3000 + i);
    for (const id of ids) amo.addLead({ id, name: `Deal ${id}`, pipelineId: TRIPWIRE, statusId: 101, updatedAt: 1_700_000_000 });
    amo.addLead({ id: 9999, name: 'Not asked for', pipelineId: TRIPWIRE, statusId: 101, updatedAt: 1_700_000_000 });
    const filter = ids.map((id) => `filter[id][]=${id}`).join('&');

    const pages = await allPages(api, `/api/v4/leads?${filter}&limit=250`, 'leads');
    expect(pages.map((p) => p.length)).toEqual([250, 1]);
    expect(pages.flat().map((l) => l.id)).toEqual(ids);
    expect((await api(`/api/v4/leads?${filter}&limit=250&page=3`)).status).toBe(204);

    const unpaged = (await (await api(`/api/v4/leads?${filter}&limit=250`)).json()) as any;
    expect(unpaged._embedded.leads.map((l: any) => l.id)).not.toContain(ids[250]); // one page alone misses the last

    const tooBig = await api(`/api/v4/leads?${filter}&limit=251`);
    expect(tooBig.status).toBe(422);
    expect(tooBig.headers.get('content-type')).toBe('application/problem+json');
    expect((await api(`/api/v4/leads?${filter}&limit=0`)).status).toBe(400);
  });

  it('GET /leads/:id answers the lead, and 204 for unknown or deleted ones', async () => {
    const { api } = await start();
    expect(await (await api('/api/v4/leads/11')).json()).toMatchObject({ id: 11, status_id: 101 });
    const unknown = await api('/api/v4/leads/999');
    expect(unknown.status).toBe(204);
    expect(await unknown.text()).toBe('');
    expect((await api('/api/v4/leads/13')).status).toBe(204);
  });

  it('PATCH to a stage of another pipeline is a 400 validation error and changes nothing', async () => {
    const { amo, api } = await start();
    const before = amo.lead(11);
    const res = await api('/api/v4/leads/11', { method: 'PATCH', body: JSON.stringify({ pipeline_id: TRIPWIRE, status_id: 201 }) });
    expect(res.status).toBe(400);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    const body = (await res.json()) as any;
    expect(body).toMatchObject({ title: 'Bad Request', status: 400, type: 'https://httpstatus.es/400' });
    expect(body['validation-errors']).toEqual([
      { request_id: '0', errors: [{ code: 'NotSupportedChoice', path: 'status_id', detail: expect.any(String) }] },
    ]);
    expect(amo.lead(11)).toEqual(before);
    expect(amo.counts().patches).toBe(0);
  });

  it('PATCH moves the lead, sets updated_at and closed_at for 142', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/leads/11', { method: 'PATCH', body: JSON.stringify({ pipeline_id: TRIPWIRE, status_id: 102 }) });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body).toMatchObject({ id: 11, updated_at: expect.any(Number), _links: { self: { href: expect.stringMatching(/\/api\/v4\/leads\/11$/) } } });
    expect(body.updated_at).toBeGreaterThan(1_700_000_000);
    expect(amo.lead(11)).toMatchObject({ statusId: 102, pipelineId: TRIPWIRE, updatedAt: body.updated_at });

    expect((await api('/api/v4/leads/11', { method: 'PATCH', body: JSON.stringify({ status_id: 142 }) })).status).toBe(200);
    expect(((await (await api('/api/v4/leads/11')).json()) as any).closed_at).toEqual(expect.any(Number));

    // Changing pipeline together with its stage works.
    expect((await api('/api/v4/leads/14', { method: 'PATCH', body: JSON.stringify({ pipeline_id: OTHER, status_id: 201 }) })).status).toBe(200);
    expect(amo.lead(14)).toMatchObject({ pipelineId: OTHER, statusId: 201 });
    expect(amo.counts().patches).toBe(3);
  });

  it('PATCH: unknown lead 404, empty or invalid body 400', async () => {
    const { api } = await start();
    const missing = await api('/api/v4/leads/999', { method: 'PATCH', body: JSON.stringify({ status_id: 101 }) });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ status: 404, title: 'Not Found' });
    const empty = await api('/api/v4/leads/11', { method: 'PATCH', body: '{}' });
    expect(empty.status).toBe(400);
    expect(((await empty.json()) as any).detail).toBe('Request data can not be empty');
    const broken = await api('/api/v4/leads/11', { method: 'PATCH', body: '{"status_id":' });
    expect(broken.status).toBe(400);
  });

  it('batch PATCH applies all items and echoes request_id', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/leads', {
      method: 'PATCH',
      body: JSON.stringify([
        { id: 11, pipeline_id: TRIPWIRE, status_id: 102 },
        { id: 14, pipeline_id: TRIPWIRE, status_id: 143, request_id: 'evt-42' },
      ]),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as any;
    expect(body._embedded.leads.map((l: any) => [l.id, l.request_id])).toEqual([
      [11, undefined],
      [14, 'evt-42'],
    ]);
    expect(amo.lead(11)?.statusId).toBe(102);
    expect(amo.lead(14)?.statusId).toBe(143);
  });

  it('batch PATCH with one invalid item is a 400 naming it, and applies nothing', async () => {
    const { amo, api } = await start();
    const res = await api('/api/v4/leads', {
      method: 'PATCH',
      body: JSON.stringify([
        { id: 11, pipeline_id: TRIPWIRE, status_id: 102 },
        { id: 14, pipeline_id: TRIPWIRE, status_id: 201 },
        { id: 11, pipeline_id: TRIPWIRE, status_id: 999, request_id: 'evt-7' },
      ]),
    });
    expect(res.status).toBe(400);
    const errors = ((await res.json()) as any)['validation-errors'];
    expect(errors.map((e: any) => [e.request_id, e.errors[0].path, e.errors[0].code])).toEqual([
      ['1', 'status_id', 'NotSupportedChoice'],
      ['evt-7', 'status_id', 'NotSupportedChoice'],
    ]);
    expect(amo.lead(11)?.statusId).toBe(101);
    expect(amo.lead(14)?.statusId).toBe(102);

    const tooMany = Array.from({ length: 251 }, () => ({ id: 11, status_id: 102 }));
    expect((await api('/api/v4/leads', { method: 'PATCH', body: JSON.stringify(tooMany) })).status).toBe(400);
    expect(amo.lead(11)?.statusId).toBe(101);
  });

  it('setLeadStatus moves a deal by hand, across pipelines when the stage belongs elsewhere', async () => {
    const { amo } = await start();
    amo.setLeadStatus(11, 102);
    expect(amo.lead(11)).toMatchObject({ pipelineId: TRIPWIRE, statusId: 102 });
    amo.setLeadStatus(11, 201);
    expect(amo.lead(11)).toMatchObject({ pipelineId: OTHER, statusId: 201 });
  });
});

describe('pipelines', () => {
  it('lists pipelines with the system stages 142 and 143', async () => {
    const { api } = await start();
    const body = (await (await api('/api/v4/leads/pipelines')).json()) as any;
    const pipelines = body._embedded.pipelines as any[];
    expect(pipelines.map((p) => [p.id, p.is_main, p.is_archive])).toEqual([
      [TRIPWIRE, true, false],
      [OTHER, false, false],
    ]);
    const statuses = pipelines[0]._embedded.statuses as any[];
    expect(statuses.map((s) => s.id)).toEqual([100, 101, 102, 142, 143]);
    expect(statuses.find((s) => s.id === 142)).toMatchObject({ name: 'Успешно реализовано', sort: 10000, is_editable: false, pipeline_id: TRIPWIRE });
    expect(statuses.find((s) => s.id === 143)).toMatchObject({ name: 'Закрыто и не реализовано', sort: 11000, is_editable: false });
    expect(statuses.find((s) => s.id === 100)).toMatchObject({ type: 1, is_editable: false });
    expect(statuses.find((s) => s.id === 101)).toMatchObject({ type: 0, is_editable: true });
  });

  it('GET /pipelines/:id answers one pipeline or 404', async () => {
    const { api } = await start();
    expect(((await (await api(`/api/v4/leads/pipelines/${OTHER}`)).json()) as any).name).toBe('Other');
    const missing = await api('/api/v4/leads/pipelines/1');
    expect(missing.status).toBe(404);
    expect(missing.headers.get('content-type')).toBe('application/problem+json');
  });
});

describe('faults, routing and bookkeeping', () => {
  it("inject 'after' on refresh rotates the tokens although 502 is answered", async () => {
    const { amo, api, tokens, refresh } = await start();
    amo.inject('POST /oauth2/access_token', { kind: 'after', status: 502 });
    const lost = await refresh(tokens.refresh_token);
    expect(lost.status).toBe(502);
    const retry = await refresh(tokens.refresh_token); // the old one died with the lost response
    expect(retry.status).toBe(401);
    expect(((await retry.json()) as any).hint).toBe('Token has been revoked');
    expect(amo.counts().refreshes).toBe(1);
    expect((await api('/api/v4/account')).status).toBe(200);
  });

  it('status faults apply to the next N matching requests only, by route pattern', async () => {
    const { amo, api } = await start();
    amo.inject('GET /api/v4/leads/:id', { status: 503, body: '<html>down</html>', headers: { 'x-fault': 'yes' } }, 2);
    expect((await api('/api/v4/account')).status).toBe(200);
    const first = await api('/api/v4/leads/11');
    expect(first.status).toBe(503);
    expect(first.headers.get('x-fault')).toBe('yes');
    expect(await first.text()).toBe('<html>down</html>');
    expect((await api('/api/v4/leads/14')).status).toBe(503);
    expect((await api('/api/v4/leads/14')).status).toBe(200);
    expect(amo.counts().byRoute['GET /api/v4/leads/:id']).toBe(3);

    amo.inject('*', { status: 500 });
    const generic = await api('/api/v4/leads/pipelines');
    expect(generic.status).toBe(500);
    expect(await generic.json()).toMatchObject({ status: 500, type: 'https://httpstatus.es/500' });
    amo.inject('*', { status: 500 }, 5);
    amo.clearFaults();
    expect((await api('/api/v4/account')).status).toBe(200);
  });

  it("'reset' destroys the socket without an answer", async () => {
    const { amo, api } = await start();
    amo.inject('GET /api/v4/account', { kind: 'reset' });
    await expect(api('/api/v4/account')).rejects.toThrow();
    expect((await api('/api/v4/account')).status).toBe(200);
    expect(amo.requests.map((r) => r.status)).toEqual([0, 200]);
  });

  it("'timeout' holds the request, and close() still completes promptly", async () => {
    const { amo, api } = await start();
    amo.inject('GET /api/v4/contacts', { kind: 'timeout' });
    let outcome = 'pending';
    const settled = api('/api/v4/contacts?query=anna').then(
      () => (outcome = 'answered'),
      () => (outcome = 'failed'),
    );
    await until(() => amo.requests.length === 1, 'the stand-in to receive the request');
    for (let i = 0; i < 20; i++) await ioTurn();
    expect(outcome).toBe('pending');
    expect(amo.requests[0]!.status).toBe(0); // never answered
    // close() drops the held socket instead of waiting out the 60 s hold (the test's timeout is far shorter).
    await amo.close();
    await settled;
    expect(outcome).toBe('failed');
  }, 15_000);

  it('unknown endpoints are 404 problem+json, oversized bodies 413', async () => {
    const { amo, api } = await start({ ratePerSecond: 100 });
    const res = await api('/api/v4/companies');
    expect(res.status).toBe(404);
    expect(res.headers.get('content-type')).toBe('application/problem+json');
    expect(await res.json()).toMatchObject({ title: 'Not Found', status: 404, type: 'https://httpstatus.es/404', detail: expect.any(String) });
    expect((await api('/api/v4/leads/11', { method: 'DELETE' })).status).toBe(404);
    // Endpoints nothing in the sync calls are not served.
    expect((await api('/api/v4/contacts/1')).status).toBe(404);
    expect((await api('/api/v4/leads/11/links', { method: 'POST', body: JSON.stringify([{ to_entity_id: 1 }]) })).status).toBe(404);
    expect((await api(`/api/v4/leads/pipelines/${TRIPWIRE}/statuses`)).status).toBe(404);
    const big = await api('/api/v4/leads', { method: 'PATCH', body: JSON.stringify([{ id: 11, name: 'x'.repeat(1_100_000) }]) });
    expect(big.status).toBe(413);
    expect(amo.lead(11)?.name).toBe('Deal 11');
  });

  it('records every request with path, query and route counts; resetCounts clears them', async () => {
    const { amo, api } = await start();
    await api('/api/v4/leads/11');
    await api('/api/v4/leads/14');
    await api('/api/v4/contacts?query=boris');
    expect(amo.requests.map((r) => [r.method, r.path, r.query, r.status])).toEqual([
      ['GET', '/api/v4/leads/11', '', 200],
      ['GET', '/api/v4/leads/14', '', 200],
      ['GET', '/api/v4/contacts', 'query=boris', 200],
    ]);
    expect(amo.counts()).toMatchObject({ total: 3, byRoute: { 'GET /api/v4/leads/:id': 2, 'GET /api/v4/contacts': 1 }, tooMany: 0 });
    amo.resetCounts();
    expect(amo.counts().total).toBe(0);
    expect(amo.requests).toHaveLength(0);
  });

  it('holds each answer for the latency range before sending it', async () => {
    const { amo, api } = await start();
    amo.setLatency([120, 150]);
    // Only the stand-in's hold uses setTimeout here; faking it lets the test say when time passes.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      let answered = false;
      const response = api('/api/v4/account').then((r) => {
        answered = true;
        return r;
      });
      await until(() => amo.requests[0]?.status === 200, 'the stand-in to decide its answer');
      for (let i = 0; i < 20; i++) await ioTurn();
      expect(answered).toBe(false);
      vi.advanceTimersByTime(119);
      for (let i = 0; i < 20; i++) await ioTurn();
      expect(answered).toBe(false); // still inside the 120 ms minimum
      vi.advanceTimersByTime(31);
      expect((await response).status).toBe(200);
    } finally {
      vi.useRealTimers();
    }
  });

  it('binds 127.0.0.1', async () => {
    const { amo } = await start();
    expect(amo.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
  });
});
