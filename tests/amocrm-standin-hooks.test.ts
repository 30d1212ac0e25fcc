// The stand-in's amoCRM → platform side: account webhooks (/api/v4/webhooks), their form-encoded
// deliveries to a real HTTP receiver with amoCRM's timeout, retry and disable rules (the clock
// moved by hand), the manager calls, and the events feed (/api/v4/events).
import http from 'node:http';
import type { AddressInfo } from 'node:net';

import qs from 'qs';
import { afterEach, describe, expect, it } from 'vitest';

import { startAmoStandin, STANDIN_ACCOUNT, STANDIN_USERS, type AmoStandin, type StandinOptions } from '../dev/amocrm-standin/index.ts';

const TRIPWIRE = 7777;
const OTHER = 8888;
const T0 = 1_750_000_000_000; // the stand-in's clock at the start of every test (ms)
const SEEDED = 1_700_000_000; // when the seeded leads were created (s)
const MINUTE = 60_000;

interface Received { path: string; headers: http.IncomingHttpHeaders; body: string }
type Answer = number | 'hold';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A real HTTP server standing in for the platform's endpoint: records every request, answers as told. */
async function startReceiver() {
  const got: Received[] = [];
  let answer: (r: Received) => Answer = () => 200;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      got.push(r);
      const a = answer(r);
      if (a !== 'hold') res.writeHead(a).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return {
    url,
    got,
    answer(fn: (r: Received) => Answer) {
      answer = fn;
    },
    /** Decoded key/value pairs of the n-th request's body, in order. */
    pairs: (n: number) => [...new URLSearchParams(got[n]!.body)],
  };
}

function manualClock() {
  let t = T0;
  return { now: () => t, advance: (ms: number) => void (t += ms) };
}

async function start(options: StandinOptions = {}) {
  const clock = manualClock();
  // The clock only moves by hand, so amoCRM's 7 requests per second would count a whole test as one second.
  const amo: AmoStandin = await startAmoStandin({ now: clock.now, ratePerSecond: 1000, ...options });
  cleanups.push(() => amo.close());
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
  amo.addLead({ id: 11, name: 'Deal 11', pipelineId: TRIPWIRE, statusId: 101, updatedAt: SEEDED });
  amo.addLead({ id: 12, name: 'Deal 12', pipelineId: TRIPWIRE, statusId: 101, updatedAt: SEEDED });
  amo.addLead({ id: 14, name: 'Deal 14', pipelineId: TRIPWIRE, statusId: 102, updatedAt: SEEDED });
  const { access_token } = amo.issueTokens();
  const api = (path: string, init: RequestInit = {}, token: string | null = access_token) =>
    fetch(`${amo.url}${path}`, {
      ...init,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(init.body ? { 'content-type': 'application/json' } : {}),
      },
    });
  const json = (method: string, path: string, body: unknown) => api(path, { method, body: JSON.stringify(body) });
  return { amo, clock, api, json };
}

/** A stand-in with one hook to a fresh receiver. */
async function withHook(settings: string[], options: StandinOptions = {}) {
  const s = await start(options);
  const rx = await startReceiver();
  const destination = `${rx.url}/api/amocrm/crm-events/s3cret`;
  s.amo.subscribe(destination, settings);
  return { ...s, rx, destination };
}

const attemptsOf = (amo: AmoStandin) => amo.hookAttempts.map((a) => ({ attempt: a.attempt, at: a.at - T0, status: a.status }));

