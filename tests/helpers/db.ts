// A real database for a test: PGlite by default, PostgreSQL when DATABASE_URL is set
// (CI runs both). The same database the stack builder uses (dev/stack/database.ts):
// `db` is the Db port as production uses it (service_role); `sql` runs as the superuser
// for arranging and inspecting; `asRole` runs as anon/authenticated.
import type { SetupOptions } from '../../dev/postgres-setup.ts';
import { openStackDatabase, type Row, type StackDatabase } from '../../dev/stack/database.ts';

export type { Row };
export type TestDatabase = StackDatabase;

export const usingPostgres = Boolean(process.env.DATABASE_URL);

export function createTestDatabase(options: SetupOptions = {}): Promise<TestDatabase> {
  return openStackDatabase({ ...options, serverUrl: process.env.DATABASE_URL || undefined });
}
