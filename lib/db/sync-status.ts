// The sync at a glance, as the status endpoint answers monitors: counts, ages, the token's
// state and the recent failures. The only module that names amocrm_status.
import type { Db } from './port.ts';

export interface SyncStatus {
  counts: Record<string, number>;
  oldest_pending_age_seconds: number | null;
  last_success_at: string | null;
  last_failure_at: string | null;
  token: { kind: string; expires_at: string | null; auth_state: string; auth_problem: string | null; updated_at?: string } | null;
  recent_failures: { id: number; status: string; email: string | null; lesson_id: number; attempts: number; code: string | null; reason: string | null; updated_at: string }[];
}

export const syncStatus = (db: Db, failures = 20) => db.rpc<SyncStatus>('amocrm_status', { p_failures: failures });
