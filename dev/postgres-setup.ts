// Builds a database the way a Supabase project has it, with the real migrations:
// embedded PGlite (PostgreSQL 17) by default, or a fresh database on a PostgreSQL server.
// Used by `npm start`, the tests, the doctor's --embedded mode and the benchmark.
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PGlite } from '@electric-sql/pglite';
import { pgcrypto } from '@electric-sql/pglite/contrib/pgcrypto';
import type { Pool } from 'pg';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const read = (rel: string) => readFileSync(join(root, rel), 'utf8');

export function migrationSql(): string[] {
  const dir = join(root, 'supabase/migrations');
  return readdirSync(dir).filter((f) => f.endsWith('.sql')).sort().map((f) => readFileSync(join(dir, f), 'utf8'));
}

export interface SetupOptions {
  /** Install the pg_net stand-in (net.http_post that queues). Default true. */
  pgNet?: boolean;
  /** Apply the migrations. Default true. */
  migrations?: boolean;
}

/** Everything before our migrations (Supabase's platform), then the migrations. */
export function setupScripts({ pgNet = true, migrations = true }: SetupOptions = {}): string[] {
  const scripts = [read('supabase/local/supabase_platform.sql')];
  if (pgNet) scripts.push(read('supabase/local/pg_net_standin.sql'));
  if (migrations) scripts.push(...migrationSql());
  return scripts;
}

export async function openPglite(options: SetupOptions = {}): Promise<PGlite> {
  const pg = await PGlite.create({ extensions: { pgcrypto } });
  for (const script of setupScripts(options)) await pg.exec(script);
  return pg;
}

/** A fresh, uniquely named database on the server at `serverUrl`, set up like openPglite. */
export async function createPostgresDatabase(
  serverUrl: string,
  options: SetupOptions = {},
): Promise<{ url: string; admin: Pool; drop: () => Promise<void> }> {
  const { default: pg } = await import('pg');
  const name = `amocrm_test_${process.pid}_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  const server = new pg.Client({ connectionString: serverUrl });
  await server.connect();
  await server.query(`create database ${name}`);
  await server.end();
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  const admin = new pg.Pool({ connectionString: url.toString(), max: 4 });
  // Roles are cluster-wide: two test files creating them at once may collide; retry once.
  for (const script of setupScripts(options)) {
    try {
      await admin.query(script);
    } catch (err) {
      if ((err as { code?: string }).code !== '23505') throw err;
      await admin.query(script);
    }
  }
  return {
    url: url.toString(),
    admin,
    drop: async () => {
      await admin.end();
      const c = new pg.Client({ connectionString: serverUrl });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`);
      await c.end();
    },
  };
}
