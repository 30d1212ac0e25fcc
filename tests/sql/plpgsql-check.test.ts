// Lints every PL/pgSQL function of the integration with plpgsql_check (Debian's
// postgresql-15-plpgsql-check): the functions in schema amocrm and the public.amocrm_*
// RPCs, trigger functions checked against each table they are attached to. PL/pgSQL only
// parses a function body when it is created; plpgsql_check resolves every statement
// against the real schema, so a misspelt column, a wrong type or an unused variable shows
// up here instead of in a student's INSERT.
//
// PostgreSQL only: the extension does not exist for PGlite. With DATABASE_URL set it must
// be installed (`.ci/run` installs it); a server without it fails this file, never skips it.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';

/**
 * Findings that are accepted, as "<schema>.<function>: <message>", each with the reason.
 * An entry that no longer matches anything fails the test too, so the list cannot rot.
 */
const ALLOWED: Record<string, string> = {
  // The version compare-and-swap is the guard, not the lease holder: a pair amoCRM has just
  // issued is stored even if the caller's lease ran out meanwhile (see the comment on the
  // function). The parameter stays because the callers name it in their RPC call.
  'public.amocrm_finish_refresh: unused parameter "p_holder"': 'holder kept for the RPC signature; CAS on version guards',
};

interface Finding {
  fn: string;
  relation: string | null;
  lineno: number | null;
  level: string;
  sqlstate: string | null;
  message: string;
  detail: string | null;
  hint: string | null;
  query: string | null;
}

const keyOf = (f: Finding) => `${f.fn}: ${f.message}`;
const describeFinding = (f: Finding) =>
  `${f.fn}${f.relation ? ` (trigger on ${f.relation})` : ''} line ${f.lineno ?? '?'}: ${f.level} ${f.sqlstate ?? ''} ${f.message}` +
  (f.detail ? ` | detail: ${f.detail}` : '') + (f.hint ? ` | hint: ${f.hint}` : '') + (f.query ? ` | query: ${f.query}` : '');

describe.runIf(usingPostgres)('plpgsql_check (PostgreSQL)', () => {
  let t: TestDatabase;
  let functions: { oid: number; name: string; isTrigger: boolean; relations: string[] }[];

  beforeAll(async () => {
    t = await createTestDatabase();
    const available = await t.sql(`select 1 from pg_available_extensions where name = 'plpgsql_check'`);
    if (available.length === 0) {
      throw new Error('plpgsql_check is not installed on the PostgreSQL server at DATABASE_URL: ' +
        'apt-get install postgresql-15-plpgsql-check (as .ci/run does), then run the tests again');
    }
    await t.sql('create extension if not exists plpgsql_check');
    const rows = await t.sql(`
      select p.oid::int as oid, n.nspname || '.' || p.proname as name,
             p.prorettype = 'pg_catalog.trigger'::regtype as is_trigger,
             coalesce((select array_agg(distinct tg.tgrelid::regclass::text order by tg.tgrelid::regclass::text)
                         from pg_trigger tg where tg.tgfoid = p.oid and not tg.tgisinternal), '{}') as relations
        from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace
        join pg_language l on l.oid = p.prolang
       where l.lanname = 'plpgsql'
         and (n.nspname = 'amocrm' or (n.nspname = 'public' and p.proname like 'amocrm\\_%'))
       order by 2`);
    functions = rows.map((r) => ({ oid: r.oid, name: r.name, isTrigger: r.is_trigger, relations: r.relations }));
  });
  afterAll(async () => {
    await t?.close();
  });

  it('finds the functions to check, and every trigger function on a table', () => {
    const names = functions.map((f) => f.name);
    // A sample of each area: if the query above stopped matching, nothing would be checked.
    expect(names).toEqual(expect.arrayContaining([
      'amocrm.on_lesson_progress', 'amocrm.ring_webhook', 'amocrm.record_event',
      'public.amocrm_claim_due', 'public.amocrm_finish_event', 'public.amocrm_take_rate_slot',
      'public.amocrm_doctor_facts', 'public.amocrm_reconcile',
    ]));
    const triggers = functions.filter((f) => f.isTrigger);
    expect(triggers.map((f) => f.name)).toEqual(expect.arrayContaining(['amocrm.on_lesson_progress', 'amocrm.on_tripwire_setting']));
    // plpgsql_check needs the table to resolve NEW and OLD: a trigger function attached to
    // nothing cannot be checked (and is dead code).
    expect(triggers.filter((f) => f.relations.length === 0).map((f) => f.name)).toEqual([]);
  });

  it('reports no error and no warning beyond the explained allow-list', async () => {
    const findings: Finding[] = [];
    for (const f of functions) {
      for (const relation of f.isTrigger ? f.relations : [null]) {
        // all_warnings: other, extra (unused variables/parameters, dead code), performance
        // (implicit casts, needless dynamic SQL), security (SQL injection in EXECUTE) and
        // compatibility warnings. fatal_errors off: every error of a function, not the first.
        const rows = await t.sql(
          `select lineno, level, sqlstate, message, detail, hint, query
             from plpgsql_check_function_tb($1::oid::regprocedure, coalesce($2::regclass, 0::oid::regclass),
                                            fatal_errors => false, all_warnings => true)`,
          [f.oid, relation],
        );
        for (const r of rows) {
          findings.push({ fn: f.name, relation, lineno: r.lineno, level: r.level, sqlstate: r.sqlstate,
            message: r.message, detail: r.detail, hint: r.hint, query: r.query });
        }
      }
    }
    const unexplained = findings.filter((f) => !(keyOf(f) in ALLOWED));
    expect(unexplained.map(describeFinding)).toEqual([]);
    const stale = Object.keys(ALLOWED).filter((k) => !findings.some((f) => keyOf(f) === k));
    expect(stale, 'allow-list entries that no longer match a finding: remove them').toEqual([]);
  });
});
