// The production adapter of the Db port: supabase-js rpc() against PostgREST (answered
// by msw here). Runs on Node 20, where supabase-js needs the `ws` transport to start.
import { http, HttpResponse } from 'msw';
import { setupServer } from 'msw/node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DbError } from '../../lib/db/port.ts';
import { supabaseDb } from '../../lib/db/supabase.ts';

const calls: { fn: string; body: unknown; auth: string | null }[] = [];
const server = setupServer(
  http.post('https://project.supabase.test/rest/v1/rpc/:fn', async ({ params, request }) => {
    const body = await request.json();
    calls.push({ fn: String(params.fn), body, auth: request.headers.get('authorization') });
    if (params.fn === 'amocrm_claim_event') return HttpResponse.json({ claimed: true, event: { id: 7 } });
    if (params.fn === 'amocrm_missing') return HttpResponse.json({ code: 'PGRST202', message: 'Could not find the function public.amocrm_missing' }, { status: 404 });
    return HttpResponse.json({ code: '42501', message: 'permission denied for function amocrm_get_tokens' }, { status: 401 });
  }),
);
beforeAll(() => server.listen({ onUnhandledRequest: 'error' }));
afterAll(() => server.close());

describe('supabase-js adapter', () => {
  const db = supabaseDb('https://project.supabase.test', 'service-role-key-for-tests');

  it('starts on this Node version and calls the function with named arguments', async () => {
    const result = await db.rpc<{ claimed: boolean }>('amocrm_claim_event', { p_event_id: 7, p_holder: 'inv-1' });
    expect(result).toEqual({ claimed: true, event: { id: 7 } });
    expect(calls.at(-1)).toEqual({ fn: 'amocrm_claim_event', body: { p_event_id: 7, p_holder: 'inv-1' }, auth: 'Bearer service-role-key-for-tests' });
  });

  it('turns PostgREST errors into DbError with the code, without the key', async () => {
    const missing = await db.rpc('amocrm_missing').catch((e) => e);
    expect(missing).toBeInstanceOf(DbError);
    expect(missing).toMatchObject({ fn: 'amocrm_missing', code: 'PGRST202' });
    const denied = (await db.rpc("amocrm_get_tokens").catch((e: unknown) => e)) as DbError;
    expect(denied).toMatchObject({ code: '42501' });
    expect(String(denied.message)).not.toContain('service-role-key-for-tests');
  });
});
