// The Telegram channel: POST <api>/bot<token>/sendMessage {chat_id, text}. One of the two
// `fetch` calls outside lib/amocrm/ (the other: webhook.ts), allowed for alert channels
// only. The bot token is part of the URL: it never reaches an error or a log line (errors
// say the status and Telegram's description, scrubbed of the token).
import { errorText } from '../log.ts';

export const TELEGRAM_API = 'https://api.telegram.org';

export interface TelegramChannel { botToken: string; chatId: string; apiBase?: string }

/** Sends one message; throws an Error whose message never holds the token. */
export async function sendTelegram(ch: TelegramChannel, text: string, timeoutMs = 4_000): Promise<{ messageId?: number }> {
  const scrub = (s: string) => s.split(ch.botToken).join('[скрыто]');
  const base = (ch.apiBase ?? TELEGRAM_API).replace(/\/+$/, '');
  let res: Response;
  try {
    res = await fetch(`${base}/bot${ch.botToken}/sendMessage`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ chat_id: ch.chatId, text: text.slice(0, 4000), disable_web_page_preview: true }),
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    throw new Error(scrub(`Telegram не ответил: ${errorText(err)}`));
  }
  const body = await res.json().catch(() => undefined) as { ok?: boolean; description?: string; result?: { message_id?: number } } | undefined;
  if (!res.ok || !body?.ok) throw new Error(scrub(`Telegram ответил ${res.status}: ${body?.description ?? 'без описания'}`));
  return { messageId: body.result?.message_id };
}
