// The look-ahead jobs: one per sign-up, a deal found ahead of the student's first lesson,
// claimed by the drainer with the capacity the lesson events leave (lib/sync/lookahead.ts).
// The only module that names these database functions
// (supabase/migrations/20261208000300_amocrm_drain.sql).
import { DRAIN_LEASE_SECONDS } from './drain-lease.ts';
import type { Db } from './port.ts';

export interface LookaheadJob {
  user_id: string;
  email: string | null;
  attempts: number;
}

export const claimLookahead = (db: Db, holder: string, limit: number) =>
  db.rpc<LookaheadJob[]>('amocrm_claim_lookahead', { p_holder: holder, p_limit: limit, p_lease_seconds: DRAIN_LEASE_SECONDS });

export type LookaheadOutcome = 'found' | 'no_deal' | 'failed' | 'retry';

export async function finishLookahead(
  db: Db, userId: string, holder: string, outcome: LookaheadOutcome,
  f: { leadId?: number; contactId?: number; code?: string; retryInMs?: number } = {},
): Promise<void> {
  await db.rpc('amocrm_finish_lookahead', {
    p_user_id: userId, p_holder: holder, p_outcome: outcome, p_lead_id: f.leadId, p_contact_id: f.contactId,
    p_error_code: f.code, p_retry_in_ms: f.retryInMs === undefined ? undefined : Math.round(f.retryInMs),
  });
}
