// Retention (supabase/migrations/20261208000700_amocrm_retention.sql, lib/sync/retention.ts):
// each rule removes or reduces what it should, and nothing that exactly-once (a retried
// hook's request_id, a completion's event row, the stage history's duplicate check) or a
// replay (dead/failed/parked events and their attempts) still needs goes early.
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { retentionBatch } from '../../lib/db/retention.ts';
import { runRetention } from '../../lib/sync/retention.ts';
import { memoryLogger } from '../../lib/log.ts';
import type { Runtime } from '../../lib/runtime.ts';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';
import { completeLesson, createUser, deleteSetting, setSetting, uniqueEmail } from './support.ts';

let t: TestDatabase;
beforeAll(async () => { t = await createTestDatabase(); });
afterAll(async () => { await t?.close(); });

const log = memoryLogger();
const rt = () => ({ db: t.db, log, clock: { now: () => Date.now() } }) as unknown as Runtime;
/** Every rule until none has a full batch left. */
const drain = () => runRetention(rt(), { budgetMs: 60_000 });
const days = (n: number) => `${n} days`;

const BODY = JSON.stringify({ leads: { status: [{ id: 1, name: 'Иванова Мария' }] }, contacts: { phone: '+77010000000' } });
async function delivery(requestId: string, status: string, ageDays: number): Promise<number> {
  const [row] = await t.sql(
    `insert into amocrm.crm_deliveries (request_id, status, body, body_bytes, changes, received_at, applied_at)
     values ($1, $2, $3, length($3), $4::jsonb, now() - $5::interval, case when $2 = 'applied' then now() - $5::interval end) returning id`,
    [requestId, status, BODY, JSON.stringify([{ lead_id: 1, action: 'status', status_id: 5, name: 'Иванова Мария', modified_at: 1 }]), days(ageDays)]);
  return Number(row!.id);
}
const deliveryRow = async (id: number) => (await t.sql('select * from amocrm.crm_deliveries where id = $1', [id]))[0];

async function event(status: string, ageDays: number, attempts: number[] = []): Promise<number> {
  const user = await createUser(t, uniqueEmail('ret'));
  const [row] = await t.sql(
    `insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, status, attempts, last_error, last_error_code, created_at, updated_at, finished_at, done_at)
     values ($1, 'x@y.kz', 67, 1, $2, $3, 'amoCRM answered 400 for Иванова', 'contact_not_found', now() - $4::interval, now() - $4::interval, now() - $4::interval,
             case when $2 = 'done' then now() - $4::interval end) returning id`,
    [user, status, attempts.length, days(ageDays)]);
  const id = Number(row!.id);
  for (const [i, age] of attempts.entries()) {
    await t.sql(`insert into amocrm.event_attempts (event_id, attempt, at, outcome) values ($1, $2, now() - $3::interval, $4)`,
      [id, i + 1, days(age), i === attempts.length - 1 ? status : 'failed']);
  }
  return id;
}
const attemptsOf = async (id: number) => Number((await t.sql('select count(*)::int as n from amocrm.event_attempts where event_id = $1', [id]))[0]!.n);

