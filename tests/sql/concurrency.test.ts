// Races that only a real server can run: many connections calling the same RPC at once.
// PGlite runs one query at a time, so these run on PostgreSQL only (DATABASE_URL).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Db } from '../../lib/db/port.ts';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';
import { createUser, insertEvent, uniqueEmail } from './support.ts';

type J = Record<string, any>;
const inAnHour = () => new Date(Date.now() + 3600_000);
const times = <T>(n: number, f: (i: number) => Promise<T>) => Promise.all(Array.from({ length: n }, (_, i) => f(i)));
/** Polls a condition (no fixed sleep): resolves as soon as it holds, fails after 20 s. */
async function until(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.runIf(usingPostgres)('concurrency (PostgreSQL)', () => {
  let t: TestDatabase;
  let db: Db;
  beforeAll(async () => {
    t = await createTestDatabase();
    // A probe for the rate-slot race: the answer, the slot it reserved, and the server clock
    // when it was answered.
    await t.sql(`
      create function public.test_timed_rate_slot(p_per_second numeric, p_max_wait_ms integer)
      returns jsonb language plpgsql set search_path = '' as $$
      declare
        r jsonb;
      begin
        r := public.amocrm_take_rate_slot(p_per_second, p_max_wait_ms);
        -- The limiter row is still locked by this transaction: the slot just granted is
        -- its next free time minus one interval.
        return r || jsonb_build_object(
          'answered_at_ms', extract(epoch from clock_timestamp()) * 1000,
          'slot_ms', (select extract(epoch from l.next_free_at - make_interval(secs => 1.0 / p_per_second)) * 1000
                        from amocrm.rate_limiter l where l.key = 'amocrm'));
      end $$`);
    await t.sql('grant execute on function public.test_timed_rate_slot(numeric, integer) to service_role');
    db = await t.newDb(20);
    // Open all 20 connections up front, so the races start together.
    await times(20, () => db.rpc('amocrm_get_pipeline', { p_pipeline_id: 0 }));
  });
  afterAll(async () => {
    await t?.close();
  });

  const rpc = (fn: string, args: J = {}) => db.rpc<J>(fn, args);
  const seedTokens = async () => {
    await t.sql(`delete from amocrm.system_settings where key = 'amocrm_tokens'`);
    await rpc('amocrm_seed_tokens', { p_kind: 'oauth', p_access_token: 'A1', p_refresh_token: 'R1', p_expires_at: inAnHour() });
  };

  it('20 concurrent amocrm_claim_event on one event: exactly one claims it', async () => {
    const user = await createUser(t, uniqueEmail());
    const rec = await rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 67 });
    const results = await times(20, (i) => rpc('amocrm_claim_event', { p_event_id: rec.event_id, p_holder: `h${i}` }));
    const winners = results.map((r, i) => ({ r, i })).filter(({ r }) => r.claimed);
    expect(winners).toHaveLength(1);
    expect(results.filter((r) => !r.claimed).map((r) => r.reason)).toEqual(Array(19).fill('in_flight'));
    const row = (await t.sql('select lease_holder, attempts from amocrm.sync_events where id = $1', [rec.event_id]))[0]!;
    expect(row).toEqual({ lease_holder: `h${winners[0]!.i}`, attempts: 1 });
  });

  it('20 concurrent amocrm_record_event for the same completion: one event, one created', async () => {
    const user = await createUser(t, uniqueEmail());
    const results = await times(20, () => rpc('amocrm_record_event', { p_user_id: user, p_lesson_id: 68 }));
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(new Set(results.map((r) => r.event_id)).size).toBe(1);
    expect(await t.sql('select id from amocrm.sync_events where user_id = $1', [user])).toHaveLength(1);
  });

  it("one student's two events claimed at once by 10 callers each: only one runs", async () => {
    await t.sql('delete from amocrm.sync_events');
    const user = await createUser(t, uniqueEmail());
    const a = await insertEvent(t, { user_id: user, lesson_id: 67 });
    const b = await insertEvent(t, { user_id: user, lesson_id: 68, stage_number: 2 });
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      rpc('amocrm_claim_event', { p_event_id: i % 2 ? a : b, p_holder: `h${i}` })));
    expect(answers.filter((x) => x.claimed)).toHaveLength(1);
    expect(new Set(answers.filter((x) => !x.claimed).map((x) => x.reason))).toEqual(new Set(['student_busy', 'in_flight']));
    expect((await t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = $1 and status = 'processing'`, [user]))[0]!.n).toBe(1);
  });

  it('2 overlapping amocrm_claim_due callers over 50 due events: disjoint sets whose union is all 50', async () => {
    await t.sql('delete from amocrm.sync_events');
    const user = await createUser(t, uniqueEmail());
    const ids: number[] = [];
    // One student per event: a student's own events are claimed one at a time.
    for (let i = 0; i < 50; i += 1) ids.push(await insertEvent(t, { user_id: await createUser(t, uniqueEmail()), lesson_id: 1000 + i }));
    await t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second'`);

    // Each caller keeps claiming small batches until nothing is left, as overlapping
    // scheduled runs would.
    const drain = async (holder: string): Promise<number[]> => {
      const mine: number[] = [];
      for (;;) {
        const batch = (await rpc('amocrm_claim_due', { p_holder: holder, p_limit: 3 })) as unknown as J[];
        if (batch.length === 0) return mine;
        mine.push(...batch.map((e) => e.id as number));
      }
    };
    const [a, b] = await Promise.all([drain('run-a'), drain('run-b')]);
    expect(a.length).toBeGreaterThan(0);
    expect(b.length).toBeGreaterThan(0);
    expect(a.filter((id) => b.includes(id))).toEqual([]);
    expect([...a, ...b].sort((x, y) => x - y)).toEqual([...ids].sort((x, y) => x - y));
    const rows = await t.sql('select lease_holder, attempts, count(*)::int as n from amocrm.sync_events group by 1, 2 order by 1');
    expect(rows).toEqual([
      { lease_holder: 'run-a', attempts: 1, n: a.length },
      { lease_holder: 'run-b', attempts: 1, n: b.length },
    ]);
  });

  it('2 callers asking for all 50 at once: still disjoint, union all 50', async () => {
    await t.sql('delete from amocrm.sync_events');
    const user = await createUser(t, uniqueEmail());
    for (let i = 0; i < 50; i += 1) await insertEvent(t, { user_id: await createUser(t, uniqueEmail()), lesson_id: 2000 + i });
    await t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second'`);
    const [a, b] = (await Promise.all([
      rpc('amocrm_claim_due', { p_holder: 'x', p_limit: 50 }),
      rpc('amocrm_claim_due', { p_holder: 'y', p_limit: 50 }),
    ])) as unknown as J[][];
    const ia = a!.map((e) => e.id as number);
    const ib = b!.map((e) => e.id as number);
    expect(ia.filter((id) => ib.includes(id))).toEqual([]);
    expect(new Set([...ia, ...ib]).size).toBe(50);
  });

  it('20 concurrent amocrm_begin_refresh: exactly one acquires', async () => {
    await seedTokens();
    const results = await times(20, (i) => rpc('amocrm_begin_refresh', { p_holder: `r${i}`, p_lease_seconds: 30 }));
    const acquired = results.map((r, i) => ({ r, i })).filter(({ r }) => r.acquired);
    expect(acquired).toHaveLength(1);
    expect(results.filter((r) => r.refresh_token !== undefined)).toHaveLength(1);
    const row = (await t.sql(`select lease_holder from amocrm.system_settings where key = 'amocrm_tokens'`))[0]!;
    expect(row.lease_holder).toBe(`r${acquired[0]!.i}`);
  });

  it('20 concurrent amocrm_finish_refresh with the same expected version: exactly one stores', async () => {
    await seedTokens();
    const lease = await rpc('amocrm_begin_refresh', { p_holder: 'r' });
    const results = await times(20, (i) =>
      rpc('amocrm_finish_refresh', {
        p_holder: 'r',
        p_expected_version: lease.version,
        p_access_token: `A-${i}`,
        p_refresh_token: `R-${i}`,
        p_expires_at: inAnHour(),
      }),
    );
    const stored = results.map((r, i) => ({ r, i })).filter(({ r }) => r.stored);
    expect(stored).toHaveLength(1);
    const row = (await t.sql(`select version, value from amocrm.system_settings where key = 'amocrm_tokens'`))[0]!;
    expect(Number(row.version)).toBe(Number(lease.version) + 1);
    // The stored pair is the winner's, whole (never one caller's access with another's refresh).
    expect(row.value).toMatchObject({ access_token: `A-${stored[0]!.i}`, refresh_token: `R-${stored[0]!.i}` });
  });

  it('20 concurrent amocrm_abort_refresh(needs_reauth): became_broken exactly once', async () => {
    await seedTokens();
    await rpc('amocrm_begin_refresh', { p_holder: 'r' });
    const results = await times(20, (i) =>
      rpc('amocrm_abort_refresh', { p_holder: i === 0 ? 'r' : `other${i}`, p_needs_reauth: true, p_problem: 'invalid_grant' }),
    );
    expect(results.filter((r) => r.became_broken === true)).toHaveLength(1);
    expect(results.filter((r) => r.became_broken === false)).toHaveLength(19);
  });

  it('60 concurrent amocrm_take_rate_slot(7, 100000): distinct slots, >= 1000/7 ms apart', async () => {
    await t.sql(`update amocrm.rate_limiter set next_free_at = now() - interval '10 seconds' where key = 'amocrm'`);
    const interval = 1000 / 7;
    const results = await times(60, () =>
      db.rpc<{ granted: boolean; wait_ms: number; slot_ms: number; answered_at_ms: number }>('test_timed_rate_slot', {
        p_per_second: 7,
        p_max_wait_ms: 100_000,
      }),
    );
    expect(results.filter((r) => r.granted)).toHaveLength(60);

    // The reserved slots: 60 distinct, back to back, exactly 1000/7 ms apart (no two
    // callers on one slot, no lost update of the limiter row).
    const slots = results.map((r) => r.slot_ms).sort((a, b) => a - b);
    const slotGaps = slots.slice(1).map((x, i) => x - slots[i]!);
    expect(Math.min(...slotGaps), `slot gaps: ${slotGaps.join(',')}`).toBeGreaterThan(interval - 0.01);
    expect(Math.max(...slotGaps), `slot gaps: ${slotGaps.join(',')}`).toBeLessThan(interval + 0.01);

    // A caller starts wait_ms after its answer, so it starts in its slot no earlier than
    // the slot (slot - wait_ms is not after the answer). How long after is the machine's
    // business, not an assertion here (see the next test for the clock it is measured from).
    const lags = results.map((r) => r.answered_at_ms - (r.slot_ms - r.wait_ms));
    expect(Math.min(...lags)).toBeGreaterThanOrEqual(-0.01);

    // As the callers see it: sorted, the waits grow by at most 1000/7 ms per slot (less
    // the time between two answers, the row lock's hand-off). They can never grow by
    // more: a wait measured from a stale clock would.
    const waits = results.map((r) => r.wait_ms).sort((a, b) => a - b);
    const waitGaps = waits.slice(1).map((w, i) => w - waits[i]!);
    expect(Math.max(...waitGaps), `wait_ms gaps: ${waitGaps.join(',')}`).toBeLessThanOrEqual(Math.ceil(interval));
  });

  it('a caller that queued for the limiter row measures its wait from when it got the row', async () => {
    // Connection A holds the row; B asks for a slot and blocks. A lets go only once B is
    // seen waiting (and a little later, so a stale clock would be visibly stale), after
    // setting the next free slot to T and reading its clock R. B's clock is read after A
    // commits, so B's wait ends at T: T - wait_ms >= R (less 1 ms: wait_ms is rounded up).
    // Had B read the clock before it queued, T - wait_ms would be before R. No timing in
    // the assertion: a slow machine only moves R and B's answer later together.
    await t.sql(`update amocrm.rate_limiter set next_free_at = now() - interval '10 seconds' where key = 'amocrm'`);
    await t.sql(`
      create or replace function public.test_hold_rate_row() returns jsonb
      language plpgsql set search_path = '' as $$
      declare
        v_deadline timestamptz := clock_timestamp() + interval '20 seconds';
        v_free timestamptz;
      begin
        perform 1 from amocrm.rate_limiter l where l.key = 'amocrm' for update;
        while not exists (select 1 from pg_catalog.pg_stat_activity a
                           where a.pid <> pg_catalog.pg_backend_pid() and a.wait_event_type = 'Lock'
                             and a.query like '%amocrm_take_rate_slot%') loop
          if clock_timestamp() > v_deadline then
            raise exception 'no caller queued for the limiter row within 20 s';
          end if;
          perform pg_catalog.pg_sleep(0.01);
          -- pg_stat_activity is read once per transaction unless the snapshot is dropped.
          perform pg_catalog.pg_stat_clear_snapshot();
        end loop;
        perform pg_catalog.pg_sleep(0.2);
        update amocrm.rate_limiter l set next_free_at = clock_timestamp() + interval '500 milliseconds'
         where l.key = 'amocrm' returning l.next_free_at into v_free;
        return jsonb_build_object('free_ms', extract(epoch from v_free) * 1000,
                                  'released_ms', extract(epoch from clock_timestamp()) * 1000);
      end $$`);
    const holding = t.sql('select public.test_hold_rate_row() as r');
    // B asks only once A holds the row (a NOWAIT lock attempt fails while it does).
    await until(async () => {
      try {
        await t.sql(`select 1 from amocrm.rate_limiter where key = 'amocrm' for update nowait`);
        return false;
      } catch (err) {
        if ((err as { code?: string }).code === '55P03') return true;
        throw err;
      }
    }, 'connection A to hold the limiter row');
    const answer = await rpc('amocrm_take_rate_slot', { p_per_second: 7, p_max_wait_ms: 10_000 });
    const { r } = (await holding)[0]! as { r: { free_ms: number; released_ms: number } };
    expect(answer.granted).toBe(true);
    expect(r.free_ms - answer.wait_ms, `T=${r.free_ms} R=${r.released_ms} wait_ms=${answer.wait_ms}`)
      .toBeGreaterThanOrEqual(r.released_ms - 1);
  });
});
