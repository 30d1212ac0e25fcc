// The operator console's reads, one database function per view (each served by an index:
// see supabase/migrations/20261208000500_amocrm_console.sql, the funnel view per funnel in
// 20261208001400_amocrm_console_funnels.sql); the health view adds where
// reading the events feed stands (deal-mirror.ts). The only module that names these functions.
import { getFeedState, type FeedState } from './deal-mirror.ts';
import type { Db } from './port.ts';

/** One counted step of one funnel (the flat list scripts read). */
export interface FunnelLesson { funnel_key: string; stage_number: number; lesson_id: number | null; completed: number; moved: number; skipped: number; failed: number; waiting: number }
export interface StuckCount { stage_number: number; status: string; code: string | null; count: number }
/** One step of a funnel: the version in force's stage and lessons, and the period's events by outcome. */
export interface FunnelStepCounts {
  stage_number: number;
  /** Null for a step the period's events name but the version in force no longer has. */
  stage_id: number | null;
  lessons: number[];
  configured: boolean;
  completed: number; moved: number; skipped: number; failed: number; waiting: number;
}
/** One funnel's counts: its own steps, the deals won and lost in its pipeline, where its students are stuck. */
export interface FunnelCounts {
  key: string;
  name: string;
  pipeline_id: number | null;
  /** False for a funnel the period's events name that the version in force no longer has. */
  configured: boolean;
  steps: FunnelStepCounts[];
  won: number;
  lost: number;
  stuck: StuckCount[];
}
export interface Funnel {
  from: string;
  to: string;
  /** Per funnel, in the order of the version in force. */
  funnels: FunnelCounts[];
  lessons: FunnelLesson[];
  won: number;
  lost: number;
  /** Completed but not moved, and why, over every funnel. */
  stuck: (StuckCount & { funnel_key: string })[];
}

export const consoleFunnel = (db: Db, p: { from: string; to: string }) =>
  db.rpc<Funnel>('amocrm_console_funnel', { p_from: p.from, p_to: p.to });

export interface Health {
  buckets: { at: string; done: number; skipped: number; failed: number; dead: number; retried: number; deferred: number }[];
  latency: { n: number; p50_ms: number | null; p95_ms: number | null };
  queue: { due: number; waiting: number; processing: number; parked: number; oldest_waiting_seconds: number | null };
  rate: { rate_factor: number; paused_until: string | null; rate_limited_total: number; rate_limited_in_period: number; requests_in_period: number | null } | null;
  token: { kind: string; expires_at: string | null; auth_state: string; auth_problem: string | null } | null;
  drain: { active: boolean; started_at: string | null; lease_until: string | null; last_woken_at: string | null; drained_total: number } | null;
  dead_total: number;
  retries_in_period: number;
  hooks: { pending: number; flagged: number };
  /** Reading amoCRM's events feed (the hooks' backstop): null before the first read. */
  feed: FeedState | null;
}

export async function consoleHealth(db: Db, p: { from: string; to: string; bucket: 'hour' | 'day' }): Promise<Health> {
  const [health, feed] = await Promise.all([
    db.rpc<Omit<Health, 'feed'>>('amocrm_console_health', { p_from: p.from, p_to: p.to, p_bucket: p.bucket }),
    getFeedState(db),
  ]);
  return { ...health, feed };
}

export interface ConsoleItem {
  id: number;
  status: string;
  email: string | null;
  user_id: string;
  lesson_id: number;
  stage_number: number;
  attempts: number;
  code: string | null;
  reason: string | null;
  lead_id: number | null;
  created_at: string;
  updated_at: string;
  done_at: string | null;
  funnel_key?: string;
}

export interface EventFilter { status?: string; code?: string; lesson?: number; from?: string; to?: string; q?: string; beforeId?: number; limit?: number }

export const consoleEvents = (db: Db, f: EventFilter) =>
  db.rpc<{ items: ConsoleItem[]; next_before_id: number | null }>('amocrm_console_events', {
    p_status: f.status, p_code: f.code, p_lesson: f.lesson, p_from: f.from, p_to: f.to, p_q: f.q,
    p_before_id: f.beforeId, p_limit: f.limit,
  });

export interface Attempt { attempt: number; at: string; outcome: string; code: string | null; message: string | null }
export interface MirroredDeal { lead_id: number; pipeline_id: number | null; status_id: number | null; closed: 'won' | 'lost' | null; deleted: boolean; modified_at: string | null }
export interface StageChange { pipeline_id: number | null; status_id: number | null; old_status_id: number | null; changed_at: string; changed_by: number | null; source: string }

export const consoleEvent = (db: Db, id: number) =>
  db.rpc<{
    event: ConsoleItem & { next_attempt_at: string; retryable: boolean | null; contact_id: number | null; status_id: number | null };
    attempts: Attempt[];
    deal: MirroredDeal | null;
    history: StageChange[];
  } | null>('amocrm_console_event', { p_id: id });

export const consoleStudent = (db: Db, q: string) =>
  db.rpc<{
    user_id: string;
    email: string | null;
    events: ConsoleItem[];
    attempts: (Attempt & { event_id: number })[];
    remembered_lead_id: number | null;
    deal: MirroredDeal | null;
    history: StageChange[];
  } | null>('amocrm_console_student', { p_q: q });
