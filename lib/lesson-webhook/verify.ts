// Authenticates a webhook request, in the spirit of standard-webhooks: one function, one
// precise error type. Two ways in:
//   - signed: webhook-id, webhook-timestamp, webhook-signature "v1,<base64 HMAC-SHA256 of
//     id.timestamp.body>" (what our trigger sends, signed in SQL with pgcrypto);
//   - static: an x-webhook-secret header equal to the secret (what a webhook created in
//     the Supabase dashboard can send), compared in constant time.
import { createHmac } from 'node:crypto';
import { safeEqual } from '../safe-equal.ts';

export class WebhookVerificationError extends Error {
  override readonly name = 'WebhookVerificationError';
}

export const TIMESTAMP_TOLERANCE_SEC = 5 * 60;

function secretKey(secret: string): Buffer {
  return secret.startsWith('whsec_') ? Buffer.from(secret.slice(6), 'base64') : Buffer.from(secret, 'utf8');
}

export function sign(secret: string, id: string, timestamp: string, body: string): string {
  return `v1,${createHmac('sha256', secretKey(secret)).update(`${id}.${timestamp}.${body}`).digest('base64')}`;
}

export function verifyWebhook(headers: Headers, body: string, secret: string, nowSec: number): void {
  const signature = headers.get('webhook-signature');
  if (signature) {
    const id = headers.get('webhook-id');
    const timestamp = headers.get('webhook-timestamp');
    if (!id || !timestamp) throw new WebhookVerificationError('webhook-id and webhook-timestamp headers are required with webhook-signature');
    const ts = Number(timestamp);
    if (!Number.isInteger(ts)) throw new WebhookVerificationError('webhook-timestamp must be unix seconds');
    if (Math.abs(nowSec - ts) > TIMESTAMP_TOLERANCE_SEC) {
      throw new WebhookVerificationError(`webhook-timestamp is more than ${TIMESTAMP_TOLERANCE_SEC / 60} minutes away from now: check the database clock or replay the event`);
    }
    const expected = sign(secret, id, timestamp, body);
    const offered = signature.split(' ').filter((s) => s.startsWith('v1,'));
    if (!offered.some((s) => safeEqual(s, expected))) throw new WebhookVerificationError('webhook-signature does not match: the database webhook_secret and AMOCRM_WEBHOOK_SECRET differ');
    return;
  }
  const shared = headers.get('x-webhook-secret');
  if (shared !== null) {
    if (!safeEqual(shared, secret)) throw new WebhookVerificationError('x-webhook-secret does not match AMOCRM_WEBHOOK_SECRET');
    return;
  }
  throw new WebhookVerificationError('missing webhook-signature (or x-webhook-secret) header');
}
