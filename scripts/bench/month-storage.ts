// Storage over the month, by table, with retention and without it.
//
// With: the month runs with retention as production has it (the scheduled run calls it),
// and a plain VACUUM of every table once a virtual day stands in for Supabase's autovacuum
// (PGlite runs none), so space that retention frees is reused as it would be.
//
// Without: within 30 days only the hook deliveries' rules can act (their bodies at 7 days,
// their rows at 30); every other rule keeps rows at least 90 days or is off by default. So
// the month keeps a shadow of amocrm.crm_deliveries, written by a benchmark-only trigger
// that repeats every insert and update of the table except retention's (the one that
// empties a body) and none of its deletes: the table as it would be with retention off,
// vacuumed the same way. The run checks that the other rules removed nothing; if they did
// (a longer month), their tables' "without" figure is not measured and says so.
import type { Stack } from '../../dev/stack/index.ts';

const SHADOW = 'bench_month.crm_deliveries_kept';

export interface TableSizes { [table: string]: number }

export async function installDeliveriesShadow(s: Stack): Promise<void> {
  const cols = (await s.database.sql(`select column_name from information_schema.columns
      where table_schema = 'amocrm' and table_name = 'crm_deliveries' and column_name <> 'id' order by ordinal_position`)).map((r) => r.column_name as string);
  const list = cols.map((c) => `"${c}"`).join(', ');
  const values = cols.map((c) => `new."${c}"`).join(', ');
  await s.database.sql('create schema if not exists bench_month');
  await s.database.sql(`create table ${SHADOW} (like amocrm.crm_deliveries including all)`);
  await s.database.sql(`create function bench_month.keep_delivery() returns trigger language plpgsql security definer set search_path = '' as $$
    begin
      if tg_op = 'INSERT' then
        insert into ${SHADOW} overriding system value select new.*;
      elsif not (old.body <> '' and new.body = '') then
        update ${SHADOW} k set (${list}) = row(${values}) where k.id = new.id;
      end if;
      return null;
    end $$`);
  await s.database.sql(`create trigger bench_month_keep after insert or update on amocrm.crm_deliveries
      for each row execute function bench_month.keep_delivery()`);
}

/** Every amoCRM table's total size (table, TOAST, indexes), and the shadow's as `crm_deliveries (no retention)`. */
export async function tableSizes(s: Stack): Promise<TableSizes> {
  const rows = await s.database.sql(`select n.nspname as schema, c.relname as name, pg_total_relation_size(c.oid)::bigint as bytes
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname in ('amocrm', 'bench_month') and c.relkind in ('r', 'p') order by 2`);
  return Object.fromEntries(rows.map((r) => [r.schema === 'amocrm' ? r.name : 'crm_deliveries (no retention)', Number(r.bytes)]));
}

/** What autovacuum does for the tables the month writes (plain VACUUM: frees dead rows for reuse, gives back no space). */
export async function vacuumTables(s: Stack): Promise<void> {
  const rows = await s.database.sql(`select format('%I.%I', n.nspname, c.relname) as t from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where n.nspname in ('amocrm', 'bench_month') and c.relkind = 'r'`);
  for (const r of rows) await s.database.sql(`vacuum ${r.t}`);
}

export interface StorageFigure { table: string; endBytes: number; perDay: number; perDayLastWeek: number; withoutBytes?: number; withoutPerDay?: number; withoutPerDayLastWeek?: number }

/**
 * From the daily samples (after each day's VACUUM): each table's size at the end, its mean
 * growth per day over the month, and over the last 7 days (retention's 7-day rule at work).
 * `untouched`: the tables retention removed nothing from, whose size without it is the same.
 */
export function storageFigures(samples: TableSizes[], start: TableSizes, untouched: Set<string>): StorageFigure[] {
  const end = samples.at(-1)!;
  const days = samples.length;
  const weekAgo = samples[Math.max(0, days - 8)] ?? start;
  const weekDays = Math.min(7, days - 1) || 1;
  const growth = (t: string) => ({
    endBytes: end[t] ?? 0,
    perDay: ((end[t] ?? 0) - (start[t] ?? 0)) / days,
    perDayLastWeek: ((end[t] ?? 0) - (weekAgo[t] ?? 0)) / weekDays,
  });
  return Object.keys(end).filter((t) => !t.includes('(no retention)')).map((table) => {
    const w = growth(table);
    const shadow = table === 'crm_deliveries' ? growth('crm_deliveries (no retention)') : untouched.has(table) ? w : undefined;
    return { table, ...w, withoutBytes: shadow?.endBytes, withoutPerDay: shadow?.perDay, withoutPerDayLastWeek: shadow?.perDayLastWeek };
  });
}