describe('webhook subscriptions over /api/v4/webhooks', () => {
  it('POST creates, GET lists with disabled, POST again updates the same hook, DELETE {destination} removes it', async () => {
    const { json, api, clock } = await start();
    const destination = 'https://platform.example/api/amocrm/crm-events/abc';
    const created = await json('POST', '/api/v4/webhooks', { destination, settings: ['status_lead', 'update_lead'] });
    expect(created.status).toBe(200);
    const hook = (await created.json()) as any;
    expect(hook).toEqual({
      id: hook.id, destination, created_by: STANDIN_USERS.api, created_at: T0 / 1000, updated_at: T0 / 1000,
      sort: 1, disabled: false, settings: ['status_lead', 'update_lead'], account_id: STANDIN_ACCOUNT.id,
    });

    clock.advance(60_000);
    const updated = (await (await json('POST', '/api/v4/webhooks', { destination, settings: ['status_lead', 'delete_lead'] })).json()) as any;
    expect([updated.id, updated.settings, updated.updated_at]).toEqual([hook.id, ['status_lead', 'delete_lead'], T0 / 1000 + 60]);
    await json('POST', '/api/v4/webhooks', { destination: 'https://other.example/hook', settings: ['add_lead'] });

    const listed = await api('/api/v4/webhooks');
    expect(listed.status).toBe(200);
    const body = (await listed.json()) as any;
    expect(body._total_items).toBe(2);
    expect(body._embedded.webhooks.map((w: any) => [w.destination, w.disabled, w.settings])).toEqual([
      [destination, false, ['status_lead', 'delete_lead']],
      ['https://other.example/hook', false, ['add_lead']],
    ]);
    const filtered = (await (await api(`/api/v4/webhooks?filter[destination]=${encodeURIComponent(destination)}`)).json()) as any;
    expect(filtered._embedded.webhooks.map((w: any) => w.id)).toEqual([hook.id]);

    const deleted = await json('DELETE', '/api/v4/webhooks', { destination });
    expect([deleted.status, await deleted.text()]).toEqual([204, '']);
    expect((await json('DELETE', '/api/v4/webhooks', { destination })).status).toBe(404);
    await json('DELETE', '/api/v4/webhooks', { destination: 'https://other.example/hook' });
    expect((await api('/api/v4/webhooks')).status).toBe(204);
  });

  it('refuses bad subscriptions with a 400 naming the field', async () => {
    const { json, api } = await start();
    const cases: [unknown, string][] = [
      [{ destination: 'not a url', settings: ['status_lead'] }, 'destination'],
      [{ destination: 'ftp://x.example/h', settings: ['status_lead'] }, 'destination'],
      [{ destination: 'https://x.example/h', settings: [] }, 'settings'],
      [{ destination: 'https://x.example/h', settings: 'status_lead' }, 'settings'],
      [{ destination: 'https://x.example/h', settings: ['status_lead', 'lead_won'] }, 'settings.1'],
      [{ destination: 'https://x.example/h', settings: ['status_lead'], sort: 'first' }, 'sort'],
      [{ settings: ['status_lead'] }, 'destination'],
    ];
    for (const [body, path] of cases) {
      const res = await json('POST', '/api/v4/webhooks', body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      const problem = (await res.json()) as any;
      expect(problem['validation-errors'][0].errors[0].path).toBe(path);
    }
    const notJson = await api('/api/v4/webhooks', { method: 'POST', body: 'destination=x' });
    expect(notJson.status).toBe(400);
    expect((await json('DELETE', '/api/v4/webhooks', { url: 'https://x.example/h' })).status).toBe(400);
    expect((await api('/api/v4/webhooks')).status).toBe(204); // nothing was created
  });

  it('allows at most 100 hooks per account', async () => {
    const { amo, json } = await start();
    for (let i = 0; i < 100; i++) amo.subscribe(`https://x.example/h${i}`, ['status_lead']);
    const res = await json('POST', '/api/v4/webhooks', { destination: 'https://x.example/one-more', settings: ['status_lead'] });
    expect(res.status).toBe(400);
    expect(((await res.json()) as any)['validation-errors'][0].errors[0].code).toBe('LimitExceeded');
    expect(() => amo.subscribe('https://x.example/one-more', ['status_lead'])).toThrow(/at most 100/);
    expect((await json('POST', '/api/v4/webhooks', { destination: 'https://x.example/h7', settings: ['update_lead'] })).status).toBe(200); // updating is fine
    expect(amo.webhooks()).toHaveLength(100);
  });

  it('needs a token (401) and an admin (403), and counts in the rate limit', async () => {
    const { amo, api } = await start({ ratePerSecond: 3 });
    expect((await api('/api/v4/webhooks', {}, null)).status).toBe(401);
    amo.setAdminRights(false);
    const forbidden = await api('/api/v4/webhooks');
    expect(forbidden.status).toBe(403);
    expect(((await forbidden.json()) as any).detail).toMatch(/administrator/);
    amo.setAdminRights(true);
    expect((await api('/api/v4/webhooks')).status).toBe(204);
    expect((await api('/api/v4/webhooks')).status).toBe(429); // 3 requests already in this second
  });
});

describe('deliveries', () => {
  it('a manager marking a deal won sends status_lead as amoCRM does: form body, headers, old v2 names', async () => {
    const { amo, rx, destination } = await withHook(['status_lead']);
    const won = amo.managerWin(11);
    expect(won).toMatchObject({ statusId: 142, pipelineId: TRIPWIRE, updatedBy: STANDIN_USERS.manager });
    await amo.hooksSettled();

    expect(rx.got).toHaveLength(1);
    const [req] = rx.got;
    expect(req!.path).toBe(new URL(destination).pathname);
    expect(req!.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(req!.headers['user-agent']).toBe('amoCRM-Webhooks/3.0');
    expect(req!.headers['x-amocrm-requestid']).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(req!.body).toBe(
      'leads%5Bstatus%5D%5B0%5D%5Bid%5D=11&leads%5Bstatus%5D%5B0%5D%5Bname%5D=Deal+11' +
        '&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142&leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=101' +
        '&leads%5Bstatus%5D%5B0%5D%5Bprice%5D=0&leads%5Bstatus%5D%5B0%5D%5Bresponsible_user_id%5D=123' +
        '&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=1750000000&leads%5Bstatus%5D%5B0%5D%5Bmodified_user_id%5D=504141' +
        '&leads%5Bstatus%5D%5B0%5D%5Bcreated_user_id%5D=123&leads%5Bstatus%5D%5B0%5D%5Bdate_create%5D=1700000000' +
        '&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=7777&leads%5Bstatus%5D%5B0%5D%5Bold_pipeline_id%5D=7777' +
        '&leads%5Bstatus%5D%5B0%5D%5Baccount_id%5D=31234567&leads%5Bstatus%5D%5B0%5D%5Bcreated_at%5D=1700000000' +
        '&leads%5Bstatus%5D%5B0%5D%5Bupdated_at%5D=1750000000' +
        '&account%5Bsubdomain%5D=standin&account%5Bid%5D=31234567&account%5B_links%5D%5Bself%5D=https%3A%2F%2Fstandin.amocrm.ru',
    );
    expect(amo.hookAttempts).toMatchObject([{ attempt: 1, action: 'status', leadIds: [11], status: 200, ok: true, destination }]);
    expect(amo.hookAttempts[0]!.requestId).toBe(req!.headers['x-amocrm-requestid']);
  });

  it('an API move sends update_lead and status_lead, authored by the token user; a change without a stage change only update_lead', async () => {
    const { amo, rx, json } = await withHook(['status_lead', 'update_lead']);
    expect((await json('PATCH', '/api/v4/leads/11', { status_id: 102 })).status).toBe(200);
    await amo.hooksSettled();
    expect(rx.got.map((r) => Object.keys(qs.parse(r.body).leads as object))).toEqual([['update'], ['status']]);
    const update = qs.parse(rx.got[0]!.body) as any;
    expect(update.leads.update[0]).toMatchObject({ id: '11', status_id: '102', pipeline_id: '7777', modified_user_id: '123' });
    expect(update.leads.update[0].old_status_id).toBeUndefined();
    expect((qs.parse(rx.got[1]!.body) as any).leads.status[0]).toMatchObject({ id: '11', status_id: '102', old_status_id: '101', modified_user_id: '123' });

    expect((await json('PATCH', '/api/v4/leads/11', { name: 'Renamed' })).status).toBe(200);
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(3);
    expect((qs.parse(rx.got[2]!.body) as any).leads).toEqual({ update: [expect.objectContaining({ id: '11', name: 'Renamed', status_id: '102' })] });
  });

  it('a batch PATCH of several deals arrives as one delivery per action, leads indexed 0…n-1', async () => {
    const { amo, rx, json } = await withHook(['status_lead']);
    const res = await json('PATCH', '/api/v4/leads', [
      { id: 11, status_id: 102 },
      { id: 12, status_id: 102 },
      { id: 14, pipeline_id: OTHER, status_id: 201 },
    ]);
    expect(res.status).toBe(200);
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(1);
    const status = (qs.parse(rx.got[0]!.body) as any).leads.status as any[];
    expect(status.map((l) => [l.id, l.old_pipeline_id, l.old_status_id, l.pipeline_id, l.status_id])).toEqual([
      ['11', '7777', '101', '7777', '102'],
      ['12', '7777', '101', '7777', '102'],
      ['14', '7777', '102', '8888', '201'],
    ]);
    expect(amo.hookAttempts.map((a) => a.leadIds)).toEqual([[11, 12, 14]]);
  });

  it('custom fields travel as custom_fields[i][values][j][value]; hostile strings survive the encoding', async () => {
    const { amo, rx } = await withHook(['status_lead']);
    const hostile = `a&b=c[0]]%zz +"'<script>` + 'Ёлка\u0000\u202e';
    amo.addLead({
      id: 20, name: `Deal ${hostile}`, pipelineId: TRIPWIRE, statusId: 101, updatedAt: SEEDED, price: 4900,
      customFields: [
        { id: 501, name: 'Тариф', values: [{ value: 'Полный курс', enum: 7001 }] },
        { id: 502, name: 'Notes', values: [{ value: hostile }, { value: 'second' }] },
      ],
    });
    amo.managerMove(20, { statusId: 102 });
    await amo.hooksSettled();
    const pairs = new Map(rx.pairs(0));
    expect(pairs.get('leads[status][0][name]')).toBe(`Deal ${hostile}`);
    expect(pairs.get('leads[status][0][price]')).toBe('4900');
    expect(pairs.get('leads[status][0][custom_fields][0][id]')).toBe('501');
    expect(pairs.get('leads[status][0][custom_fields][0][name]')).toBe('Тариф');
    expect(pairs.get('leads[status][0][custom_fields][0][values][0][value]')).toBe('Полный курс');
    expect(pairs.get('leads[status][0][custom_fields][0][values][0][enum]')).toBe('7001');
    expect(pairs.get('leads[status][0][custom_fields][1][values][0][value]')).toBe(hostile);
    expect(pairs.get('leads[status][0][custom_fields][1][values][1][value]')).toBe('second');
    const parsed = qs.parse(rx.got[0]!.body, { depth: 10 }) as any;
    expect(parsed.leads.status[0].custom_fields[1].values[0].value).toBe(hostile);
  });

  it('add_lead for a new lead, delete_lead with the id only; the hook gets only what it subscribed to', async () => {
    const { amo, rx } = await withHook(['add_lead', 'delete_lead']);
    amo.addLead({ id: 30, name: 'New deal', pipelineId: TRIPWIRE, statusId: 101, updatedAt: SEEDED + 5 });
    amo.addLead({ id: 30, name: 'New deal again', pipelineId: TRIPWIRE, statusId: 101, updatedAt: SEEDED + 6 }); // same id: not new
    await amo.hooksSettled();
    amo.managerMove(30, { statusId: 102 }); // not subscribed
    await amo.hooksSettled();
    const deleted = amo.managerDelete(30);
    expect(deleted.isDeleted).toBe(true);
    await amo.hooksSettled();

    expect(rx.got).toHaveLength(2);
    expect((qs.parse(rx.got[0]!.body) as any).leads.add[0]).toMatchObject({ id: '30', name: 'New deal', status_id: '101', pipeline_id: '7777' });
    expect(rx.pairs(1)).toEqual([
      ['leads[delete][0][id]', '30'],
      ['account[subdomain]', 'standin'],
      ['account[id]', '31234567'],
      ['account[_links][self]', 'https://standin.amocrm.ru'],
    ]);
    expect(() => amo.managerWin(30)).toThrow(/deleted/);
  });

  it("the 'short' status form carries only the ids, as some captures show", async () => {
    const { amo, rx } = await withHook(['status_lead'], { hookForm: 'short' });
    amo.managerLose(11);
    await amo.hooksSettled();
    amo.setHookForm('full');
    amo.managerMove(11, { statusId: 101 });
    await amo.hooksSettled();
    expect(rx.pairs(0)).toEqual([
      ['leads[status][0][id]', '11'],
      ['leads[status][0][status_id]', '143'],
      ['leads[status][0][pipeline_id]', '7777'],
      ['leads[status][0][old_status_id]', '101'],
      ['leads[status][0][old_pipeline_id]', '7777'],
      ['account[subdomain]', 'standin'],
      ['account[id]', '31234567'],
    ]);
    expect(new Map(rx.pairs(1)).get('leads[status][0][last_modified]')).toBe(String(T0 / 1000));
  });

  it('several hooks each get their own delivery', async () => {
    const { amo, rx } = await withHook(['status_lead']);
    const rx2 = await startReceiver();
    amo.subscribe(`${rx2.url}/other`, ['status_lead']);
    amo.managerWin(14);
    await amo.hooksSettled();
    expect([rx.got.length, rx2.got.length]).toEqual([1, 1]);
    expect(rx2.got[0]!.body).toBe(rx.got[0]!.body);
    expect(rx2.got[0]!.headers['x-amocrm-requestid']).not.toBe(rx.got[0]!.headers['x-amocrm-requestid']);
  });
});

describe('timeout, retries and disabling', () => {
  it('100–299 is success: 200, 204 and 299 are not retried; 300 is', async () => {
    const { amo, rx, clock } = await withHook(['status_lead']);
    for (const code of [200, 204, 299, 300]) {
      rx.answer(() => code);
      amo.managerMove(11, { statusId: amo.lead(11)!.statusId === 101 ? 102 : 101 });
      await amo.hooksSettled();
    }
    clock.advance(5 * MINUTE);
    rx.answer(() => 200);
    await amo.hooksSettled();
    expect(amo.hookAttempts.map((a) => [a.deliveryId, a.attempt, a.status, a.ok])).toEqual([
      [1, 1, 200, true], [2, 1, 204, true], [3, 1, 299, true], [4, 1, 300, false], [4, 2, 200, true],
    ]);
  });

  it('an invalid answer is retried after 5 and then 15 minutes, then given up; the body is the same', async () => {
    const { amo, rx, clock } = await withHook(['status_lead']);
    rx.answer(() => 404);
    amo.managerWin(11);
    await amo.hooksSettled();
    clock.advance(5 * MINUTE - 1);
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(1); // not due yet
    clock.advance(1);
    await amo.hooksSettled();
    clock.advance(15 * MINUTE);
    await amo.hooksSettled();
    clock.advance(24 * 60 * MINUTE);
    await amo.hooksSettled();
    expect(attemptsOf(amo)).toEqual([
      { attempt: 1, at: 0, status: 404 },
      { attempt: 2, at: 5 * MINUTE, status: 404 },
      { attempt: 3, at: 20 * MINUTE, status: 404 },
    ]);
    expect(new Set(rx.got.map((r) => r.body)).size).toBe(1);
  });

  it('499 and 5xx are retried after 15 minutes and 1 hour; a success ends the retries', async () => {
    const { amo, rx, clock } = await withHook(['status_lead']);
    rx.answer(() => 503);
    amo.managerWin(11);
    await amo.hooksSettled();
    clock.advance(5 * MINUTE);
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(1);
    clock.advance(10 * MINUTE);
    rx.answer(() => 499);
    await amo.hooksSettled();
    clock.advance(60 * MINUTE);
    rx.answer(() => 200);
    await amo.hooksSettled();
    expect(attemptsOf(amo)).toEqual([
      { attempt: 1, at: 0, status: 503 },
      { attempt: 2, at: 15 * MINUTE, status: 499 },
      { attempt: 3, at: 75 * MINUTE, status: 200 },
    ]);
    amo.managerLose(12);
    rx.answer(() => 500);
    await amo.hooksSettled();
    rx.answer(() => 201);
    clock.advance(15 * MINUTE);
    await amo.hooksSettled();
    clock.advance(60 * MINUTE);
    await amo.hooksSettled();
    expect(amo.hookAttempts.filter((a) => a.leadIds[0] === 12).map((a) => a.status)).toEqual([500, 201]);
  });

  it('a receiver that does not answer within 2 s counts as 499 (amoCRM closed) and is retried on the 5xx schedule', async () => {
    const { amo, rx, clock } = await withHook(['status_lead']);
    rx.answer(() => 'hold');
    amo.managerWin(11);
    await amo.hooksSettled(); // returns once amoCRM's 2 s ran out
    expect(rx.got).toHaveLength(1);
    expect(amo.hookAttempts).toMatchObject([{ attempt: 1, status: 499, ok: false, error: 'timeout' }]);
    rx.answer(() => 200);
    clock.advance(5 * MINUTE);
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(1); // not the 5-minute schedule
    clock.advance(10 * MINUTE);
    await amo.hooksSettled();
    expect(attemptsOf(amo)).toEqual([{ attempt: 1, at: 0, status: 499 }, { attempt: 2, at: 15 * MINUTE, status: 200 }]);
  });

  it('hookTimeoutMs sets the wait; no connection at all is status 0, retried after 5 minutes', async () => {
    const { amo, rx, clock } = await withHook(['status_lead'], { hookTimeoutMs: 150 });
    rx.answer(() => 'hold');
    amo.managerWin(11);
    await amo.hooksSettled();
    expect(amo.hookAttempts[0]).toMatchObject({ status: 499, error: 'timeout' });

    const dead = http.createServer();
    await new Promise<void>((resolve) => dead.listen(0, '127.0.0.1', resolve));
    const deadUrl = `http://127.0.0.1:${(dead.address() as AddressInfo).port}/gone`;
    await new Promise<void>((resolve) => dead.close(() => resolve()));
    amo.unsubscribe(amo.webhooks()[0]!.destination);
    amo.subscribe(deadUrl, ['status_lead']);
    amo.managerLose(12);
    await amo.hooksSettled();
    clock.advance(5 * MINUTE);
    await amo.hooksSettled();
    expect(amo.hookAttempts.slice(1).map((a) => [a.attempt, a.status, a.error, a.at - T0])).toEqual([
      [1, 0, 'network', 0],
      [2, 0, 'network', 5 * MINUTE],
    ]);
  });

  it('more than 100 invalid answers within 2 hours disable the hook until an admin re-enables it', async () => {
    const { amo, rx, api, clock } = await withHook(['status_lead'], { hookRetryDelaysMs: { invalid: [], server: [] } });
    rx.answer(() => 500);
    const flip = async () => {
      amo.managerMove(11, { statusId: amo.lead(11)!.statusId === 101 ? 102 : 101 });
      await amo.hooksSettled();
      clock.advance(1000);
    };
    for (let i = 0; i < 100; i++) await flip();
    expect(amo.webhooks()[0]!.disabled).toBe(false); // exactly 100 is not more than 100
    await flip();
    expect(amo.webhooks()[0]!.disabled).toBe(true);
    const listed = (await (await api('/api/v4/webhooks')).json()) as any;
    expect(listed._embedded.webhooks[0].disabled).toBe(true);

    await flip();
    await flip();
    expect(rx.got).toHaveLength(101); // nothing is sent to a disabled hook
    expect(amo.leadEvents()).toHaveLength(103); // while the feed records every change

    rx.answer(() => 200);
    amo.enableHook(amo.webhooks()[0]!.destination);
    await flip();
    expect(rx.got).toHaveLength(102);
    expect(amo.hookAttempts.at(-1)).toMatchObject({ status: 200, ok: true });
  });

  it('invalid answers older than 2 hours do not count towards disabling', async () => {
    const { amo, rx, clock } = await withHook(['status_lead'], { hookRetryDelaysMs: { invalid: [], server: [] } });
    rx.answer(() => 500);
    const flip = async () => {
      amo.managerMove(11, { statusId: amo.lead(11)!.statusId === 101 ? 102 : 101 });
      await amo.hooksSettled();
    };
    for (let i = 0; i < 100; i++) await flip();
    clock.advance(2 * 60 * MINUTE);
    await flip();
    expect(amo.webhooks()[0]!.disabled).toBe(false);
    expect(rx.got).toHaveLength(101);
  });

  it('close() aborts a held delivery instead of waiting for its 2 s', async () => {
    const { amo, rx } = await withHook(['status_lead']);
    rx.answer(() => 'hold');
    amo.managerWin(11);
    await new Promise<void>((resolve) => {
      const check = () => (rx.got.length > 0 ? resolve() : setImmediate(check));
      check();
    });
    await amo.close(); // aborts the held request instead of waiting 2 s
    expect(amo.hookAttempts).toEqual([]); // an aborted delivery is not an answer
  });
});

describe('missing hooks', () => {
  it('hooksOff drops every delivery (recorded, never sent); the events feed still has the changes', async () => {
    const { amo, rx, api } = await withHook(['status_lead', 'update_lead']);
    amo.hooksOff();
    amo.managerWin(11);
    amo.managerMove(12, { statusId: 102 });
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(0);
    expect(amo.hookAttempts.map((a) => [a.action, a.dropped, a.leadIds])).toEqual([
      ['update', true, [11, 12]],
      ['status', true, [11, 12]],
    ]);
    const feed = (await (await api(`/api/v4/events?filter[type]=lead_status_changed&filter[created_at][from]=${T0 / 1000}`)).json()) as any;
    expect(feed._embedded.events.map((e: any) => [e.entity_id, e.value_after[0].lead_status.id])).toEqual(
      expect.arrayContaining([[11, 142], [12, 102]]),
    );
    amo.hooksOn();
    amo.managerLose(14);
    await amo.hooksSettled();
    expect(rx.got).toHaveLength(2);
  });

  it("dropNextHooks(n, 'status') loses status_lead deliveries while update_lead ones arrive", async () => {
    const { amo, rx } = await withHook(['status_lead', 'update_lead']);
    amo.dropNextHooks(1, 'status');
    amo.managerWin(11);
    await amo.hooksSettled();
    amo.managerWin(12);
    await amo.hooksSettled();
    expect(rx.got.map((r) => Object.keys(qs.parse(r.body).leads as object)[0])).toEqual(['update', 'update', 'status']);
    expect(amo.hookAttempts.filter((a) => a.dropped).map((a) => [a.action, a.leadIds])).toEqual([['status', [11]]]);
  });
});

describe('events feed GET /api/v4/events', () => {
  async function moved() {
    const s = await start();
    await s.json('PATCH', '/api/v4/leads/11', { status_id: 102 }); // at T0, by the API
    s.clock.advance(10_000);
    s.amo.managerWin(11); // T0+10 s
    s.clock.advance(10_000);
    s.amo.managerMove(14, { statusId: 201, userId: 777 }); // T0+20 s, to the other pipeline
    s.clock.advance(10_000);
    await s.json('PATCH', '/api/v4/leads/12', { name: 'just renamed' }); // no stage change: no event
    s.amo.managerDelete(12); // T0+30 s
    return s;
  }
  const t = (s: number) => T0 / 1000 + s;
  const list = async (api: (p: string) => Promise<Response>, query: string) => {
    const res = await api(`/api/v4/events?${query}`);
    return { status: res.status, body: res.status === 200 ? ((await res.json()) as any) : undefined };
  };

  it('records every stage change as lead_status_changed with value_before/value_after, newest first', async () => {
    const { api, amo } = await moved();
    const { status, body } = await list(api, 'filter[type]=lead_status_changed');
    expect(status).toBe(200);
    const events = body._embedded.events as any[];
    expect(events.map(({ id, _links, _embedded, ...rest }) => rest)).toEqual([
      {
        type: 'lead_status_changed', entity_id: 14, entity_type: 'lead', created_by: 777, created_at: t(20), account_id: STANDIN_ACCOUNT.id,
        value_before: [{ lead_status: { id: 102, pipeline_id: TRIPWIRE } }], value_after: [{ lead_status: { id: 201, pipeline_id: OTHER } }],
      },
      {
        type: 'lead_status_changed', entity_id: 11, entity_type: 'lead', created_by: STANDIN_USERS.manager, created_at: t(10), account_id: STANDIN_ACCOUNT.id,
        value_before: [{ lead_status: { id: 102, pipeline_id: TRIPWIRE } }], value_after: [{ lead_status: { id: 142, pipeline_id: TRIPWIRE } }],
      },
      {
        type: 'lead_status_changed', entity_id: 11, entity_type: 'lead', created_by: STANDIN_USERS.api, created_at: t(0), account_id: STANDIN_ACCOUNT.id,
        value_before: [{ lead_status: { id: 101, pipeline_id: TRIPWIRE } }], value_after: [{ lead_status: { id: 102, pipeline_id: TRIPWIRE } }],
      },
    ]);
    expect(events[0].id).toMatch(/^[0-9a-hjkmnp-tv-z]{26}$/);
    expect(new Set(events.map((e) => e.id)).size).toBe(3);
    expect(events[0]._links.self.href).toBe(`${amo.url}/api/v4/events/${events[0].id}`);
    expect(events[0]._embedded.entity).toEqual({ id: 14, _links: { self: { href: `${amo.url}/api/v4/leads/14` } } });
    expect(amo.leadEvents().map((e) => e.type)).toEqual(['lead_status_changed', 'lead_status_changed', 'lead_status_changed', 'lead_deleted']);
  });

  it('filters by created_at (inclusive from/to, or "from,to"), entity_id, created_by, type and value_after stage', async () => {
    const { api } = await moved();
    const ids = async (query: string) => {
      const r = await list(api, query);
      return r.status === 204 ? 'none' : r.body._embedded.events.map((e: any) => [e.type, e.entity_id, e.created_at - T0 / 1000]);
    };
    expect(await ids(`filter[type]=lead_status_changed&filter[created_at][from]=${t(10)}`)).toEqual([['lead_status_changed', 14, 20], ['lead_status_changed', 11, 10]]);
    expect(await ids(`filter[created_at][from]=${t(10)}&filter[created_at][to]=${t(10)}`)).toEqual([['lead_status_changed', 11, 10]]);
    expect(await ids(`filter[created_at]=${t(0)},${t(10)}`)).toEqual([['lead_status_changed', 11, 10], ['lead_status_changed', 11, 0]]);
    expect(await ids(`filter[created_at]=${t(25)}`)).toEqual([['lead_deleted', 12, 30]]);
    expect(await ids('filter[type]=lead_deleted')).toEqual([['lead_deleted', 12, 30]]);
    expect(await ids('filter[type][]=lead_deleted&filter[type][]=lead_status_changed&filter[entity_id]=12,14')).toEqual([['lead_deleted', 12, 30], ['lead_status_changed', 14, 20]]);
    expect(await ids('filter[entity]=lead&filter[entity_id][]=11&filter[created_by]=123')).toEqual([['lead_status_changed', 11, 0]]);
    expect(await ids(`filter[value_after][leads_statuses][0][pipeline_id]=${TRIPWIRE}&filter[value_after][leads_statuses][0][status_id]=142`)).toEqual([['lead_status_changed', 11, 10]]);
    expect(await ids(`filter[value_before][leads_statuses][0][pipeline_id]=${TRIPWIRE}&filter[value_before][leads_statuses][0][status_id]=102`)).toEqual([['lead_status_changed', 14, 20], ['lead_status_changed', 11, 10]]);
    expect(await ids('filter[entity]=contact')).toBe('none');
    expect(await ids(`filter[created_at][from]=${t(31)}`)).toBe('none');
  });

  it('pages with limit/page and _links.next, at most 100 per page, 204 past the end', async () => {
    const { amo, api } = await start();
    for (let i = 0; i < 105; i++) amo.managerMove(11, { statusId: i % 2 === 0 ? 102 : 101 });
    const first = await list(api, 'filter[type]=lead_status_changed&limit=100');
    expect(first.body._embedded.events).toHaveLength(100);
    expect(first.body._page).toBe(1);
    const next = new URL(first.body._links.next.href);
    expect(next.searchParams.get('page')).toBe('2');
    expect(next.searchParams.get('filter[type]')).toBe('lead_status_changed');
    const second = await list(api, next.search.slice(1));
    expect(second.body._embedded.events).toHaveLength(5);
    expect(second.body._links.next).toBeUndefined();
    const all = [...first.body._embedded.events, ...second.body._embedded.events].map((e: any) => e.id);
    expect(new Set(all).size).toBe(105);
    expect((await list(api, 'filter[type]=lead_status_changed&limit=100&page=3')).status).toBe(204);
    const tooMany = await api('/api/v4/events?limit=101');
    expect(tooMany.status).toBe(422);
    expect(((await tooMany.json()) as any).detail).toMatch(/100/);
  });

  it('204 with an empty body when nothing happened; 400 naming the filter for bad values; 401 without a token', async () => {
    const { api } = await start();
    const empty = await api('/api/v4/events?filter[type]=lead_status_changed');
    expect([empty.status, await empty.text()]).toEqual([204, '']);
    for (const [query, path] of [
      ['filter[created_at][from]=yesterday', 'filter.created_at.from'],
      ['filter[created_at]=1,2,3', 'filter.created_at'],
      ['filter[entity_id]=1,2,3,4,5,6,7,8,9,10,11', 'filter.entity_id'],
      ['filter[entity_id]=abc', 'filter.entity_id'],
      ['filter[value_after][leads_statuses][0][status_id]=x', 'filter.value_after.leads_statuses.0.status_id'],
      ['filter=1', 'filter'],
    ] as const) {
      const res = await api(`/api/v4/events?${query}`);
      expect(res.status, query).toBe(400);
      expect(((await res.json()) as any)['validation-errors'][0].errors[0].path, query).toBe(path);
    }
    expect((await api('/api/v4/events', {}, null)).status).toBe(401);
  });
});

describe('manager calls', () => {
  it('managerMove picks the pipeline that has the stage, or checks the one given; userId names the person', async () => {
    const { amo } = await start();
    expect(amo.managerMove(11, { statusId: 201 })).toMatchObject({ pipelineId: OTHER, statusId: 201, updatedBy: STANDIN_USERS.manager });
    expect(amo.managerMove(11, { statusId: 143, pipelineId: TRIPWIRE, userId: 42 })).toMatchObject({ pipelineId: TRIPWIRE, statusId: 143, updatedBy: 42 });
    expect(() => amo.managerMove(11, { statusId: 201, pipelineId: TRIPWIRE })).toThrow(/pipeline 7777 has no stage 201/);
    expect(() => amo.managerMove(11, { statusId: 999 })).toThrow(/no pipeline has stage 999/);
    expect(() => amo.managerMove(404, { statusId: 101 })).toThrow(/no lead 404/);
    expect(amo.managerWin(14, { userId: 43 })).toMatchObject({ statusId: 142, pipelineId: TRIPWIRE, updatedBy: 43 });
    expect(amo.leadEvents().map((e) => e.created_by)).toEqual([STANDIN_USERS.manager, 42, 43]);
  });

  it('GET /api/v4/leads/:id shows who changed the deal last', async () => {
    const { amo, api } = await start();
    amo.managerLose(11);
    const lead = (await (await api('/api/v4/leads/11')).json()) as any;
    expect([lead.status_id, lead.updated_by, lead.created_by, lead.updated_at, lead.closed_at]).toEqual([143, STANDIN_USERS.manager, 123, T0 / 1000, T0 / 1000]);
  });
});
