// The doctor's expectations come from supabase/migrations, not a hand-kept list: a database
// that lacks one function, one table or the lesson trigger the migrations create gets a ❌
// line naming it (and what to do), whichever migration created it; what a later migration
// drops is not expected.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { formatCheck, runDoctor, type CheckResult } from '../lib/ops/doctor/index.ts';
import { expectedSchema } from '../lib/ops/doctor/expected.ts';
import { createTestDatabase, usingPostgres, type TestDatabase } from './helpers/db.ts';

const env = { AMOCRM_WEBHOOK_SECRET: 'whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=' };
const find = (results: CheckResult[], check: string) => results.find((r) => r.check === check);

describe('expectations read from the migrations', () => {
  it('the repository\'s: the drainer\'s, the mirror\'s and the console\'s functions and tables, the lesson trigger', () => {
    const e = expectedSchema();
    const names = [...e.functions.keys()].map((s) => s.slice(0, s.indexOf('(')));
    for (const f of ['amocrm_hold_events', 'amocrm_begin_drain', 'amocrm_apply_deliveries', 'amocrm_console_events', 'amocrm_doctor_facts']) {
      expect(names).toContain(f);
    }
    for (const t of ['drainer', 'deals', 'crm_deliveries', 'console_rollup', 'sync_events']) expect([...e.tables.keys()]).toContain(t);
    expect([...e.triggers.keys()]).toContain('public.lesson_progress amocrm_lesson_completed');
    expect(new Set(names).size).toBe(names.length); // one overload each: no dropped signature left behind
  });

  it('in file order: a later drop (one overload, or every one of a name) and a dropped table are not expected', () => {
    const dir = mkdtempSync(join(tmpdir(), 'migrations-'));
    try {
      writeFileSync(join(dir, '2_second.sql'), [
        'drop function if exists public.amocrm_a(bigint, integer);',
        'drop function public.amocrm_b;',
        'drop table if exists amocrm.old_one;',
        '-- create or replace function public.amocrm_commented_out(x int)',
      ].join('\n'));
      writeFileSync(join(dir, '1_first.sql'), [
        'create table if not exists amocrm.old_one (id int);',
        'create table if not exists amocrm.kept (id int);',
        "create or replace function public.amocrm_a(p_id bigint, p_n int default 5) returns void language sql as $$ select 1 $$;",
        "create or replace function public.amocrm_a(p_id bigint) returns void language sql as $$ select 1 $$;",
        "create or replace function public.amocrm_b(p_at timestamptz, p_kinds text[] default '{}', out n integer) returns integer language sql as $$ select 1 $$;",
        "create function public.amocrm_c(p_from timestamp with time zone, p_q text = 'a,b') returns void language sql as $$ select 1 $$;",
      ].join('\n'));
      const e = expectedSchema(dir);
      expect([...e.functions.keys()]).toEqual(['amocrm_a(bigint)', 'amocrm_c(timestamp with time zone, text)']);
      expect([...e.tables.keys()]).toEqual(['kept']);
      expect(e.tables.get('kept')).toBe('1_first.sql');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe(`the doctor against the migrations (${usingPostgres ? 'PostgreSQL' : 'PGlite'})`, () => {
  // Each test breaks its own fresh database: none sees another's drop.
  let t: TestDatabase;
  beforeEach(async () => {
    t = await createTestDatabase();
  });
  afterEach(async () => {
    await t?.close();
  });

  it('a fresh database: ✅ migrations', async () => {
    expect(find(await runDoctor({ env, db: t.db }), 'migrations')).toMatchObject({ status: 'ok' });
  });

  it('one function dropped (the drainer\'s amocrm_hold_events): ❌ migrations names it', async () => {
    await t.sql('drop function public.amocrm_hold_events');
    const line = formatCheck(find(await runDoctor({ env, db: t.db }), 'migrations')!);
    expect(line).toMatch(/^❌ migrations: .*functions missing: public\.amocrm_hold_events\(/);
    expect(line).toMatch(/→ apply the migrations in supabase\/migrations/);
  });

  it('one table dropped (the drainer\'s amocrm.drainer): ❌ migrations names it', async () => {
    await t.sql('drop table amocrm.drainer cascade');
    const line = formatCheck(find(await runDoctor({ env, db: t.db }), 'migrations')!);
    expect(line).toMatch(/^❌ migrations: .*tables missing: amocrm\.drainer\b/);
  });

  it('the lesson trigger dropped: ❌ trigger names it and the migration that creates it', async () => {
    await t.sql('drop trigger amocrm_lesson_completed on public.lesson_progress');
    const line = formatCheck(find(await runDoctor({ env, db: t.db }), 'trigger')!);
    expect(line).toMatch(/^❌ trigger: amocrm_lesson_completed on public\.lesson_progress is missing → apply the migrations .*\(\S+\.sql creates it\)$/);
  });
});
