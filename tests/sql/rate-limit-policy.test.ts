// The shared limiter's policy in SQL: reservations reach a bounded horizon, the token
// refresh goes ahead of the queue, and a 429 pauses everyone and halves the rate, which
// then recovers slowly. Concurrent reports of one 429 storm halve it once (PostgreSQL).
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';

type Slot = { granted: boolean; queued?: boolean; wait_ms: number; retry_in_ms?: number; rate: number };

let t: TestDatabase;
beforeAll(async () => { t = await createTestDatabase(); });
afterAll(async () => { await t?.close(); });
beforeEach(async () => {
  await t.sql(`update amocrm.rate_limiter set next_free_at = now() - interval '10 seconds', paused_until = null,
                 rate_factor = 1, penalized_at = null, priority_next_at = null, recent_slots = '{}'`);
});

const take = (args: Record<string, unknown>) => t.db.rpc<Slot>('amocrm_take_rate_slot', { p_per_second: 6, p_max_wait_ms: 10_000, ...args });
const row = async () => (await t.sql(`select *, extract(epoch from next_free_at - clock_timestamp()) * 1000 as free_in_ms,
                                        extract(epoch from paused_until - clock_timestamp()) * 1000 as pause_left_ms from amocrm.rate_limiter`))[0]!;

describe('reservation horizon', () => {
  it('a caller further back than the horizon is told to come back, and nothing is reserved', async () => {
    await t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + interval '1500 milliseconds'`);
    const before = (await row()).next_free_at;
    const slot = await take({ p_horizon_ms: 1000 });
    expect(slot).toMatchObject({ granted: false, queued: true });
    expect(slot.retry_in_ms!).toBeGreaterThan(400);
    expect(slot.retry_in_ms!).toBeLessThanOrEqual(1000);
    expect((await row()).next_free_at).toEqual(before);
  });

  it('without a horizon the queue is bounded only by the caller\'s patience (as before)', async () => {
    await t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + interval '1500 milliseconds'`);
    expect(await take({})).toMatchObject({ granted: true });
    expect(await take({ p_max_wait_ms: 500 })).toMatchObject({ granted: false, queued: false });
  });
});

describe('the refresh goes ahead of the queue', () => {
  it('a priority slot is granted now while ordinary ones wait, and pushes the queue back by one slot', async () => {
    for (let i = 0; i < 6; i++) await take({});
    const before = await row();
    expect(Number(before.free_in_ms)).toBeGreaterThan(0); // an ordinary caller would wait now
    const askedAt = performance.now();
    const priority = await take({ p_priority: true });
    expect(priority).toMatchObject({ granted: true, wait_ms: 0 });
    const after = await row();
    // Exactly one slot gap (1/6 s) later than before.
    expect(new Date(after.next_free_at).getTime() - new Date(before.next_free_at).getTime()).toBeCloseTo(1000 / 6, -1);
    // At most one priority start per second: the second waits for what is left of the
    // first's second, however long the calls themselves took on a loaded machine.
    const second = await take({ p_priority: true });
    const elapsed = performance.now() - askedAt;
    expect(second.wait_ms).toBeGreaterThan(0);
    expect(second.wait_ms + elapsed).toBeGreaterThanOrEqual(995);
  });
});

describe('a 429', () => {
  it('pauses every caller for what amoCRM asked (at least 1 s) and halves the rate', async () => {
    await t.db.rpc('amocrm_report_rate_limited', { p_retry_after_ms: 3000 });
    const r = await row();
    expect(Number(r.rate_factor)).toBe(0.5);
    expect(Number(r.pause_left_ms)).toBeGreaterThan(2500);
    const slot = await take({});
    expect(slot.wait_ms).toBeGreaterThan(2500);
    expect(slot.rate).toBeCloseTo(3, 1);
    const noWait = await t.db.rpc<{ paused_until: string }>('amocrm_report_rate_limited', {});
    expect(Date.parse(noWait.paused_until)).toBeGreaterThanOrEqual(Date.parse(r.paused_until)); // a shorter ask never shortens a pause
  });

  it('reports of one storm halve the rate once per second, not once per report', async () => {
    for (let i = 0; i < 5; i++) await t.db.rpc('amocrm_report_rate_limited', {});
    const r = await row();
    expect(Number(r.rate_factor)).toBe(0.5);
    expect(Number(r.rate_limited_total)).toBeGreaterThanOrEqual(5);
  });

  it('the rate recovers slowly: half a minute after a halving it is 0.625 of the full rate, after two minutes full', async () => {
    await t.sql(`update amocrm.rate_limiter set rate_factor = 0.5, penalized_at = clock_timestamp() - interval '30 seconds'`);
    expect((await take({})).rate).toBeCloseTo(6 * 0.625, 1);
    await t.sql(`update amocrm.rate_limiter set rate_factor = 0.5, penalized_at = clock_timestamp() - interval '121 seconds'`);
    expect((await take({})).rate).toBe(6);
  });

  it('never goes below a quarter of the rate', async () => {
    await t.sql(`update amocrm.rate_limiter set rate_factor = 0.25, penalized_at = clock_timestamp() - interval '5 seconds'`);
    await t.db.rpc('amocrm_report_rate_limited', {});
    expect(Number((await row()).rate_factor)).toBe(0.25);
  });
});

describe.runIf(usingPostgres)('a 429 storm reported by 20 instances at once (PostgreSQL)', () => {
  it('halves the rate exactly once', async () => {
    const db = await t.newDb(20);
    const before = Number((await row()).rate_limited_total);
    await Promise.all(Array.from({ length: 20 }, () => db.rpc('amocrm_report_rate_limited', { p_retry_after_ms: 1000 })));
    const r = await row();
    expect(Number(r.rate_factor)).toBe(0.5);
    expect(Number(r.rate_limited_total) - before).toBe(20); // every report counted, no lost update
  });
});
