// Retention: one batch of every rule per call (supabase/migrations/20261208000700_amocrm_retention.sql,
// which lists the rules and their settings). The only module that names amocrm_retention.
import type { Db } from './port.ts';

export interface RetentionBatch {
  /** crm_deliveries whose raw body was emptied (and the deal's name dropped). */
  deliveries_reduced: number;
  deliveries_removed: number;
  /** event_attempts of done/skipped events, their hours counted in the console's rollup first. */
  attempts_removed: number;
  /** done/skipped events whose last error's text was cleared (the row stays). */
  events_compacted: number;
  /** Opt-in rules (0 = keep, the default). */
  history_removed: number;
  changes_removed: number;
  /** Rows per rule in this call: a rule that did this many has more to do. */
  batch: number;
}

export const RETENTION_RULES = ['deliveries_reduced', 'deliveries_removed', 'attempts_removed', 'events_compacted', 'history_removed', 'changes_removed'] as const;
export type RetentionRule = (typeof RETENTION_RULES)[number];

export const retentionBatch = (db: Db, batch?: number) => db.rpc<RetentionBatch>('amocrm_retention', { p_batch: batch });
