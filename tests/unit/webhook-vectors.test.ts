// Webhook signatures against vectors computed outside this code base, so a mistake shared
// by `sign` and `verifyWebhook` (delimiter, key decoding, base64 alphabet, encoding) cannot
// hide: the other signature tests derive their expected values from `sign` itself.
// The SQL signer (amocrm.ring_webhook, pgcrypto) must produce the very same values.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sign, verifyWebhook, WebhookVerificationError } from '../../lib/lesson-webhook/verify.ts';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';

interface Vector {
  secret: string;
  id: string;
  timestamp: string;
  body: string;
  signature: string;
}

// The Standard Webhooks specification's test vector, as its reference libraries assert it:
// github.com/standard-webhooks/standard-webhooks, libraries/javascript/src/webhook.test.ts
// ("sign function works") and libraries/python/tests/test_webhooks.py (test_sign_function).
// Rechecked here with:
//   printf '%s' 'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}' \
//     | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw | base64 -d | xxd -p -c 256) -binary | base64
const STANDARD: Vector = {
  secret: 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: '1614265330',
  body: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
};

// A secret without the whsec_ prefix is keyed by its UTF-8 bytes (this project's rule for
// a secret typed by hand; the reference libraries would base64-decode it). Non-ASCII in
// the key and in the body, so an encoding slip on either side shows. The body is in
// jsonb's canonical text form (the form pg_net sends). Computed with OpenSSL 3.0:
//   printf '%s' 'evt_42.1700000000.{"type": "INSERT", "record": {"name": "Анна", "lesson_id": 67}, "event_id": 42}' \
//     | openssl dgst -sha256 -hmac 'plain-secret-ключ' -binary | base64
// (and the same value with Python's hmac module).
const PLAIN_TEXT: Vector = {
  secret: 'plain-secret-ключ',
  id: 'evt_42',
  timestamp: '1700000000',
  body: '{"type": "INSERT", "record": {"name": "Анна", "lesson_id": 67}, "event_id": 42}',
  signature: 'v1,Tt/pS+xsVjHAUTKcCh5Ae1B+INPezB64WeccbTf+Ung=',
};

const VECTORS = { 'Standard Webhooks (whsec_ secret)': STANDARD, 'plain-text secret': PLAIN_TEXT };

const headersOf = (v: Vector, signature = v.signature, timestamp = v.timestamp) =>
  new Headers({ 'webhook-id': v.id, 'webhook-timestamp': timestamp, 'webhook-signature': signature });

function rejection(f: () => void): WebhookVerificationError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(WebhookVerificationError);
    return err as WebhookVerificationError;
  }
  throw new Error('expected the webhook to be rejected, but it verified');
}

describe.each(Object.entries(VECTORS))('signature vector: %s', (_name, v) => {
  const now = Number(v.timestamp);

  it('sign() reproduces the vector exactly', () => {
    expect(sign(v.secret, v.id, v.timestamp, v.body)).toBe(v.signature);
  });

  it('verifyWebhook accepts the vector', () => {
    expect(() => verifyWebhook(headersOf(v), v.body, v.secret, now)).not.toThrow();
  });

  it('verifyWebhook accepts the vector among other signatures in the header', () => {
    // The shape of the reference libraries' "multi sig payload is valid" case.
    const many = ['v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=', 'v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=',
      v.signature, 'v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc='].join(' ');
    expect(() => verifyWebhook(headersOf(v, many), v.body, v.secret, now)).not.toThrow();
  });

  it('verifyWebhook rejects the vector with one character of the signature changed', () => {
    const last = v.signature.at(-2) === 'A' ? 'B' : 'A';
    const altered = `${v.signature.slice(0, -2)}${last}=`;
    expect(rejection(() => verifyWebhook(headersOf(v, altered), v.body, v.secret, now)).message).toMatch(/does not match/);
  });

  it('verifyWebhook rejects the vector with another body, id, timestamp or secret', () => {
    expect(rejection(() => verifyWebhook(headersOf(v), `${v.body} `, v.secret, now)).message).toMatch(/does not match/);
    const otherId = new Headers({ 'webhook-id': `${v.id}x`, 'webhook-timestamp': v.timestamp, 'webhook-signature': v.signature });
    expect(rejection(() => verifyWebhook(otherId, v.body, v.secret, now)).message).toMatch(/does not match/);
    const later = String(now + 1);
    expect(rejection(() => verifyWebhook(headersOf(v, v.signature, later), v.body, v.secret, now + 1)).message).toMatch(/does not match/);
    // The last character changed (appending one would not do: a base64 decoder ignores a
    // dangling character, so `whsec_…x` is the same key).
    const otherSecret = `${v.secret.slice(0, -1)}${v.secret.endsWith('x') ? 'y' : 'x'}`;
    expect(rejection(() => verifyWebhook(headersOf(v), v.body, otherSecret, now)).message).toMatch(/does not match/);
  });
});

