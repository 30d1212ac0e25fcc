// A database with the real migrations, as the stack builder, the tests and the benchmark use
// it: embedded PGlite, or a fresh database on the PostgreSQL server at `serverUrl`.
// `db` is the Db port as production uses it (service_role); `sql` runs as the superuser for
// arranging and inspecting; `asRole` runs one statement as anon/authenticated (with the JWT
// subject set), the way a student's own write arrives through the API under RLS. Built on
// ../postgres-setup.ts, which only creates and migrates the database.
import type { PGlite } from '@electric-sql/pglite';
import type { Pool } from 'pg';
import type { Db } from '../../lib/db/port.ts';
import { pgliteDb, pgPoolDb, poolForRpc } from '../../lib/db/sql-adapters.ts';
import { createPostgresDatabase, openPglite, type SetupOptions } from '../postgres-setup.ts';

export type Row = Record<string, any>;

export interface StackDatabase {
  kind: 'pglite' | 'postgres';
  db: Db;
  /** The PGlite instance (PGlite only). */
  pglite?: PGlite;
  sql(text: string, params?: unknown[]): Promise<Row[]>;
  asRole(role: 'anon' | 'authenticated' | 'service_role', text: string, params?: unknown[], sub?: string): Promise<Row[]>;
  /** Another Db on its own connections (PostgreSQL only: real concurrency). */
  newDb(connections: number): Promise<Db>;
  close(): Promise<void>;
}

export interface DatabaseOptions extends SetupOptions {
  /** A PostgreSQL server URL: a fresh database is created there (and dropped on close). Absent: PGlite. */
  serverUrl?: string;
  /** Connections of the service_role pool behind `db` (PostgreSQL). Default 10. */
  connections?: number;
}

export function openStackDatabase({ serverUrl, connections = 10, ...setup }: DatabaseOptions = {}): Promise<StackDatabase> {
  return serverUrl ? postgresDatabase(serverUrl, connections, setup) : pgliteDatabase(setup);
}

async function pgliteDatabase(setup: SetupOptions): Promise<StackDatabase> {
  const pg = await openPglite(setup);
  return {
    kind: 'pglite',
    db: pgliteDb(pg),
    pglite: pg,
    sql: async (text, params) => (await pg.query<Row>(text, params)).rows,
    asRole: (role, text, params, sub) =>
      pg.transaction(async (tx) => {
        if (sub) await tx.query(`select set_config('request.jwt.claim.sub', $1, true)`, [sub]);
        await tx.exec(`set local role ${role}`);
        return (await tx.query<Row>(text, params)).rows;
      }),
    newDb: async () => {
      throw new Error('PGlite has one connection: concurrency needs a PostgreSQL server (DATABASE_URL)');
    },
    close: () => pg.close(),
  };
}

async function postgresDatabase(serverUrl: string, connections: number, setup: SetupOptions): Promise<StackDatabase> {
  const created = await createPostgresDatabase(serverUrl, setup);
  const pools: Pool[] = [await poolForRpc(created.url, connections)];
  return {
    kind: 'postgres',
    db: pgPoolDb(pools[0]!),
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
    newDb: async (n) => {
      const pool = await poolForRpc(created.url, n);
      pools.push(pool);
      return pgPoolDb(pool);
    },
    close: async () => {
      // pg-pool's end() resolves before its idle clients' backends are gone, so the
      // `drop database ... with (force)` below can terminate one first (FATAL 57P01),
      // which the pool re-emits as an 'error' event: unhandled, it fails the run.
      // Nothing runs any more at this point, so those are ignored.
      const ignore = () => undefined;
      for (const p of [...pools, created.admin]) p.on('error', ignore);
      await Promise.all(pools.map((p) => p.end()));
      await created.drop();
    },
  };
}
