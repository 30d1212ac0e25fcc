// Comparing a secret a caller offers with the one we hold, in constant time: the webhook
// signature and secret (lesson-webhook/verify.ts), the hook's path secret (http/crm-events.ts)
// and the operator token (http/operator-auth.ts).
import { createHash, timingSafeEqual } from 'node:crypto';

// Hashing both sides first makes the comparison constant-time regardless of length.
export function safeEqual(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}
