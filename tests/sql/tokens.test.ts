// The token store: seed once, never hand out the refresh token except to the one
// refresher, a refresh lease, compare-and-swap on the chain's version, and repair.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, type Row, type TestDatabase } from '../helpers/db.ts';
import { createUser, insertEvent, uniqueEmail } from './support.ts';

type J = Record<string, any>;
const inAnHour = () => new Date(Date.now() + 3600_000);

describe('tokens', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  beforeEach(async () => {
    await t.sql(`delete from amocrm.system_settings where key = 'amocrm_tokens'`);
  });
  afterAll(async () => {
    await t?.close();
  });

  const rpc = (fn: string, args: J = {}) => t.db.rpc<J>(fn, args);
  const tokenRow = async (): Promise<Row> =>
    (await t.sql(`select * from amocrm.system_settings where key = 'amocrm_tokens'`))[0]!;
  const seed = (kind = 'oauth', access = 'A1', refresh = 'R1') =>
    rpc('amocrm_seed_tokens', { p_kind: kind, p_access_token: access, p_refresh_token: refresh, p_expires_at: inAnHour() });

  describe('amocrm_seed_tokens', () => {
    it('seeds only an empty table', async () => {
      expect(await rpc('amocrm_get_tokens')).toEqual({ present: false });
      expect(await seed('oauth', 'A1', 'R1')).toEqual({ seeded: true });
      expect(await seed('oauth', 'A-env', 'R-env')).toEqual({ seeded: false });
      expect(await seed('long_lived', 'L', '')).toEqual({ seeded: false });
      const r = await tokenRow();
      expect(r.value).toMatchObject({ kind: 'oauth', access_token: 'A1', refresh_token: 'R1', auth_state: 'ok' });
      expect(Number(r.version)).toBe(1);
    });

    it('rejects an unknown kind', async () => {
      await expect(seed('magic')).rejects.toMatchObject({ code: '22023' });
      expect(await rpc('amocrm_get_tokens')).toEqual({ present: false });
    });
  });

  describe('amocrm_get_tokens', () => {
    it('never returns the refresh token', async () => {
      await seed('oauth', 'ACCESS-1', 'REFRESH-SECRET-1');
      const got = await rpc('amocrm_get_tokens');
      expect(got).toMatchObject({
        present: true,
        kind: 'oauth',
        access_token: 'ACCESS-1',
        has_refresh_token: true,
        auth_state: 'ok',
        refreshing: false,
        version: 1,
      });
      expect(JSON.stringify(got)).not.toContain('REFRESH-SECRET-1');
      expect(Object.keys(got)).not.toContain('refresh_token');

      // Not while refreshing either, nor after a rotation.
      const lease = await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      expect(lease.refresh_token).toBe('REFRESH-SECRET-1');
      const during = await rpc('amocrm_get_tokens');
      expect(during.refreshing).toBe(true);
      expect(JSON.stringify(during)).not.toContain('REFRESH-SECRET-1');
      await rpc('amocrm_finish_refresh', {
        p_holder: 'h',
        p_expected_version: lease.version,
        p_access_token: 'ACCESS-2',
        p_refresh_token: 'REFRESH-SECRET-2',
        p_expires_at: inAnHour(),
      });
      const after = await rpc('amocrm_get_tokens');
      expect(after).toMatchObject({ access_token: 'ACCESS-2', version: 2, refreshing: false });
      expect(JSON.stringify(after)).not.toMatch(/REFRESH-SECRET/);
    });
  });

  describe('amocrm_begin_refresh', () => {
    it('one acquirer at a time: the second caller gets acquired=false and the version to wait on', async () => {
      await seed('oauth', 'A1', 'R1');
      const first = await rpc('amocrm_begin_refresh', { p_holder: 'first', p_lease_seconds: 30 });
      expect(first).toEqual({ acquired: true, version: 1, refresh_token: 'R1' });
      const second = await rpc('amocrm_begin_refresh', { p_holder: 'second', p_lease_seconds: 30 });
      expect(second).toMatchObject({ acquired: false, version: 1 });
      expect(second.refresh_token).toBeUndefined();
      expect(await tokenRow()).toMatchObject({ lease_holder: 'first' });

      // An expired lease (the refresher died) can be taken over.
      await t.sql(`update amocrm.system_settings set lease_until = now() - interval '1 second' where key = 'amocrm_tokens'`);
      expect(await rpc('amocrm_begin_refresh', { p_holder: 'third' })).toMatchObject({ acquired: true });
      expect(await tokenRow()).toMatchObject({ lease_holder: 'third' });
    });

    it('is never acquired for a long_lived token', async () => {
      await seed('long_lived', 'LONG', '');
      const res = await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      expect(res).toMatchObject({ acquired: false, kind: 'long_lived' });
      expect(res.refresh_token).toBeUndefined();
      expect(await tokenRow()).toMatchObject({ lease_holder: null, lease_until: null });
    });

    it('is never acquired when the chain needs re-authorisation', async () => {
      await seed('oauth', 'A1', 'R1');
      expect(await rpc('amocrm_mark_needs_reauth', { p_problem: 'refresh token revoked' })).toEqual({ became_broken: true });
      expect(await rpc('amocrm_mark_needs_reauth', { p_problem: 'again' })).toEqual({ became_broken: false });
      const res = await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      expect(res).toMatchObject({ acquired: false, auth_state: 'needs_reauth' });
      expect(res.refresh_token).toBeUndefined();
      expect(await tokenRow()).toMatchObject({ lease_holder: null });
    });

    it('answers acquired=false when there are no tokens at all', async () => {
      expect(await rpc('amocrm_begin_refresh', { p_holder: 'h' })).toMatchObject({ acquired: false });
    });
  });

  describe('amocrm_finish_refresh (compare-and-swap)', () => {
    it('stores with the right version: version increments, lease released', async () => {
      await seed('oauth', 'A1', 'R1');
      const lease = await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      const expiresAt = inAnHour();
      const res = await rpc('amocrm_finish_refresh', {
        p_holder: 'h',
        p_expected_version: lease.version,
        p_access_token: 'A2',
        p_refresh_token: 'R2',
        p_expires_at: expiresAt,
      });
      expect(res).toEqual({ stored: true, version: 2 });
      const r = await tokenRow();
      expect(Number(r.version)).toBe(2);
      expect(r).toMatchObject({ lease_holder: null, lease_until: null });
      expect(r.value).toMatchObject({ kind: 'oauth', access_token: 'A2', refresh_token: 'R2', auth_state: 'ok' });
      expect(new Date(r.value.expires_at).getTime()).toBe(expiresAt.getTime());
      // The lease is free again: the next refresh can start.
      expect(await rpc('amocrm_begin_refresh', { p_holder: 'next' })).toMatchObject({ acquired: true, version: 2, refresh_token: 'R2' });
    });

    it('refuses a stale version and keeps the stored pair', async () => {
      await seed('oauth', 'A1', 'R1');
      const lease = await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      const args = { p_holder: 'h', p_expected_version: lease.version, p_expires_at: inAnHour() };
      expect(await rpc('amocrm_finish_refresh', { ...args, p_access_token: 'A2', p_refresh_token: 'R2' })).toMatchObject({
        stored: true,
      });
      expect(await rpc('amocrm_finish_refresh', { ...args, p_access_token: 'A-stale', p_refresh_token: 'R-stale' })).toEqual({
        stored: false,
      });
      const r = await tokenRow();
      expect(Number(r.version)).toBe(2);
      expect(r.value).toMatchObject({ access_token: 'A2', refresh_token: 'R2' });
    });
  });

  describe('amocrm_abort_refresh', () => {
    it('without needs_reauth only gives the lease back', async () => {
      await seed('oauth', 'A1', 'R1');
      await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      // Someone else's abort does not free our lease.
      expect(await rpc('amocrm_abort_refresh', { p_holder: 'other' })).toEqual({ became_broken: false });
      expect(await tokenRow()).toMatchObject({ lease_holder: 'h' });
      expect(await rpc('amocrm_abort_refresh', { p_holder: 'h' })).toEqual({ became_broken: false });
      const r = await tokenRow();
      expect(r).toMatchObject({ lease_holder: null, lease_until: null });
      expect(r.value.auth_state).toBe('ok');
    });

    it('with needs_reauth: became_broken true once, false for the next caller', async () => {
      await seed('oauth', 'A1', 'R1');
      await rpc('amocrm_begin_refresh', { p_holder: 'h' });
      expect(await rpc('amocrm_abort_refresh', { p_holder: 'h', p_needs_reauth: true, p_problem: 'invalid_grant' })).toEqual({
        became_broken: true,
      });
      expect(await rpc('amocrm_abort_refresh', { p_holder: 'h2', p_needs_reauth: true, p_problem: 'invalid_grant' })).toEqual({
        became_broken: false,
      });
      const r = await tokenRow();
      expect(r).toMatchObject({ lease_holder: null });
      expect(r.value).toMatchObject({ auth_state: 'needs_reauth', auth_problem: 'invalid_grant' });
      expect(await rpc('amocrm_get_tokens')).toMatchObject({ auth_state: 'needs_reauth', auth_problem: 'invalid_grant' });
      expect(await rpc('amocrm_begin_refresh', { p_holder: 'h3' })).toMatchObject({ acquired: false });
    });
  });

  describe('amocrm_store_tokens', () => {
    it('repairs the chain and resumes parked events', async () => {
      await seed('oauth', 'A1', 'R1');
      await rpc('amocrm_mark_needs_reauth', { p_problem: 'revoked' });
      await t.sql('delete from amocrm.sync_events');
      const user = await createUser(t, uniqueEmail());
      const parked1 = await insertEvent(t, { user_id: user, lesson_id: 67, status: 'parked' });
      const parked2 = await insertEvent(t, { user_id: await createUser(t, uniqueEmail()), lesson_id: 68, stage_number: 2, status: 'parked' });
      const done = await insertEvent(t, { user_id: user, lesson_id: 69, stage_number: 3, status: 'done' });
      await t.sql(`update amocrm.sync_events set next_attempt_at = now() + interval '1 day'`);

      const res = await rpc('amocrm_store_tokens', {
        p_kind: 'oauth',
        p_access_token: 'A-new',
        p_refresh_token: 'R-new',
        p_expires_at: inAnHour(),
      });
      expect(res).toEqual({ stored: true, version: 2, resumed_events: 2 });

      const r = await tokenRow();
      expect(r.value).toMatchObject({ kind: 'oauth', access_token: 'A-new', refresh_token: 'R-new', auth_state: 'ok' });
      expect(r.value.auth_problem ?? null).toBeNull();
      expect(await rpc('amocrm_get_tokens')).toMatchObject({ auth_state: 'ok', version: 2 });
      expect(await rpc('amocrm_begin_refresh', { p_holder: 'h' })).toMatchObject({ acquired: true, refresh_token: 'R-new' });

      const events = await t.sql(
        `select id, status, next_attempt_at <= now() as due from amocrm.sync_events order by id`,
      );
      const byId = new Map(events.map((e) => [Number(e.id), e]));
      expect(byId.get(parked1)).toMatchObject({ status: 'pending', due: true });
      expect(byId.get(parked2)).toMatchObject({ status: 'pending', due: true });
      expect(byId.get(done)).toMatchObject({ status: 'done', due: false });

      // The scheduled run takes the resumed events.
      const due = (await rpc('amocrm_claim_due', { p_holder: 'sched' })) as unknown as J[];
      expect(due.map((e) => e.id).sort((a, b) => a - b)).toEqual([parked1, parked2]);
    });

    it('creates the row when there is none, and switches kinds', async () => {
      expect(
        await rpc('amocrm_store_tokens', { p_kind: 'long_lived', p_access_token: 'L1', p_refresh_token: null, p_expires_at: null }),
      ).toMatchObject({ stored: true, version: 1 });
      expect(await rpc('amocrm_get_tokens')).toMatchObject({ kind: 'long_lived', access_token: 'L1', has_refresh_token: false });
      await expect(
        rpc('amocrm_store_tokens', { p_kind: 'nope', p_access_token: 'x', p_refresh_token: 'y', p_expires_at: null }),
      ).rejects.toMatchObject({ code: '22023' });
    });
  });
});
