// Adapters of the Db port over a direct SQL connection (PGlite or node-postgres). Each
// call runs as Supabase's service_role, in its own transaction, exactly as a PostgREST
// rpc does, so grants and SECURITY DEFINER behave locally as they do in production.
import type { PGlite } from '@electric-sql/pglite';
import type { Pool } from 'pg';
import { buildRpcSql, DbError, type Db, type RpcArgs } from './port.ts';

export const RPC_ROLE = 'service_role';

export function pgliteDb(pg: PGlite, role: string = RPC_ROLE): Db {
  return {
    async rpc<T>(fn: string, args?: RpcArgs): Promise<T> {
      const { text, values } = buildRpcSql(fn, args);
      try {
        return await pg.transaction(async (tx) => {
          await tx.exec(`set local role ${role}`);
          const res = await tx.query<{ result: T }>(text, values);
          return res.rows[0]!.result;
        });
      } catch (err) {
        throw asDbError(fn, err);
      }
    },
  };
}

/** The pool's connections run as service_role (see poolForRpc). */
export function pgPoolDb(pool: Pool): Db {
  return {
    async rpc<T>(fn: string, args?: RpcArgs): Promise<T> {
      const { text, values } = buildRpcSql(fn, args);
      try {
        const res = await pool.query<{ result: T }>(text, values);
        return res.rows[0]!.result;
      } catch (err) {
        throw asDbError(fn, err);
      }
    },
  };
}

export async function poolForRpc(connectionString: string, max = 10, role: string = RPC_ROLE): Promise<Pool> {
  const { default: pg } = await import('pg');
  // The role is a startup option, so every connection is service_role from its first query.
  return new pg.Pool({ connectionString, max, options: `-c role=${role}` });
}

function asDbError(fn: string, err: unknown): DbError {
  if (err instanceof DbError) return err;
  // A refused connection comes as an AggregateError with an empty message: name its code.
  const e = err as { message?: string; code?: string };
  return new DbError(fn, e?.message || e?.code || String(err) || 'connection failed', e?.code);
}
