// The shared amoCRM rate limiter (GCRA): successive slots are 1/rate apart; a caller
// that would wait longer than p_max_wait_ms is refused and reserves nothing.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';

interface Slot {
  granted: boolean;
  wait_ms: number;
}
interface Timed extends Slot {
  sentAt: number;
  receivedAt: number;
}

describe('amocrm_take_rate_slot', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  beforeEach(async () => {
    // An idle limiter: its next free slot long past.
    await t.sql(`update amocrm.rate_limiter set next_free_at = now() - interval '10 seconds' where key = 'amocrm'`);
  });
  afterAll(async () => {
    await t?.close();
  });

  const take = async (perSecond: number, maxWaitMs: number): Promise<Timed> => {
    const sentAt = performance.now();
    const slot = await t.db.rpc<Slot>('amocrm_take_rate_slot', { p_per_second: perSecond, p_max_wait_ms: maxWaitMs });
    return { ...slot, sentAt, receivedAt: performance.now() };
  };
  const nextFreeAt = async (): Promise<number> =>
    new Date((await t.sql(`select next_free_at from amocrm.rate_limiter where key = 'amocrm'`))[0]!.next_free_at).getTime();

  /**
   * Slot i+1 is 1000/rate after slot i, and each wait is measured from the moment of the
   * call, so w[i+1] - w[i] = 1000/rate - (time between the two calls), give or take the
   * 1 ms of rounding up.
   */
  function expectSpaced(slots: Timed[], perSecond: number) {
    const interval = 1000 / perSecond;
    for (let i = 1; i < slots.length; i += 1) {
      const growth = slots[i]!.wait_ms - slots[i - 1]!.wait_ms;
      const between = slots[i]!.receivedAt - slots[i - 1]!.sentAt;
      expect(growth, `slot ${i}`).toBeLessThanOrEqual(interval + 1);
      expect(growth, `slot ${i}`).toBeGreaterThanOrEqual(interval - between - 1);
    }
  }

  it('spaces successive slots by 1000/rate ms', async () => {
    const slots: Timed[] = [];
    for (let i = 0; i < 5; i += 1) slots.push(await take(5, 10_000));
    expect(slots.map((s) => s.granted)).toEqual([true, true, true, true, true]);
    // The idle limiter grants the first slot at once, with no burst credit for the idle
    // time: the second waits a whole interval less the time the calls took (expectSpaced
    // measures that time instead of assuming it is small).
    expect(slots[0]!.wait_ms).toBe(0);
    expectSpaced(slots, 5);
    expect(slots[4]!.wait_ms).toBeGreaterThan(4 * 200 - (slots[4]!.receivedAt - slots[0]!.sentAt) - 1);
  });

  it('honours the rate it is given', async () => {
    const fast: Timed[] = [];
    for (let i = 0; i < 4; i += 1) fast.push(await take(20, 10_000));
    expectSpaced(fast, 20);
    expect(fast[3]!.wait_ms).toBeLessThanOrEqual(3 * 50 + 1);
    expect(fast[3]!.wait_ms).toBeGreaterThan(3 * 50 - (fast[3]!.receivedAt - fast[0]!.sentAt) - 1);
  });

  it('refuses beyond p_max_wait_ms and reserves nothing', async () => {
    // The queue pinned 10 s ahead: the refusals below hold however slowly the calls come.
    await t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + interval '10 seconds'`);
    const slots: Timed[] = [];
    for (let i = 0; i < 4; i += 1) slots.push(await take(5, 60_000));
    expect(slots.map((s) => s.granted)).toEqual([true, true, true, true]);
    const reservedUntil = await nextFreeAt();

    const refused = await take(5, 1000);
    expect(refused.granted).toBe(false);
    expect(refused.wait_ms).toBeGreaterThan(1000);
    expect(await nextFreeAt()).toBe(reservedUntil);

    // Several refusals in a row still reserve nothing.
    for (let i = 0; i < 3; i += 1) expect((await take(5, 0)).granted).toBe(false);
    expect(await nextFreeAt()).toBe(reservedUntil);

    // The next granted caller gets the slot right after the last granted one, not later.
    const next = await take(5, 60_000);
    expect(next.granted).toBe(true);
    expect(next.wait_ms).toBeLessThanOrEqual(slots[3]!.wait_ms + 200 + 1);
    expect(next.wait_ms).toBeGreaterThanOrEqual(slots[3]!.wait_ms + 200 - (next.receivedAt - slots[3]!.sentAt) - 1);
    expect(await nextFreeAt()).toBe(reservedUntil + 200);
  });

  it('grants a wait within p_max_wait_ms and refuses one beyond it', async () => {
    // The next free slot pinned 30 s ahead: the second call is refused unless it comes over
    // 20 s after the first, so the outcome does not depend on how fast this machine is.
    await t.sql(`update amocrm.rate_limiter set next_free_at = clock_timestamp() + interval '30 seconds'`);
    const granted = await take(5, 60_000);
    expect(granted.granted).toBe(true);
    expect(granted.wait_ms).toBeLessThanOrEqual(30_000 + 1);
    const refused = await take(5, 10_000);
    expect(refused.granted).toBe(false);
    expect(refused.wait_ms).toBeGreaterThan(10_000);
  });

  it('rejects a rate that is not positive', async () => {
    await expect(take(0, 1000)).rejects.toMatchObject({ code: '22023' });
    await expect(take(-1, 1000)).rejects.toMatchObject({ code: '22023' });
  });
});
