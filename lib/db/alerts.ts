// Alerts' database side (supabase/migrations/20261208000800_amocrm_alerts.sql): the facts
// the conditions are decided from, and the state machine that says what to announce. The
// only module that names amocrm_alert_facts and amocrm_alert_transitions.
import type { Db } from './port.ts';

export interface AlertFacts {
  settings: Record<string, number>;
  /** Events waiting (pending, retrying, claimed) longer than waiting_minutes. */
  waiting: { count: number; students: number; oldest: string | null };
  /** Events waiting however young (20261208001600; absent before it). */
  waiting_any?: { count: number; students: number; oldest: string | null };
  /** Students with any event not yet delivered (waiting or parked). */
  students_waiting: number;
  /** Parked events by error code. */
  parked: Record<string, { count: number; students: number; since: string }>;
  dead: { count: number; students: number; since: string | null };
  tokens: { auth_state: string; auth_problem: string | null; updated_at: string } | null;
  drainer: { started_at: string | null; last_woken_at: string | null; ring_failed_at: string | null; held: boolean } | null;
  feed_lag_seconds: number | null;
  hook: { last_delivery_at: string | null; feed_changes: number };
  database_bytes: number;
  /** The alerts open now and when each started (20261208001600; absent before it). */
  open?: Record<string, string>;
  now: string;
}

/** A condition that holds now. */
export interface ActiveCondition {
  key: string;
  since?: string | null;
  affected?: number;
  detail?: Record<string, unknown>;
}

export type AlertState = 'started' | 'reminder' | 'ended';

export interface AlertTransition {
  key: string;
  state: AlertState;
  started_at: string;
  affected: number | null;
  detail: Record<string, unknown> | null;
}

export const alertFacts = (db: Db) => db.rpc<AlertFacts>('amocrm_alert_facts');

export async function alertTransitions(db: Db, active: ActiveCondition[]): Promise<AlertTransition[]> {
  return (await db.rpc<{ alerts: AlertTransition[] }>('amocrm_alert_transitions', { p_active: active.length ? active : null })).alerts;
}
