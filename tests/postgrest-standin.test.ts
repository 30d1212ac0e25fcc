// The PostgREST stand-in speaks to the production adapter (supabase-js rpc) as Supabase
// does: results as JSON, failures as {code, message, details, hint} with PostgREST's status
// for the SQLSTATE, which supabase-js turns into the error the sync classifies.
import type { PGlite } from '@electric-sql/pglite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPglite } from '../dev/postgres-setup.ts';
import { startPostgrestStandin, type PostgrestStandin } from '../dev/postgrest-standin.ts';
import { DbError } from '../lib/db/port.ts';
import { pgliteDb } from '../lib/db/sql-adapters.ts';
import { supabaseDb } from '../lib/db/supabase.ts';

let pg: PGlite;
let rest: PostgrestStandin;

beforeAll(async () => {
  pg = await openPglite({ migrations: false, pgNet: false });
  await pg.exec(`
    create function public.standin_echo(p_n integer, p_tags text[] default '{}') returns jsonb
      language sql as $$ select jsonb_build_object('n', p_n, 'tags', to_jsonb(p_tags)) $$;
    create function public.standin_refuse() returns jsonb language plpgsql as $$
      begin raise exception 'I refuse' using detail = 'always', hint = 'nothing to do'; end $$;
    create function public.standin_admin_only() returns jsonb language sql as $$ select '{}'::jsonb $$;
    revoke execute on function public.standin_admin_only() from public;
    grant execute on function public.standin_echo(integer, text[]), public.standin_refuse() to service_role;
  `);
  rest = await startPostgrestStandin(pgliteDb(pg));
});
afterAll(async () => {
  await rest?.close();
  await pg?.close();
});

const post = (path: string, body: unknown, headers: Record<string, string> = { apikey: 'k' }) =>
  fetch(`${rest.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

describe('PostgREST stand-in', () => {
  it('answers an rpc with the function\'s JSON result, through supabase-js', async () => {
    const db = supabaseDb(rest.url, 'service-role-key');
    expect(await db.rpc('standin_echo', { p_n: 7, p_tags: ['a', 'b"c'] })).toEqual({ n: 7, tags: ['a', 'b"c'] });
    expect(await db.rpc('standin_echo', { p_n: 1 })).toEqual({ n: 1, tags: [] }); // defaults apply
  });

  it('a RAISE is 400 with PostgREST\'s error body; supabase-js hands on its code and message', async () => {
    const res = await post('/rest/v1/rpc/standin_refuse', {});
    expect(res.status).toBe(400);
    const body = await res.json();
    expect(Object.keys(body).sort()).toEqual(['code', 'details', 'hint', 'message']);
    expect(body).toMatchObject({ code: 'P0001', message: 'I refuse' });

    const err = await supabaseDb(rest.url, 'k').rpc('standin_refuse').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbError);
    expect(err).toMatchObject({ code: 'P0001', fn: 'standin_refuse' });
    expect((err as Error).message).toContain('I refuse');
  });

  it('an unknown function is 404 and a function service_role may not run is 403', async () => {
    expect((await post('/rest/v1/rpc/standin_missing', {})).status).toBe(404);
    const denied = await post('/rest/v1/rpc/standin_admin_only', {});
    expect([denied.status, (await denied.json()).code]).toEqual([403, '42501']);
  });

  it('refuses what PostgREST refuses: no API key, another path, another method, a body that is not an object', async () => {
    expect((await post('/rest/v1/rpc/standin_echo', { p_n: 1 }, {})).status).toBe(401);
    expect((await post('/rest/v1/lesson_progress', {})).status).toBe(404);
    expect((await fetch(`${rest.url}/rest/v1/rpc/standin_echo`, { headers: { apikey: 'k' } })).status).toBe(405);
    const array = await post('/rest/v1/rpc/standin_echo', [1]);
    expect([array.status, (await array.json()).code]).toEqual([400, 'PGRST102']);
  });
});
