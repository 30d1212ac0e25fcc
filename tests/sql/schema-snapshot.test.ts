// supabase/schema.sql is what the migrations make of a fresh database (scripts/schema-snapshot.ts,
// `npm run schema`), so a reader sees each current definition in one file. This fails when
// the two disagree: a migration changed and the snapshot was not regenerated, or the other
// way round. Read from the catalog, so it runs on PGlite and on PostgreSQL alike (the
// snapshot reads the same on both).
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SCHEMA_FILE, schemaSnapshot } from '../../scripts/schema-snapshot.ts';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';

/** The lines that differ, unified-diff style with a little context. */
function lineDiff(expected: string, actual: string): string {
  const a = expected.split('\n');
  const b = actual.split('\n');
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (a[i] === b[j]) {
      i++;
      j++;
      continue;
    }
    // Resynchronise on the next line both have.
    let k = j;
    while (k < b.length && !a.slice(i, i + 200).includes(b[k]!)) k++;
    const ai = k < b.length ? a.indexOf(b[k]!, i) : a.length;
    out.push(`@@ supabase/schema.sql line ${i + 1}, migrated database line ${j + 1}`);
    for (const l of a.slice(i, ai)) out.push(`- ${l}`);
    for (const l of b.slice(j, k)) out.push(`+ ${l}`);
    i = ai;
    j = k;
    if (out.length > 200) break;
  }
  return out.join('\n');
}

describe(`supabase/schema.sql matches the migrations (${usingPostgres ? 'PostgreSQL' : 'PGlite'})`, () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterAll(async () => {
    await t?.close();
  });

  it('a freshly migrated database reads exactly as the checked-in snapshot', async () => {
    const actual = await schemaSnapshot((sql) => t.sql(sql));
    const expected = readFileSync(SCHEMA_FILE, 'utf8');
    if (actual !== expected) {
      expect.fail(
        `supabase/schema.sql is not what the migrations make: run npm run schema and commit supabase/schema.sql\n` +
          `(- in the file, + in the migrated database)\n${lineDiff(expected, actual)}`,
      );
    }
  });
});
