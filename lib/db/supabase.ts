// The production adapter of the Db port: supabase-js rpc() with the service-role key.
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { DbError, type Db, type RpcArgs } from './port.ts';

// supabase-js refuses to start without a WebSocket implementation, even though we never
// open a realtime channel. Node 22 (the functions' runtime) has one built in; only Node 20
// (local tools) loads `ws`, so a cold start on Netlify does not pay for it.
async function webSocket(): Promise<unknown> {
  return (globalThis as { WebSocket?: unknown }).WebSocket ?? (await import('ws')).default;
}

export function supabaseDb(url: string, serviceRoleKey: string): Db {
  let client: Promise<SupabaseClient> | undefined;
  const connect = async () => createClient(url, serviceRoleKey, {
    // Stateless server code: no session to keep, refresh or detect.
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: (await webSocket()) as never },
  });
  return {
    async rpc<T>(fn: string, args?: RpcArgs): Promise<T> {
      client ??= connect();
      const { data, error } = await (await client).rpc(fn, args ?? {});
      if (error) throw new DbError(fn, error.message, error.code);
      return data as T;
    },
  };
}