// The trigger signs in SQL. The test runs the installed amocrm.ring_webhook itself, with
// only its two per-call inputs (the message id derived from the event id, the clock)
// replaced by the vector's, and reads the signature it hands to pg_net.
describe('SQL signer (amocrm.ring_webhook, pgcrypto) on the vectors', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
    await t.sql(`insert into amocrm.system_settings (key, value) values ('webhook_url', '"http://127.0.0.1:9/"')
                 on conflict (key) do update set value = excluded.value`);
  });
  afterAll(async () => {
    await t?.close();
  });

  /** amocrm.ring_webhook as installed, with its message id and timestamp fixed. */
  async function ringWithFixedInputs(id: string, timestamp: string): Promise<void> {
    const [{ def }] = (await t.sql(
      `select pg_get_functiondef('amocrm.ring_webhook(bigint,jsonb)'::regprocedure) as def`)) as [{ def: string }];
    const replaceOnce = (text: string, pattern: RegExp, by: string) => {
      const matches = text.match(new RegExp(pattern.source, 'g')) ?? [];
      if (matches.length !== 1) {
        throw new Error(`amocrm.ring_webhook no longer matches ${pattern} exactly once (${matches.length}): update this test to its new shape`);
      }
      return text.replace(pattern, by);
    };
    const quote = (s: string) => `'${s.replaceAll("'", "''")}'`;
    let copy = replaceOnce(def, /FUNCTION amocrm\.ring_webhook\(/, 'FUNCTION amocrm.test_ring_webhook_vector(');
    copy = replaceOnce(copy, /v_msg_id\s+text\s*:=[^;]+;/, `v_msg_id text := ${quote(id)};`);
    copy = replaceOnce(copy, /v_ts\s+text\s*:=[^;]+;/, `v_ts text := ${quote(timestamp)};`);
    await t.sql(copy);
  }

  it.each(Object.entries(VECTORS))('%s: the signature pg_net is given equals the vector', async (_name, v) => {
    // The body reaches pg_net as jsonb and is sent as its text: the vector's body must
    // already be that text, or the SQL would sign other bytes than the vector's.
    const [{ text }] = (await t.sql('select $1::jsonb::text as text', [v.body])) as [{ text: string }];
    expect(text).toBe(v.body);

    await t.sql(`insert into amocrm.system_settings (key, value) values ('webhook_secret', to_jsonb($1::text))
                 on conflict (key) do update set value = excluded.value`, [v.secret]);
    await ringWithFixedInputs(v.id, v.timestamp);
    const [{ request }] = (await t.sql('select amocrm.test_ring_webhook_vector(0, $1::jsonb) as request', [v.body])) as [{ request: number | string | null }];
    expect(request, 'ring_webhook queued nothing: webhook_url/webhook_secret or the pg_net stand-in missing').not.toBeNull();
    const [queued] = await t.sql(
      `select headers, convert_from(body, 'UTF8') as body_text from net.http_request_queue where id = $1`, [request]);
    expect(queued).toBeDefined();
    expect(queued!.body_text).toBe(v.body);
    expect(queued!.headers).toMatchObject({ 'webhook-id': v.id, 'webhook-timestamp': v.timestamp, 'webhook-signature': v.signature });
  });
});
