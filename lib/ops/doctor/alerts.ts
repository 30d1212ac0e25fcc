// Alerts (docs/operations.md, "Alerts"): one line per configured channel, none when no
// channel is set (alerts are optional). With `--alert-test` (alertTest) each channel is
// sent a test message and the line says whether it arrived. Never the bot token nor the
// webhook's URL (it may hold a secret): the chat id and the webhook's host only.
import { sendTestAlert } from '../../alerts/index.ts';
import type { Config } from '../../config.ts';
import type { Add } from './report.ts';

export async function checkAlerts(config: Config | undefined, alertTest: boolean, add: Add): Promise<void> {
  const a = config?.alerts;
  if (!a) {
    if (alertTest) add('warn', 'alerts', 'no test sent: no channel is set (AMOCRM_ALERT_TELEGRAM_BOT_TOKEN with AMOCRM_ALERT_TELEGRAM_CHAT_ID, or AMOCRM_ALERT_WEBHOOK_URL)');
    return;
  }
  const results = alertTest ? await sendTestAlert(a) : {};
  const host = (url: string) => { try { return new URL(url).host; } catch { return 'the URL'; } };
  const line = (channel: 'telegram' | 'webhook', name: string, where: string, fix: string) => {
    if (!alertTest) return add('ok', name, `set: ${where} (npm run doctor -- --alert-test sends a test message)`);
    const error = results[channel];
    if (error) add('fail', name, `test message not delivered to ${where}: ${error}`, fix);
    else add('ok', name, `test message delivered to ${where}`);
  };
  if (a.telegram) {
    line('telegram', 'alerts: Telegram', `chat ${a.telegram.chatId}${a.telegram.apiBase ? ` via ${host(a.telegram.apiBase)}` : ''}`,
      '401 Unauthorized: the bot token is wrong (@BotFather → /token); 400 chat not found: the bot is not in that chat or the chat id is wrong');
  }
  if (a.webhookUrl) line('webhook', 'alerts: webhook', `POST to ${host(a.webhookUrl)}`, 'check AMOCRM_ALERT_WEBHOOK_URL and that the receiver accepts a JSON POST');
}
