// A real database for a test: PGlite by default, PostgreSQL when DATABASE_URL is set
// (CI runs both). `db` is the Db port as production uses it (service_role); `sql` runs
// as the superuser for arranging and inspecting; `asRole` runs as anon/authenticated.
import type { PGlite } from '@electric-sql/pglite';
import type { Pool } from 'pg';
import { createPostgresDatabase, openPglite, type SetupOptions } from '../../dev/database.ts';
import type { Db } from '../../lib/db/port.ts';
import { pgliteDb, pgPoolDb, poolForRpc } from '../../lib/db/sql-adapters.ts';

export type Row = Record<string, any>;

export interface TestDatabase {
  kind: 'pglite' | 'postgres';
  db: Db;
  sql(text: string, params?: unknown[]): Promise<Row[]>;
  /** Runs one statement as `role` (with the JWT subject set for authenticated). */
  asRole(role: 'anon' | 'authenticated' | 'service_role', text: string, params?: unknown[], sub?: string): Promise<Row[]>;
  /** Another Db on its own connections (PostgreSQL only: real concurrency). */
  newDb(connections: number): Promise<Db>;
  close(): Promise<void>;
}

export const usingPostgres = Boolean(process.env.DATABASE_URL);

export async function createTestDatabase(options: SetupOptions = {}): Promise<TestDatabase> {
  return usingPostgres ? postgresDatabase(process.env.DATABASE_URL!, options) : pgliteDatabase(options);
}

async function pgliteDatabase(options: SetupOptions): Promise<TestDatabase> {
  const pg: PGlite = await openPglite(options);
  return {
    kind: 'pglite',
    db: pgliteDb(pg),
    sql: async (text, params) => (await pg.query<Row>(text, params)).rows,
    asRole: (role, text, params, sub) =>
      pg.transaction(async (tx) => {
        if (sub) await tx.query(`select set_config('request.jwt.claim.sub', $1, true)`, [sub]);
        await tx.exec(`set local role ${role}`);
        return (await tx.query<Row>(text, params)).rows;
      }),
    newDb: async () => {
      throw new Error('PGlite has one connection: concurrency tests need DATABASE_URL');
    },
    close: () => pg.close(),
  };
}

async function postgresDatabase(serverUrl: string, options: SetupOptions): Promise<TestDatabase> {
  const created = await createPostgresDatabase(serverUrl, options);
  const pools: Pool[] = [];
  const rpcPool = await poolForRpc(created.url, 10);
  pools.push(rpcPool);
  return {
    kind: 'postgres',
    db: pgPoolDb(rpcPool),
    sql: async (text, params) => (await created.admin.query(text, params)).rows,
    asRole: async (role, text, params, sub) => {
      const client = await created.admin.connect();
      try {
        await client.query('begin');
        if (sub) await client.query(`select set_config('request.jwt.claim.sub', $1, true)`, [sub]);
        await client.query(`set local role ${role}`);
        const rows = (await client.query(text, params)).rows;
        await client.query('commit');
        return rows;
      } catch (err) {
        await client.query('rollback').catch(() => undefined);
        throw err;
      } finally {
        client.release();
      }
    },
    newDb: async (connections) => {
      const pool = await poolForRpc(created.url, connections);
      pools.push(pool);
      return pgPoolDb(pool);
    },
    close: async () => {
      // pg-pool's end() resolves before its idle clients' backends are gone, so the
      // `drop database ... with (force)` below can terminate one first (FATAL 57P01),
      // which the pool re-emits as an 'error' event: unhandled, it fails the test run.
      // Nothing runs any more at this point, so those are ignored.
      const ignore = () => undefined;
      for (const p of [...pools, created.admin]) p.on('error', ignore);
      await Promise.all(pools.map((p) => p.end()));
      await created.drop();
    },
  };
}
