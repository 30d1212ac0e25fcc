// Alerts that end only when their condition is over, on a real database: hook_silent ends
// when a hook delivery arrives, not when the feed goes quiet; events_waiting ends when no
// event waits, not when the oldest ones are done while younger ones of the same outage still
// wait (nor starts again when those pass the threshold). Each step asserts what the channel
// received. Time passing is simulated by moving the rows' timestamps, never by sleeping.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { checkAlerts } from '../../lib/alerts/index.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { createStack, type Stack } from '../helpers/stack.ts';

let s: Stack;
let receiver: http.Server;
let hooked: Runtime;
const posted: { kind: string; state: string }[] = [];

beforeAll(async () => {
  receiver = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => { posted.push(JSON.parse(Buffer.concat(chunks).toString('utf8'))); res.writeHead(204).end(); });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  s = await createStack({ env: { AMOCRM_ALERT_WEBHOOK_URL: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/alerts` } });
  // The reverse direction on, as with AMOCRM_HOOK_SECRET: the hook conditions are evaluated.
  hooked = buildRuntime({ ...s.rt.config, hooks: { ...s.rt.config.hooks, secret: 'b'.repeat(32) } }, s.t.db, { log: s.log });
});
afterAll(async () => {
  await s?.close();
  receiver?.closeAllConnections();
  await new Promise((r) => receiver?.close(r));
});
beforeEach(async () => {
  posted.length = 0;
  await s.t.sql(`delete from amocrm.alerts`);
  await s.t.sql(`delete from amocrm.sync_events`);
  await s.t.sql(`delete from amocrm.deal_changes`);
  await s.t.sql(`delete from amocrm.crm_deliveries`);
});

/** One scheduled run's alert check: what it announced, as [kind, state]. */
const check = async () => (await checkAlerts(hooked)).sent.map((t) => [t.key, t.state]);
const delivery = (ago: string) => s.t.sql(
  `insert into amocrm.crm_deliveries (request_id, body, body_bytes, status, received_at) values ('hold-test-' || gen_random_uuid(), '{}', 2, 'applied', now() - $1::interval)`, [ago]);
const feedChanges = (n: number, ago: string) => s.t.sql(
  `insert into amocrm.deal_changes (lead_id, kind, changed_at, source, created_at)
   select 71000000 + g, 'stage_changed', now() - $1::interval, 'feed', now() - $1::interval from generate_series(1, $2) g`, [ago, n]);

describe('hook_silent ends only when a hook arrives', () => {
  it.each([
    ['after a last hook 4 h ago', true],
    ['with no hook ever', false],
  ])('%s: starts, a quiet spell in the feed does not end it, a delivery does', async (_, hadHook) => {
    if (hadHook) await delivery('4 hours');
    await feedChanges(3, '5 minutes');
    expect(await check()).toEqual([['hook_silent', 'started']]);

    // A quiet spell: the feed's changes fall out of the 180-minute window, none come; no hook either.
    await s.t.sql(`update amocrm.deal_changes set created_at = created_at - interval '4 hours', changed_at = changed_at - interval '4 hours'`);
    expect(await check()).toEqual([]);
    await feedChanges(1, '1 minute'); // one change: still fewer than the 3 that start it
    expect(await check()).toEqual([]);

    await delivery('0 seconds'); // the hook is back
    expect(await check()).toEqual([['hook_silent', 'ended']]);
    expect(await check()).toEqual([]);
    expect(posted.map((p) => [p.kind, p.state])).toEqual([['hook_silent', 'started'], ['hook_silent', 'ended']]);
  });
});

const waitingEvents = (n: number, status: 'pending' | 'failed', age: string) => s.t.sql(
  `insert into amocrm.sync_events (user_id, lesson_id, stage_number, status, last_error_code, retryable, created_at, updated_at, source)
   select gen_random_uuid(), 67, 1, $1, $2, $3, now() - $4::interval, now() - $4::interval, 'test' from generate_series(1, $5)
   returning id`, [status, status === 'failed' ? 'server_error' : null, status === 'failed' ? true : null, age, n]);

describe('events_waiting ends only when nothing waits', () => {
  it('the oldest done while younger ones of the same outage wait: no end, no second start; the last done ends it once', async () => {
    const old = (await waitingEvents(2, 'failed', '45 minutes')).map((r) => Number(r.id));
    const young = (await waitingEvents(1, 'failed', '10 minutes')).map((r) => Number(r.id));
    expect(await check()).toEqual([['events_waiting', 'started']]);

    await s.t.sql(`update amocrm.sync_events set status = 'done', retryable = null where id = any($1::bigint[])`, [old]);
    expect(await check()).toEqual([]); // the young one still waits
    // ...and passes the threshold itself: the same condition, not a new one.
    await s.t.sql(`update amocrm.sync_events set created_at = now() - interval '40 minutes' where id = any($1::bigint[])`, [young]);
    expect(await check()).toEqual([]);

    await s.t.sql(`update amocrm.sync_events set status = 'done', retryable = null where id = any($1::bigint[])`, [young]);
    expect(await check()).toEqual([['events_waiting', 'ended']]);
    expect(await check()).toEqual([]);
    expect(posted.map((p) => [p.kind, p.state])).toEqual([['events_waiting', 'started'], ['events_waiting', 'ended']]);
  });

  it('events younger than the threshold alone start nothing', async () => {
    await waitingEvents(3, 'pending', '10 minutes');
    expect(await check()).toEqual([]);
  });
});