describe('raw hook bodies and delivery rows', () => {
  it('empties bodies after 7 days (flagged: 30), drops the deal name, keeps the request_id; removes rows after 30 (flagged: 60); never a pending one', async () => {
    const fresh = await delivery('r-fresh', 'applied', 1);
    const week = await delivery('r-week', 'applied', 8);
    const ignored = await delivery('r-ignored', 'ignored', 8);
    const flaggedWeek = await delivery('r-flagged-8', 'flagged', 8);
    const flaggedMonth = await delivery('r-flagged-31', 'flagged', 31);
    const old = await delivery('r-old', 'applied', 31);
    const flaggedOld = await delivery('r-flagged-61', 'flagged', 61);
    const pendingOld = await delivery('r-pending', 'pending', 200);

    const report = await drain();
    expect(report.deliveries_reduced).toBeGreaterThanOrEqual(3);
    expect(report.deliveries_removed).toBeGreaterThanOrEqual(1);

    expect((await deliveryRow(fresh))!.body).toBe(BODY);
    expect((await deliveryRow(flaggedWeek))!.body).toBe(BODY);
    for (const id of [week, ignored, flaggedMonth]) {
      const row = (await deliveryRow(id))!;
      expect(row.body).toBe('');
      expect(JSON.stringify(row.changes)).not.toContain('Иванова');
      expect(row.changes).toEqual([{ lead_id: 1, action: 'status', status_id: 5, modified_at: 1 }]); // what the mirror and history need
      expect(row.body_bytes).toBeGreaterThan(0);
    }
    expect(await deliveryRow(old)).toBeUndefined();
    expect(await deliveryRow(flaggedOld)).toBeUndefined(); // 30 days after its body
    expect((await deliveryRow(pendingOld))!.body).toBe(BODY); // the applier still needs it
  });

  it('a retry of a reduced delivery is still the same delivery (exactly-once by request_id)', async () => {
    const id = await delivery('r-retry', 'applied', 10);
    await drain();
    expect((await deliveryRow(id))!.body).toBe('');
    const again = await t.db.rpc<{ id: number; duplicate: boolean }>('amocrm_record_delivery', {
      p_request_id: 'r-retry', p_body: BODY, p_body_bytes: BODY.length, p_changes: [], p_status: 'pending' });
    expect(again).toEqual({ id, duplicate: true });
  });

  it('a row is never removed within a week, whatever the setting says', async () => {
    await setSetting(t, 'retention_deliveries_days', 1);
    const id = await delivery('r-six-days', 'applied', 6);
    await drain();
    expect(await deliveryRow(id)).toBeDefined();
    await deleteSetting(t, 'retention_deliveries_days'); // missing: the default (30)
    const old = await delivery('r-default', 'applied', 95);
    await drain();
    expect(await deliveryRow(old)).toBeUndefined();
  });
});

describe('attempts and finished events', () => {
  it('removes attempts of done/skipped events after 90 days, counted into the rollup first; dead/failed/parked keep theirs', async () => {
    const done = await event('done', 120, [121, 120]);
    const skipped = await event('skipped', 100, [100]);
    const recent = await event('done', 30, [31, 30]);
    const kept = { dead: await event('dead', 150, [152, 151, 150]), failed: await event('failed', 150, [150]), parked: await event('parked', 150, [150]) };
    const hour = (await t.sql(`select date_trunc('hour', at) as h from amocrm.event_attempts where event_id = $1 and attempt = 2`, [done]))[0]!.h as Date;
    const from = new Date(hour).toISOString();
    const to = new Date(new Date(hour).getTime() + 3600_000).toISOString();
    const counted = async () => (await t.sql(`select key, n::int from amocrm.console_period_counts($1, $2) where kind = 'attempt' and n > 0 order by key`, [from, to]));
    const before = await t.sql(`select outcome as key, count(*)::int as n from amocrm.event_attempts where at >= $1 and at < $2 group by 1 order by 1`, [from, to]);

    await drain();
    expect(await attemptsOf(done)).toBe(0);
    expect(await attemptsOf(skipped)).toBe(0);
    expect(await attemptsOf(recent)).toBe(2);
    expect([await attemptsOf(kept.dead), await attemptsOf(kept.failed), await attemptsOf(kept.parked)]).toEqual([3, 1, 1]);

    // The hour's attempts are still counted, even when the hour is counted again (an old
    // event's status changed and marked it dirty).
    expect(await counted()).toEqual(before);
    await t.sql(`update amocrm.console_rollup_hours set dirty = true where hour = $1`, [hour]);
    expect(await counted()).toEqual(before);
  });

  it('clears the last error of old done/skipped events, keeps their rows: the reconcile makes no second event', async () => {
    const user = await createUser(t, uniqueEmail('ret-once'));
    await completeLesson(t, user, 67); // the trigger records the event
    await t.sql(`update amocrm.sync_events set status = 'done', last_error = 'old text', updated_at = now() - interval '100 days',
                   created_at = now() - interval '100 days', done_at = now() - interval '100 days' where user_id = $1`, [user]);
    const dead = await event('dead', 200);
    await drain();
    const rows = await t.sql('select status, last_error from amocrm.sync_events where user_id = $1', [user]);
    expect(rows).toEqual([{ status: 'done', last_error: null }]);
    await t.sql('select public.amocrm_reconcile()');
    expect(await t.sql('select count(*)::int as n from amocrm.sync_events where user_id = $1', [user])).toEqual([{ n: 1 }]);
    expect((await t.sql('select last_error from amocrm.sync_events where id = $1', [dead]))[0]!.last_error).toContain('400'); // replay reads it
  });
});

