// npx tsx scripts/retention-storage.ts [ROWS]   (DATABASE_URL: a PostgreSQL server, else PGlite)
// Measures what each table that grows with traffic costs per row (table, TOAST and
// indexes: pg_total_relation_size after VACUUM FULL) with realistic rows: hook bodies as
// amoCRM sends them for a deal with ten custom fields (dev/amocrm-standin/hookform.ts),
// before and after retention reduces them. docs/operations.md ("Retention") turns the
// figures into storage per month for an academy of a given size. Not a test: it measures.
import { openStackDatabase } from '../dev/stack/index.ts';
import { hookBody } from '../dev/amocrm-standin/hookform.ts';

const ROWS = Number(process.argv[2] ?? 20_000);

// One deal's update hook, with placeholders each row fills in (so TOAST cannot compress
// rows against each other more than real ones would).
const FIELDS = ['utm_source', 'utm_medium', 'utm_campaign', 'utm_content', 'utm_term', 'Курс', 'Тариф', 'Город', 'Телефон', 'Email'];
const template = hookBody('update', [{
  id: 900000001, name: 'Сделка: Иванова Мария Петровна', statusId: 511, pipelineId: 5000001, oldStatusId: 501, oldPipelineId: 5000001,
  price: 49900, responsibleUserId: 123, modifiedUserId: 123, createdUserId: 123, createdAt: 1765000000, updatedAt: 1765100000,
  customFields: FIELDS.map((name, i) => ({ id: 700000 + i, name, values: [{ value: i === 8 ? '+77010000000' : i === 9 ? 'maria.ivanova@example.kz' : `value-${name}-XXXXXXXX` }] })),
}], 'full');

async function main(): Promise<void> {
  const t = await openStackDatabase({ serverUrl: process.env.DATABASE_URL || undefined });
  try {
    const size = async (table: string) => {
      await t.sql(`vacuum full amocrm.${table}`);
      const [r] = await t.sql(`select pg_total_relation_size('amocrm.${table}')::bigint as bytes, (select count(*) from amocrm.${table})::bigint as n`);
      return { bytes: Number(r!.bytes), n: Number(r!.n) };
    };
    const perRow = async (table: string) => { const s = await size(table); return Math.round(s.bytes / Math.max(1, s.n)); };

    // Lesson events: three Tripwire lessons per student, one attempt each and one in ten retried.
    await t.sql(`insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, status, attempts, lead_id, contact_id, status_id, progress_id, source, done_at, finished_at, last_error_code, last_error)
      select gen_random_uuid(), 'student' || i || '@example.kz', 67 + i % 3, 1 + i % 3, 'done', 1, 900000000 + i, 800000000 + i, 511, md5(i::text), 'trigger', now(), now(),
             case when i % 10 = 0 then 'server_error' end, case when i % 10 = 0 then 'amoCRM answered 502 Bad Gateway (attempt 1), retried' end
        from generate_series(1, $1) i`, [ROWS]);
    await t.sql(`insert into amocrm.event_attempts (event_id, attempt, at, outcome, code, message)
      select e.id, a, now() - make_interval(secs => a), case when a = 1 and e.id % 10 = 0 then 'failed' else 'done' end,
             case when a = 1 and e.id % 10 = 0 then 'server_error' end, case when a = 1 and e.id % 10 = 0 then 'amoCRM answered 502 Bad Gateway' end
        from amocrm.sync_events e, generate_series(1, case when e.id % 10 = 0 then 2 else 1 end) a`);
    // Hook deliveries: one per deal edit, as recorded (changes: what the applier extracted).
    await t.sql(`insert into amocrm.crm_deliveries (request_id, status, body, body_bytes, changes, account_id, subdomain, applied_at)
      select md5('r' || i), 'applied', b, length(b), jsonb_build_array(jsonb_build_object('lead_id', 900000000 + i, 'action', 'update',
               'pipeline_id', 5000001, 'status_id', 511, 'modified_at', 1765100000 + i, 'modified_by', 123, 'name', 'Сделка: Иванова Мария ' || i)),
             31000001, 'academy', now()
        from (select i, replace(replace(replace($2, 'XXXXXXXX', substr(md5(i::text), 1, 8)), '900000001', (900000000 + i)::text), '77010000000', (77010000000 + i)::text) as b
                from generate_series(1, $1) i) x`, [ROWS, template]);
    await t.sql(`insert into amocrm.deal_stage_history (lead_id, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
      select 900000000 + i, 5000001, 512, 5000001, 511, now() - make_interval(secs => i), 123, 'hook' from generate_series(1, $1) i`, [ROWS]);
    await t.sql(`insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
      select 900000000 + i, gen_random_uuid(), 'stage_changed', 5000001, 512, 5000001, 511, now() - make_interval(secs => i), 123, 'hook' from generate_series(1, $1) i`, [ROWS]);

    const figures: Record<string, number> = {
      sync_events: await perRow('sync_events'),
      event_attempts: await perRow('event_attempts'),
      crm_deliveries_raw: await perRow('crm_deliveries'),
      deal_stage_history: await perRow('deal_stage_history'),
      deal_changes: await perRow('deal_changes'),
    };
    const [body] = await t.sql('select avg(body_bytes)::int as n from amocrm.crm_deliveries');
    figures.hook_body_bytes = Number(body!.n);
    // What retention leaves: bodies emptied and names dropped; attempts of finished events gone.
    await t.sql(`update amocrm.crm_deliveries c set body = '', changes = (select jsonb_agg(ch - 'name') from jsonb_array_elements(c.changes) ch)`);
    figures.crm_deliveries_reduced = await perRow('crm_deliveries');
    await t.sql(`update amocrm.sync_events set last_error = null`);
    figures.sync_events_compacted = await perRow('sync_events');
    // The console's hourly rollups: a month of hours (720), the events spread over them.
    await t.sql(`update amocrm.event_attempts set at = date_trunc('hour', now()) - make_interval(hours => 1 + event_id::int % 720)`);
    await t.sql(`update amocrm.sync_events set created_at = date_trunc('hour', now()) - make_interval(hours => 1 + id::int % 720),
                   done_at = date_trunc('hour', now()) - make_interval(hours => 1 + id::int % 720) + make_interval(secs => id::int % 7)`);
    await t.sql(`select amocrm.console_rollup_ensure(date_trunc('hour', now()) - interval '721 hours', date_trunc('hour', now()))`);
    const rollup = await size('console_rollup');
    const hours = await size('console_rollup_hours');
    figures.console_rollup_rows_per_hour = Math.round(rollup.n / 720);
    figures.console_rollup_bytes_per_month = rollup.bytes + hours.bytes;
    console.log(JSON.stringify({ database: t.kind, rows: ROWS, bytes_per_row: figures }, null, 2));
  } finally {
    await t.close();
  }
}

main().catch((err) => { console.error(err); process.exit(1); });
