// Alerts: the scheduled run calls checkAlerts once, at its end. It reads
// the database's facts, decides which conditions hold (conditions.ts), lets the database's
// state machine say what to announce (started / reminder / ended: lib/db/alerts.ts), and
// sends each announcement to every configured channel (Telegram, a JSON webhook). Nothing
// here ever throws into the sync: a failing database read or channel is one ⚠️ line.
import type { Runtime } from '../runtime.ts';
import type { Config } from '../config.ts';
import { alertFacts, alertTransitions, type AlertTransition } from '../db/alerts.ts';
import { errorText } from '../log.ts';
import { activeConditions, alertText } from './conditions.ts';
import { sendTelegram } from './telegram.ts';
import { sendWebhook, type WebhookAlert } from './webhook.ts';

export type AlertsConfig = NonNullable<Config['alerts']>;

export interface AlertsReport { sent: AlertTransition[]; failedChannels: string[] }

/** Channels configured at all (no channel: nothing is evaluated, nothing is kept). */
export const alertsOn = (a: Config['alerts']) => Boolean(a?.telegram || a?.webhookUrl);

/** Evaluates the conditions and announces what changed. Never throws. */
export async function checkAlerts(rt: Runtime): Promise<AlertsReport> {
  const report: AlertsReport = { sent: [], failedChannels: [] };
  const alerts = rt.config.alerts;
  if (!alertsOn(alerts)) return report;
  let transitions: AlertTransition[];
  try {
    const facts = await alertFacts(rt.db);
    const active = activeConditions(facts, { hooks: Boolean(rt.config.hooks.secret) });
    transitions = await alertTransitions(rt.db, active);
  } catch (err) {
    rt.log.warn('Оповещения не проверены: следующий плановый запуск повторит', { error: errorText(err) });
    return report;
  }
  const now = rt.clock.now();
  const errors = new Map<string, string>();
  // All at once: the run's time is bounded by one channel timeout, however many alerts.
  const delivered = await Promise.all(transitions.map((t) =>
    deliver(alerts!, { kind: t.key, state: t.state, text: alertText(t, now), since: t.started_at, affected: t.affected })));
  transitions.forEach((t, i) => {
    const failed = delivered[i]!;
    for (const [channel, error] of failed) errors.set(channel, error);
    report.sent.push(t);
    rt.log.info('Оповещение отправлено', { kind: t.key, state: t.state, failed: failed.length ? failed.map(([c]) => c).join(',') : undefined });
  });
  // One ⚠️ line per failing channel and run, however many alerts it refused.
  for (const [channel, error] of errors) rt.log.warn('Канал оповещений не принял сообщение: следующее оповещение попробует снова', { channel, error });
  report.failedChannels = [...errors.keys()];
  return report;
}

/** Sends one message to every configured channel at once; answers the channels that failed, with their error. */
export async function deliver(a: AlertsConfig, msg: WebhookAlert): Promise<[string, string][]> {
  const sends: [string, Promise<unknown>][] = [];
  if (a.telegram) sends.push(['telegram', sendTelegram(a.telegram, msg.text)]);
  if (a.webhookUrl) sends.push(['webhook', sendWebhook(a.webhookUrl, msg)]);
  const results = await Promise.allSettled(sends.map(([, p]) => p));
  const failed: [string, string][] = [];
  results.forEach((r, i) => { if (r.status === 'rejected') failed.push([sends[i]![0], errorText(r.reason)]); });
  return failed;
}

/** A test message to every configured channel (npm run doctor -- --alert-test): each channel's error, or null. */
export async function sendTestAlert(a: AlertsConfig): Promise<Record<string, string | null>> {
  const text = 'ℹ️ [AmoCRM] Проверка оповещений: этот канал получает сообщения синхронизации уроков с amoCRM';
  const out: Record<string, string | null> = {};
  const jobs: Promise<void>[] = [];
  if (a.telegram) jobs.push(sendTelegram(a.telegram, text).then(() => { out.telegram = null; }, (e) => { out.telegram = errorText(e); }));
  if (a.webhookUrl) jobs.push(sendWebhook(a.webhookUrl, { kind: 'test', state: 'test', text, since: null, affected: null }).then(() => { out.webhook = null; }, (e) => { out.webhook = errorText(e); }));
  await Promise.all(jobs);
  return out;
}
