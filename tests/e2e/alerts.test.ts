// Alerts (issue 17, item 2): each condition starts (one message), stays quiet, reminds at
// the slow cadence, and ends; a burst of a thousand failures is one alert; a failing
// channel leaves the sync untouched and never shows the bot token. The Telegram channel
// goes to the local Bot API stand-in, the webhook channel to a receiver here.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { checkAlerts } from '../../lib/alerts/index.ts';
import { formatCheck, runDoctor } from '../../lib/ops/doctor/index.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { startTelegramStandin, type TelegramStandin } from '../../dev/telegram-standin.ts';
import { usingPostgres } from '../helpers/db.ts';
import { createStack, type Stack } from '../helpers/stack.ts';

let s: Stack;
let tg: TelegramStandin;
let receiver: http.Server;
let hooked: Runtime;
const posted: Record<string, any>[] = [];
/** The stack's alert settings and drainer row as created: each test starts from them. */
let alertSettings: Record<string, any> | undefined;
let drainer: Record<string, any> | undefined;

beforeAll(async () => {
  tg = await startTelegramStandin();
  receiver = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => { posted.push(JSON.parse(Buffer.concat(chunks).toString('utf8'))); res.writeHead(204).end(); });
  });
  await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
  const hookUrl = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/alerts`;
  s = await createStack({
    env: { AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: tg.token, AMOCRM_ALERT_TELEGRAM_CHAT_ID: '-1001234567890', AMOCRM_ALERT_TELEGRAM_API: tg.url, AMOCRM_ALERT_WEBHOOK_URL: hookUrl },
  });
  // The reverse direction on (for the feed and hook conditions), checked alone: the sweep of
  // this stack keeps it off so it never reads the stand-in's feed.
  hooked = buildRuntime({ ...s.rt.config, hooks: { ...s.rt.config.hooks, secret: 'a'.repeat(32) } }, s.t.db, { log: s.log });
  [alertSettings] = await s.t.sql(`select value from amocrm.system_settings where key = 'alert_settings'`);
  [drainer] = await s.t.sql(`select holder, lease_until, started_at, last_woken_at, ring_failed_at from amocrm.drainer where key = 'drain'`);
});
afterAll(async () => {
  await s?.close();
  await tg?.close();
  receiver?.closeAllConnections();
  await new Promise((r) => receiver?.close(r));
});
// Every test starts with no condition on and nothing sent, whatever ran before it (or
// failed half-way): the channels' records, the alerts, and each fact a condition reads.
beforeEach(async () => {
  tg.messages.length = 0;
  tg.requests.length = 0;
  posted.length = 0;
  tg.failing = false;
  await s.t.sql(`delete from amocrm.alerts`);
  await s.t.sql(`delete from amocrm.sync_events where source = 'test'`);
  await s.t.sql(`update amocrm.system_settings set value = value || '{"auth_state":"ok","auth_problem":null}'::jsonb where key = 'amocrm_tokens'`);
  await s.t.sql(`update amocrm.system_settings set value = $1::jsonb where key = 'alert_settings'`, [JSON.stringify(alertSettings!.value)]);
  await s.t.sql(`delete from amocrm.system_settings where key = 'events_feed_window'`);
  await s.t.sql(`update amocrm.drainer set holder = $1, lease_until = $2, started_at = $3, last_woken_at = $4, ring_failed_at = $5 where key = 'drain'`,
    [drainer!.holder, drainer!.lease_until, drainer!.started_at, drainer!.last_woken_at, drainer!.ring_failed_at]);
  await s.t.sql(`delete from amocrm.deal_changes where lead_id > 70000000`);
  await s.t.sql(`delete from amocrm.crm_deliveries where request_id = 'alerts-test'`);
});

const texts = () => tg.messages.map((m) => m.text);
/** The reminder is due: the last message went out 7 hours ago (the cadence is 6). */
const remindDue = () => s.t.sql(`update amocrm.alerts set last_sent_at = last_sent_at - interval '7 hours'`);

/** Starts, stays quiet, reminds, ends: one message each, on both channels. */
async function lifecycle(rt: Runtime, kind: string, start: () => Promise<unknown>, stop: () => Promise<unknown>, expectText: RegExp) {
  await start();
  let r = await checkAlerts(rt);
  expect(r.sent.map((t) => [t.key, t.state])).toEqual([[kind, 'started']]);
  expect(texts()).toHaveLength(1);
  expect(texts()[0]).toMatch(/^🔴 \[AmoCRM\] /);
  expect(texts()[0]).toMatch(expectText);
  expect(texts()[0]).toMatch(/Когда: с \d{4}-\d\d-\d\d \d\d:\d\d UTC/);
  expect(texts()[0]).toMatch(/Затронуто: .+\nЧто делать: .+/);
  expect(posted).toEqual([expect.objectContaining({ kind, state: 'started', text: texts()[0] })]);
  expect(tg.messages[0]!.chatId).toBe('-1001234567890');

  r = await checkAlerts(rt); // still on, the reminder not due
  expect(r.sent).toEqual([]);
  expect(texts()).toHaveLength(1);

  await remindDue();
  r = await checkAlerts(rt);
  expect(r.sent.map((t) => t.state)).toEqual(['reminder']);
  expect(texts()[1]).toMatch(/^🔁 \[AmoCRM\] Всё ещё: /);
  expect(await checkAlerts(rt)).toMatchObject({ sent: [] });

  await stop();
  r = await checkAlerts(rt);
  expect(r.sent.map((t) => [t.key, t.state])).toEqual([[kind, 'ended']]);
  expect(texts()[2]).toMatch(/^✅ \[AmoCRM\] Закончилось: /);
  expect(posted.map((p) => p.state)).toEqual(['started', 'reminder', 'ended']);
  expect(await checkAlerts(rt)).toMatchObject({ sent: [] });
  expect(texts()).toHaveLength(3);
}

const insertEvents = (n: number, status: string, code: string | null, age = '0 seconds') => s.t.sql(
  `insert into amocrm.sync_events (user_id, lesson_id, stage_number, status, last_error_code, retryable, created_at, updated_at, source)
   select gen_random_uuid(), 67, 1, $1, $2, $3, now() - $4::interval, now() - $4::interval, 'test' from generate_series(1, $5)`,
  [status, code, status === 'failed' ? true : null, age, n]);
const clearEvents = () => s.t.sql(`delete from amocrm.sync_events where source = 'test'`);

describe(`alerts (${usingPostgres ? 'PostgreSQL' : 'PGlite'})`, () => {
  it('nothing wrong: no alert, nothing sent', async () => {
    expect(await checkAlerts(s.rt)).toEqual({ sent: [], failedChannels: [] });
    expect(tg.requests).toHaveLength(0);
  });

  it('token chain broken: starts, reminds, ends', async () => {
    await s.storeTokens();
    const set = (state: string) => s.t.sql(`update amocrm.system_settings set value = value || jsonb_build_object('auth_state', $1::text, 'auth_problem', 'refresh_rejected') where key = 'amocrm_tokens'`, [state]);
    await lifecycle(s.rt, 'token_chain', () => set('needs_reauth'), () => set('ok'), /Цепочка токенов amoCRM разорвана/);
  });

  it('account blocked (403): a burst of 1000 parked events is one alert, saying how many students', async () => {
    await lifecycle(s.rt, 'account_refused', () => insertEvents(1000, 'parked', 'account_blocked'), clearEvents, /заблокирован \(403\)[^]*1000 учеников, 1000 событий отложено/);
  });

  it('account unpaid (402)', async () => {
    await lifecycle(s.rt, 'account_refused', () => insertEvents(3, 'parked', 'payment_required'), clearEvents, /не оплачен \(402\)/);
  });

  it('events dead: a thousand at once is one alert', async () => {
    await lifecycle(s.rt, 'events_dead', () => insertEvents(1000, 'dead', 'amo_5xx'), clearEvents, /1000 событий исчерпали попытки/);
  });

  it('events waiting longer than the threshold (30 min); younger ones are no alert', async () => {
    await insertEvents(5, 'pending', null, '10 minutes');
    expect((await checkAlerts(s.rt)).sent).toEqual([]);
    await clearEvents();
    await lifecycle(s.rt, 'events_waiting', () => insertEvents(4, 'failed', 'amo_5xx', '45 minutes'), clearEvents, /События ждут дольше 30 мин[^]*4 ученика ждут/);
  });

  it('the drainer rung but never starting', async () => {
    const [before] = await s.t.sql(`select started_at, last_woken_at, holder, lease_until from amocrm.drainer`);
    await lifecycle(s.rt, 'drainer_not_starting',
      () => s.t.sql(`update amocrm.drainer set last_woken_at = now() - interval '15 minutes', started_at = now() - interval '2 hours', lease_until = null`),
      () => s.t.sql(`update amocrm.drainer set started_at = now()`),
      /вызывается, но не запускается/);
    await s.t.sql(`update amocrm.drainer set started_at = $1, last_woken_at = $2, holder = $3, lease_until = $4`, [before!.started_at, before!.last_woken_at, before!.holder, before!.lease_until]);
  });

  it('the events feed lagging (reverse direction on)', async () => {
    const at = (ago: string) => s.t.sql(`insert into amocrm.system_settings (key, value)
      values ('events_feed_window', jsonb_build_object('read_through', floor(extract(epoch from now() - $1::interval))::bigint, 'from', null, 'to', null, 'page', 1))
      on conflict (key) do update set value = excluded.value`, [ago]);
    await lifecycle(hooked, 'feed_lagging', () => at('5 hours'), () => at('1 minute'), /Лента событий amoCRM читается с отставанием: 5 ч/);
    // With the reverse direction off, the feed is no one's business.
    await at('5 hours');
    expect((await checkAlerts(s.rt)).sent).toEqual([]);
    await s.t.sql(`delete from amocrm.system_settings where key = 'events_feed_window'`);
  });

  it("amoCRM's hook silent while the feed shows changes", async () => {
    await lifecycle(hooked, 'hook_silent',
      () => s.t.sql(`insert into amocrm.deal_changes (lead_id, kind, changed_at, source) select 70000000 + g, 'stage_changed', now(), 'feed' from generate_series(1, 3) g`),
      () => s.t.sql(`insert into amocrm.crm_deliveries (request_id, body, body_bytes, status) values ('alerts-test', '{}', 2, 'applied')`),
      /Хук amoCRM молчит с начала работы, а лента событий показывает 3 изменения/);
    await s.t.sql(`delete from amocrm.deal_changes where lead_id > 70000000`);
    await s.t.sql(`delete from amocrm.crm_deliveries where request_id = 'alerts-test'`);
  });

  it('storage near the configured limit', async () => {
    const limit = (mb: number) => s.t.sql(`update amocrm.system_settings set value = value || jsonb_build_object('storage_limit_mb', $1::int) where key = 'alert_settings'`, [mb]);
    await lifecycle(s.rt, 'storage_near_limit', () => limit(1), () => limit(100_000), /База данных близка к пределу: \d+ МБ из 1 МБ/);
    await limit(500);
  });

  it('two conditions at once are two alerts; one ending leaves the other open', async () => {
    await insertEvents(2, 'dead', 'amo_5xx');
    await insertEvents(2, 'parked', 'payment_required');
    expect((await checkAlerts(s.rt)).sent.map((t) => t.key).sort()).toEqual(['account_refused', 'events_dead']);
    await s.t.sql(`delete from amocrm.sync_events where source = 'test' and status = 'dead'`);
    expect((await checkAlerts(s.rt)).sent.map((t) => [t.key, t.state])).toEqual([['events_dead', 'ended']]);
    await clearEvents();
    expect((await checkAlerts(s.rt)).sent.map((t) => [t.key, t.state])).toEqual([['account_refused', 'ended']]);
  });

  it('a failing channel leaves the sync untouched: the event is delivered, one ⚠️ line, the token never logged', async () => {
    tg.failing = true;
    const student = await s.addStudent('alerts-fail@student.kz');
    await s.storeTokens();
    const id = await s.complete(student.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where id = $1`, [id]);
    await insertEvents(500, 'dead', 'amo_5xx'); // a condition, so the sweep sends
    const from = s.log.lines.length;
    const report = await runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 });
    expect(report.outcomes.done ?? report.outcomes).toBeTruthy();
    expect((await s.event(id)).status).toBe('done');
    const lines = s.log.lines.slice(from);
    expect(lines.filter((l) => l.startsWith('⚠️') && l.includes('Канал оповещений'))).toHaveLength(1);
    expect(lines.join('\n')).toContain('Telegram ответил 500');
    expect(posted.map((p) => p.kind)).toEqual(['events_dead']); // the other channel still told
    expect(s.log.lines.join('\n')).not.toContain(tg.token);
    await clearEvents();
  });

  it('a wrong bot token (401) and an unreachable webhook: the sweep still finishes, the token never in a log line', async () => {
    const config = { ...s.rt.config, alerts: { telegram: { botToken: '987654321:wrong-token-abcdefghijklmnopqrstuvwxyz', chatId: '1', apiBase: tg.url }, webhookUrl: 'http://127.0.0.1:9/unreachable' } };
    const rt = buildRuntime(config, s.t.db, { log: s.log });
    await insertEvents(1, 'dead', 'amo_5xx');
    const from = s.log.lines.length;
    const report = await runSweep(rt, { budgetMs: 20_000, reserveMs: 2_000 });
    expect(report.stoppedBy).toBe('empty');
    const lines = s.log.lines.slice(from).join('\n');
    expect(lines).toContain('Telegram ответил 401: Unauthorized');
    expect(lines).toContain('channel=webhook');
    expect(lines).not.toContain('wrong-token');
    await clearEvents();
  });

  it('a database that fails the facts read: one ⚠️ line, nothing thrown', async () => {
    const rt = buildRuntime(s.rt.config, { rpc: async () => { throw new Error('connection reset'); } }, { log: s.log });
    const from = s.log.lines.length;
    expect(await checkAlerts(rt)).toEqual({ sent: [], failedChannels: [] });
    expect(s.log.lines.slice(from)).toEqual([expect.stringMatching(/^⚠️ \[AmoCRM\] Оповещения не проверены/)]);
  });

  it('the doctor: one line per channel; --alert-test sends each a test message, a wrong token is ❌ without the token', async () => {
    const lines = async (env: Record<string, string>, alertTest: boolean) =>
      (await runDoctor({ env, db: s.t.db, alertTest })).filter((r) => r.check.startsWith('alerts')).map(formatCheck);
    expect(await lines(s.env, false)).toEqual([
      expect.stringMatching(/^✅ alerts: Telegram: set: chat -1001234567890 via 127\.0\.0\.1:\d+ \(npm run doctor -- --alert-test/),
      expect.stringMatching(/^✅ alerts: webhook: set: POST to 127\.0\.0\.1:\d+/),
    ]);
    expect(tg.messages).toHaveLength(0);
    expect(await lines(s.env, true)).toEqual([
      expect.stringMatching(/^✅ alerts: Telegram: test message delivered to chat -1001234567890/),
      expect.stringMatching(/^✅ alerts: webhook: test message delivered/),
    ]);
    expect(texts()).toEqual([expect.stringContaining('Проверка оповещений')]);
    expect(posted).toEqual([expect.objectContaining({ kind: 'test', state: 'test' })]);
    const wrong = '987654321:wrong-token-abcdefghijklmnopqrstuvwxyz';
    const bad = await lines({ ...s.env, AMOCRM_ALERT_TELEGRAM_BOT_TOKEN: wrong }, true);
    expect(bad[0]).toMatch(/^❌ alerts: Telegram: test message not delivered to chat -1001234567890 via 127\.0\.0\.1:\d+: Telegram ответил 401: Unauthorized → 401 Unauthorized: the bot token is wrong/);
    expect(bad.join('\n')).not.toContain('wrong-token');
  });
});
