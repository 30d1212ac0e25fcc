// The amocrm schema is closed: RLS everywhere, no table or function access for anon or
// authenticated, the public.amocrm_* doors open to service_role alone, and every
// SECURITY DEFINER function pins its search_path. Students still write their own
// progress under RLS, and the trigger records their events.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, type TestDatabase } from '../helpers/db.ts';
import { completeLesson, createUser, errorOf, eventsOf, setSetting, uniqueEmail } from './support.ts';

const CLIENT_ROLES = ['anon', 'authenticated'] as const;
const PERMISSION_DENIED = '42501';

interface Fn {
  oid: number;
  signature: string;
  call: string;
}

describe('security', () => {
  let t: TestDatabase;
  let rpcFunctions: Fn[];
  let internalFunctions: Fn[];

  beforeAll(async () => {
    t = await createTestDatabase();
    await setSetting(t, 'webhook_url', 'http://127.0.0.1:9/');
    await setSetting(t, 'webhook_secret', 'whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=');
    await t.db.rpc('amocrm_seed_tokens', {
      p_kind: 'oauth',
      p_access_token: 'ACCESS-TOKEN-SECRET',
      p_refresh_token: 'REFRESH-TOKEN-SECRET',
      p_expires_at: new Date(Date.now() + 3600_000),
    });
    // Every function, with a call expression that passes typed NULLs (the privilege
    // check happens before the body runs, so the arguments do not matter).
    const fns = async (where: string): Promise<Fn[]> =>
      (
        await t.sql(`
          select p.oid::int as oid, p.oid::regprocedure::text as signature,
                 format('select %I.%I(%s)', n.nspname, p.proname,
                        coalesce((select string_agg(format('null::%s', format_type(a.t, null)), ', ' order by a.ord)
                                    from unnest(p.proargtypes::oid[]) with ordinality as a(t, ord)), '')) as call
            from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where ${where} and p.prokind = 'f'
           order by 2`)
      ).map((r) => ({ oid: Number(r.oid), signature: r.signature, call: r.call }));
    rpcFunctions = await fns(`n.nspname = 'public' and p.proname like 'amocrm\\_%'`);
    internalFunctions = await fns(`n.nspname = 'amocrm'`);
  });
  afterAll(async () => {
    await t?.close();
  });

  it('finds the functions it checks', () => {
    const names = rpcFunctions.map((f) => f.signature.replace(/^public\./, '').replace(/\(.*/, ''));
    expect(names).toEqual(
      expect.arrayContaining([
        'amocrm_record_event',
        'amocrm_claim_event',
        'amocrm_claim_due',
        'amocrm_finish_event',
        'amocrm_get_tokens',
        'amocrm_seed_tokens',
        'amocrm_begin_refresh',
        'amocrm_finish_refresh',
        'amocrm_abort_refresh',
        'amocrm_store_tokens',
        'amocrm_take_rate_slot',
      ]),
    );
    expect(internalFunctions.length).toBeGreaterThanOrEqual(5);
  });

  it('RLS is enabled on every table in schema amocrm', async () => {
    const tables = await t.sql(`
      select c.relname, c.relrowsecurity from pg_class c join pg_namespace n on n.oid = c.relnamespace
       where n.nspname = 'amocrm' and c.relkind in ('r', 'p') order by 1`);
    expect(tables.map((r) => r.relname)).toEqual(
      expect.arrayContaining(['rate_limiter', 'student_leads', 'sync_events', 'system_settings']),
    );
    for (const table of tables) expect(table, table.relname).toMatchObject({ relrowsecurity: true });
  });

  describe.each(CLIENT_ROLES)('as %s', (role) => {
    it.each(['amocrm.system_settings', 'amocrm.sync_events', 'amocrm.student_leads', 'amocrm.rate_limiter', 'amocrm.amocrm_logs'])(
      'cannot select from %s (permission denied)',
      async (table) => {
        const err = await errorOf(t.asRole(role, `select * from ${table}`, [], '00000000-0000-0000-0000-000000000001'));
        expect(err.code).toBe(PERMISSION_DENIED);
        expect(err.message).toMatch(/permission denied/);
      },
    );

    it('cannot write to the outbox or the settings (permission denied)', async () => {
      const e1 = await errorOf(t.asRole(role, `update amocrm.system_settings set value = '{}'::jsonb`));
      expect(e1.code).toBe(PERMISSION_DENIED);
      const e2 = await errorOf(
        t.asRole(role, `insert into amocrm.sync_events (user_id, lesson_id, stage_number) values (gen_random_uuid(), 67, 1)`),
      );
      expect(e2.code).toBe(PERMISSION_DENIED);
    });

    it('cannot execute any public.amocrm_* function (permission denied)', async () => {
      expect(rpcFunctions.length).toBeGreaterThan(0);
      for (const fn of rpcFunctions) {
        const privileged = await t.sql(`select has_function_privilege($1, $2::oid, 'EXECUTE') as ok`, [role, fn.oid]);
        expect(privileged[0]!.ok, fn.signature).toBe(false);
        const err = await errorOf(t.asRole(role, fn.call));
        expect(err.code, fn.signature).toBe(PERMISSION_DENIED);
        expect(err.message, fn.signature).toMatch(/permission denied for function/);
      }
    });

    it('cannot execute the internal amocrm.* functions either', async () => {
      for (const fn of internalFunctions) {
        const privileged = await t.sql(`select has_function_privilege($1, $2::oid, 'EXECUTE') as ok`, [role, fn.oid]);
        expect(privileged[0]!.ok, fn.signature).toBe(false);
        const err = await errorOf(t.asRole(role, fn.call));
        expect(err.code, fn.signature).toBe(PERMISSION_DENIED);
      }
    });

    it('cannot read the tokens by any door', async () => {
      const e1 = await errorOf(t.asRole(role, `select value from amocrm.system_settings where key = 'amocrm_tokens'`));
      expect(e1.code).toBe(PERMISSION_DENIED);
      const e2 = await errorOf(t.asRole(role, `select public.amocrm_get_tokens()`));
      expect(e2.code).toBe(PERMISSION_DENIED);
      const e3 = await errorOf(t.asRole(role, `select public.amocrm_begin_refresh('attacker', 30)`));
      expect(e3.code).toBe(PERMISSION_DENIED);
      // ...and nothing happened to the lease.
      const rows = await t.sql(`select lease_holder from amocrm.system_settings where key = 'amocrm_tokens'`);
      expect(rows[0]!.lease_holder).toBeNull();
    });
  });

  it('service_role can execute every public.amocrm_* function', async () => {
    for (const fn of rpcFunctions) {
      const privileged = await t.sql(`select has_function_privilege('service_role', $1::oid, 'EXECUTE') as ok`, [fn.oid]);
      expect(privileged[0]!.ok, fn.signature).toBe(true);
    }
    // Through the port, as production does (the port runs as service_role).
    const role = await t.sql(`select rolbypassrls from pg_roles where rolname = 'service_role'`);
    expect(role[0]!.rolbypassrls).toBe(true);
    const tokens = await t.db.rpc<Record<string, unknown>>('amocrm_get_tokens');
    expect(tokens).toMatchObject({ present: true, access_token: 'ACCESS-TOKEN-SECRET' });
    expect(await t.db.rpc('amocrm_claim_due', { p_holder: 'security-test', p_limit: 1 })).toEqual([]);
    expect(await t.db.rpc('amocrm_take_rate_slot', { p_per_second: 1000, p_max_wait_ms: 10_000 })).toMatchObject({
      granted: true,
    });
    const served = await t.asRole('service_role', 'select public.amocrm_get_tokens() as r');
    expect(served[0]!.r).toMatchObject({ present: true });
  });

  it('every SECURITY DEFINER function in amocrm / public.amocrm_* pins its search_path', async () => {
    const rows = await t.sql(`
      select p.oid::regprocedure::text as signature, p.proconfig
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where p.prosecdef
         and (n.nspname = 'amocrm' or (n.nspname = 'public' and p.proname like 'amocrm\\_%'))`);
    expect(rows.length).toBeGreaterThanOrEqual(rpcFunctions.length);
    for (const row of rows) {
      const config: string[] = row.proconfig ?? [];
      expect(
        config.some((c) => c.startsWith('search_path=')),
        `${row.signature} has no pinned search_path`,
      ).toBe(true);
    }
    // Every RPC door is SECURITY DEFINER (service_role needs no table access to use it).
    const notDefiner = await t.sql(`
      select p.oid::regprocedure::text as signature from pg_proc p join pg_namespace n on n.oid = p.pronamespace
       where n.nspname = 'public' and p.proname like 'amocrm\\_%' and not p.prosecdef`);
    expect(notDefiner).toEqual([]);
  });

  it('a student inserts their own progress (and the trigger records it) but not someone else’s', async () => {
    const me = await createUser(t, uniqueEmail('me'));
    const other = await createUser(t, uniqueEmail('other'));

    const own = await completeLesson(t, me, 67);
    expect(own.id).toBeTruthy();
    const events = await eventsOf(t, me);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ lesson_id: 67, stage_number: 1, status: 'pending' });

    const err = await errorOf(
      t.asRole(
        'authenticated',
        'insert into public.lesson_progress (user_id, lesson_id) values ($1, 68) returning id',
        [other],
        me,
      ),
    );
    expect(err.code).toBe(PERMISSION_DENIED);
    expect(err.message).toMatch(/row-level security/);
    expect(await eventsOf(t, other)).toHaveLength(0);
    expect(await t.sql('select 1 from public.lesson_progress where user_id = $1', [other])).toHaveLength(0);

    // Nor can the student move someone else's row onto themselves to forge a completion.
    const theirs = await t.sql(
      `insert into public.lesson_progress (user_id, lesson_id, is_completed) values ($1, 69, false) returning id`,
      [other],
    );
    const updated = await t.asRole(
      'authenticated',
      'update public.lesson_progress set is_completed = true where id = $1 returning id',
      [theirs[0]!.id],
      me,
    );
    expect(updated).toHaveLength(0);
    expect(await eventsOf(t, other)).toHaveLength(0);

    // anon cannot write progress at all.
    const anon = await errorOf(
      t.asRole('anon', 'insert into public.lesson_progress (user_id, lesson_id) values ($1, 68)', [me]),
    );
    expect(anon.code).toBe(PERMISSION_DENIED);
    expect(await eventsOf(t, me)).toHaveLength(1);
  });
});
