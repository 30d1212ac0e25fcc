// The plain JSON webhook channel (Slack-compatible receivers read `text`): POST
// {kind, state: started|reminder|ended, text, since, affected}. One of the two `fetch`
// calls outside lib/amocrm/ (the other: telegram.ts), allowed for alert channels only.
// The URL may hold a secret (Slack's does): errors never show it.
import { errorText } from '../log.ts';

export interface WebhookAlert { kind: string; state: 'started' | 'reminder' | 'ended' | 'test'; text: string; since: string | null; affected: number | null }

export async function sendWebhook(url: string, alert: WebhookAlert, timeoutMs = 4_000): Promise<void> {
  const scrub = (s: string) => s.split(url).join('[AMOCRM_ALERT_WEBHOOK_URL]');
  let res: Response;
  try {
    res = await fetch(url, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(alert), signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    throw new Error(scrub(`webhook оповещений не ответил: ${errorText(err)}`));
  }
  await res.body?.cancel().catch(() => undefined);
  if (!res.ok) throw new Error(`webhook оповещений ответил ${res.status}`);
}
