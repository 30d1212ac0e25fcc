// The production adapter of the Db port: supabase-js rpc() with the service-role key.
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import { DbError, type Db, type RpcArgs } from './port.ts';

export function supabaseDb(url: string, serviceRoleKey: string): Db {
  const client: SupabaseClient = createClient(url, serviceRoleKey, {
    // Stateless server code: no session to keep, refresh or detect.
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    // supabase-js refuses to start on Node 20 without a WebSocket implementation, even
    // though we never open a realtime channel; `ws` satisfies it on Node 20 and 22 alike.
    realtime: { transport: WebSocket as never },
  });
  return {
    async rpc<T>(fn: string, args?: RpcArgs): Promise<T> {
      const { data, error } = await client.rpc(fn, args ?? {});
      if (error) throw new DbError(fn, error.message, error.code);
      return data as T;
    },
  };
}