describe('the mirror\'s history and the platform\'s changes (opt-in)', () => {
  async function history(lead: number, ageDays: number): Promise<void> {
    await t.sql(`insert into amocrm.deal_stage_history (lead_id, pipeline_id, status_id, changed_at, source, recorded_at)
                 values ($1, 1, $2, now() - $3::interval, 'hook', now() - $3::interval)`, [lead, 100 + ageDays, days(ageDays)]);
  }
  const historyOf = async (lead: number) => (await t.sql('select status_id::int from amocrm.deal_stage_history where lead_id = $1 order by changed_at', [lead])).map((r) => r.status_id);

  it('kept by default', async () => {
    await history(9001, 400); await history(9001, 300);
    await t.sql(`insert into amocrm.deal_changes (lead_id, kind, changed_at, source, created_at) values (9001, 'won', now() - interval '400 days', 'hook', now() - interval '400 days')`);
    await drain();
    expect(await historyOf(9001)).toEqual([500, 400]);
    expect(await t.sql('select count(*)::int as n from amocrm.deal_changes where lead_id = 9001')).toEqual([{ n: 1 }]);
  });

  it('opted in: old history goes but never a deal\'s latest row nor anything within 180 days; deal_changes after its days (at least 30)', async () => {
    await history(9002, 400); await history(9002, 200); await history(9002, 150); await history(9002, 100);
    await history(9003, 400); // the only row: the deal's latest word
    await t.sql(`insert into amocrm.deal_changes (lead_id, kind, changed_at, source, created_at)
                 values (9002, 'won', now() - interval '40 days', 'hook', now() - interval '40 days'),
                        (9002, 'lost', now() - interval '20 days', 'hook', now() - interval '20 days')`);
    await setSetting(t, 'retention_history_days', 10); // below the floor: 180 applies
    await setSetting(t, 'retention_changes_days', 1); // below the floor: 30 applies
    await drain();
    expect(await historyOf(9002)).toEqual([250, 200]); // 400 and 200 days old: gone

    expect(await historyOf(9003)).toEqual([500]);
    expect(await t.sql(`select kind from amocrm.deal_changes where lead_id = 9002`)).toEqual([{ kind: 'lost' }]);
    await setSetting(t, 'retention_history_days', 0);
    await setSetting(t, 'retention_changes_days', 0);
  });
});

describe('the worker', () => {
  it('works in batches until done and logs one line for a run that removed anything, none for one that did not', async () => {
    for (let i = 0; i < 7; i++) await delivery(`r-batch-${i}`, 'applied', 100);
    log.lines.length = 0;
    const report = await runRetention(rt(), { budgetMs: 60_000, batch: 3 });
    expect(report).toMatchObject({ deliveries_removed: 7, batches: 3, stoppedBy: 'done' });
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]).toMatch(/^✅ \[AmoCRM\] .* deliveries_removed=7 .*batches=3/);
    log.lines.length = 0;
    expect(await retentionBatch(t.db)).toMatchObject({ deliveries_removed: 0, batch: 500 });
    await drain();
    expect(log.lines).toEqual([]);
  });

});

describe.runIf(usingPostgres)('never a long lock (PostgreSQL)', () => {
  it('rows another transaction holds are skipped, not waited for, and taken by a later run', async () => {
    const held = await delivery('r-held', 'applied', 40);
    const free = await delivery('r-free', 'applied', 40);
    const [{ db }] = (await t.sql('select current_database() as db')) as [{ db: string }];
    const url = new URL(process.env.DATABASE_URL!);
    url.pathname = `/${db}`;
    const other = new pg.Client({ connectionString: url.toString() });
    await other.connect();
    try {
      await other.query('begin');
      await other.query('select id from amocrm.crm_deliveries where id = $1 for update', [held]);
      const started = Date.now();
      await drain();
      expect(Date.now() - started).toBeLessThan(5_000);
      expect(await deliveryRow(free)).toBeUndefined();
      expect((await deliveryRow(held))!.body).toBe(BODY);
      await other.query('commit');
      await drain();
      expect(await deliveryRow(held)).toBeUndefined();
    } finally {
      await other.end();
    }
  });
});
