// POST /api/amocrm/crm-events/<secret> — amoCRM's account webhooks. They are unsigned, so
// the secret in the URL (compared in constant time) and the account are the
// authentication. The delivery is recorded and answered 200 at once (amoCRM waits 2 s,
// and disables a hook after 100 bad answers); applying it to the mirror happens after the
// answer. Only a delivery that could not be recorded gets a non-2xx.
import { receiveDelivery } from '../mirror/receive-delivery.ts';
import { safeEqual } from '../safe-equal.ts';
import { readBody } from './body.ts';
import { endpoint } from './handler.ts';
import { errorResponse, json } from './respond.ts';

/** Netlify's request limit; anything amoCRM sends is far smaller. */
const BODY_LIMIT_BYTES = 6 * 1024 * 1024;

export const handleCrmEvents = endpoint({
  methods: ['POST'],
  usage: 'amoCRM posts its account webhooks here (application/x-www-form-urlencoded)',
  async handle(req, rt, context) {
    const { secret } = rt.config.hooks;
    const offered = context.params?.secret ?? safeDecode(new URL(req.url).pathname.split('/').at(-1) ?? '');
    if (!secret || !safeEqual(offered, secret)) return errorResponse(404, 'not found');

    const received = await receiveDelivery(rt, await readBody(req, BODY_LIMIT_BYTES), requestIdOf(req.headers));
    // Netlify keeps the invocation alive for it; without waitUntil the scheduled run applies it.
    if (received.afterAnswer) context.waitUntil?.(received.afterAnswer());
    return json(200, { ok: true, delivery_id: received.id, status: received.status, duplicate: received.duplicate });
  },
});

/** A path segment as sent; malformed percent-encoding is compared as it came (and fails). */
function safeDecode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

/** amoCRM's X-Amocrm-Requestid is a UUID; anything else is not used to recognise a retry. */
function requestIdOf(headers: Headers): string | undefined {
  const id = headers.get('x-amocrm-requestid')?.trim();
  return id && /^[A-Za-z0-9_.:-]{1,100}$/.test(id) ? id : undefined;
}
