-- amocrm-lesson-sync, after 1.0.0: retention. Every table that grows with traffic gets a
-- rule, set in amocrm.system_settings and worked by the scheduled run in small batches
-- (public.amocrm_retention: one short transaction per call, rows taken with SKIP LOCKED,
-- so nothing waits on it; lib/sync/retention.ts calls it after the lesson events, with the
-- time the run has left). Same rules as the sync's migration (20261208000100).
--
-- The rules (value in days; docs/operations.md, "Retention", measures what each saves):
--   retention_delivery_body_days    7  crm_deliveries applied/ignored: the raw body (up to
--                                      256 KB, with the contacts' personal data) is emptied
--                                      and the deal's name dropped from `changes`; the row
--                                      keeps what the mirror and the history need
--                                      (request_id, status, changes' ids and times).
--   retention_flagged_body_days    30  the same for flagged deliveries (kept longer for an operator).
--   retention_deliveries_days      30  crm_deliveries rows applied/ignored removed (flagged:
--                                      30 days after their body, 60 at the defaults); never
--                                      within 7 days: amoCRM retries a hook within a day, so
--                                      request_id has long stopped mattering. Pending ones
--                                      are never removed.
--   retention_attempts_days        90  event_attempts of done/skipped events, once the
--                                      hour is counted in amocrm.console_rollup (the
--                                      console's 90-day views read it there).
--   retention_events_days          90  done/skipped sync_events: the last error's text is
--                                      cleared. The row stays: it is the (student, lesson)
--                                      key that makes a completion one event, and
--                                      amocrm_reconcile would re-create an event whose row
--                                      was gone. dead/failed/parked/pending events are
--                                      never touched (replay).
--   retention_history_days          0  deal_stage_history (0 = keep). Opt-in, at least 180:
--                                      the history is what keeps a repeated change from
--                                      reaching deal_changes twice.
--   retention_changes_days          0  deal_changes, the platform's extension point
--                                      (0 = keep). Opt-in, at least 30.
--   retention_batch_rows          500  rows per rule per call.
-- A missing or non-numeric setting means its default.

insert into amocrm.system_settings (key, value)
values ('retention_delivery_body_days', '7'::jsonb),
       ('retention_flagged_body_days', '30'::jsonb),
       ('retention_deliveries_days', '30'::jsonb),
       ('retention_attempts_days', '90'::jsonb),
       ('retention_events_days', '90'::jsonb),
       ('retention_history_days', '0'::jsonb),
       ('retention_changes_days', '0'::jsonb),
       ('retention_batch_rows', '500'::jsonb)
on conflict (key) do nothing;

-- A setting as a whole number; p_default when missing or not a number.
create or replace function amocrm.retention_setting(p_key text, p_default integer) returns integer
language sql stable security definer set search_path = '' as $$
  select coalesce((select case when jsonb_typeof(s.value) = 'number' then floor((s.value)::text::numeric)::integer
                               when jsonb_typeof(s.value) = 'string' and (s.value #>> '{}') ~ '^\d+$' then (s.value #>> '{}')::integer end
                     from amocrm.system_settings s where s.key = p_key), p_default)
$$;

-- The console's rollups of hours whose attempts retention removed keep their attempt
-- counts: an hour recounted later (an old event's status changed) recounts the events,
-- not the attempts that are gone. retention_attempts_pruned_before: the hour before which
-- attempts may be missing (written by amocrm_retention).
create or replace function amocrm.console_rollup_ensure(p_from timestamptz, p_to timestamptz)
returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_hour timestamptz;
  v_last timestamptz := least(date_trunc('hour', p_to), date_trunc('hour', now()));
  v_pruned timestamptz := (select (s.value #>> '{}')::timestamptz from amocrm.system_settings s
                            where s.key = 'retention_attempts_pruned_before');
  v_keep boolean;
begin
  for v_hour in
    select h from generate_series(date_trunc('hour', p_from), v_last - interval '1 hour', interval '1 hour') h
     where not exists (select 1 from amocrm.console_rollup_hours r where r.hour = h and not r.dirty)
  loop
    v_keep := v_pruned is not null and v_hour < v_pruned
              and exists (select 1 from amocrm.console_rollup_hours r where r.hour = v_hour);
    insert into amocrm.console_rollup_hours (hour, dirty, computed_at) values (v_hour, false, now())
    on conflict (hour) do update set dirty = false, computed_at = now();
    delete from amocrm.console_rollup r where r.hour = v_hour and not (v_keep and r.kind = 'attempt');
    insert into amocrm.console_rollup (hour, kind, stage_number, key, n)
    select v_hour, c.kind, c.stage_number, c.key, c.n
      from amocrm.console_counts(v_hour, v_hour + interval '1 hour') c
     where c.n > 0 and not (v_keep and c.kind = 'attempt');
  end loop;
end $$;

-- One batch of every rule; returns what each did. Called again while any rule filled its
-- batch (lib/sync/retention.ts). Rows another transaction holds are skipped, not waited for.
create or replace function public.amocrm_retention(p_batch integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_batch    integer := greatest(1, least(5000, coalesce(p_batch, amocrm.retention_setting('retention_batch_rows', 500))));
  v_body     integer := amocrm.retention_setting('retention_delivery_body_days', 7);
  v_flagged  integer := amocrm.retention_setting('retention_flagged_body_days', 30);
  v_rows     integer := amocrm.retention_setting('retention_deliveries_days', 30);
  v_attempts integer := amocrm.retention_setting('retention_attempts_days', 90);
  v_events   integer := amocrm.retention_setting('retention_events_days', 90);
  v_history  integer := amocrm.retention_setting('retention_history_days', 0);
  v_changes  integer := amocrm.retention_setting('retention_changes_days', 0);
  v_out      jsonb := '{}'::jsonb;
  v_n        integer;
  v_cut      timestamptz;
  v_first    timestamptz;
  v_last     timestamptz;
begin
  -- Raw hook bodies: emptied, the deal's name dropped (may be a person's name). Never a
  -- pending delivery (the applier still reads it).
  with d as (
    select x.id from amocrm.crm_deliveries x
     where x.body <> ''
       and ((x.status in ('applied', 'ignored') and v_body > 0 and x.received_at < now() - make_interval(days => greatest(v_body, 1)))
         or (x.status = 'flagged' and v_flagged > 0 and x.received_at < now() - make_interval(days => greatest(v_flagged, 1))))
     order by x.id limit v_batch for update skip locked)
  update amocrm.crm_deliveries c
     set body = '',
         changes = coalesce((select jsonb_agg(ch - 'name') from jsonb_array_elements(c.changes) ch), '[]'::jsonb)
    from d where c.id = d.id;
  get diagnostics v_n = row_count;
  v_out := v_out || jsonb_build_object('deliveries_reduced', v_n);

  -- Delivery rows: never pending; at least a week (amoCRM's retries of one request_id);
  -- a flagged one 30 days after its body.
  v_n := 0;
  if v_rows > 0 then
    with d as (
      select x.id from amocrm.crm_deliveries x
       where ((x.status in ('applied', 'ignored') and x.received_at < now() - make_interval(days => greatest(v_rows, 7)))
           or (x.status = 'flagged' and x.received_at < now() - make_interval(days => greatest(v_rows, v_flagged + 30, 7))))
       order by x.id limit v_batch for update skip locked)
    delete from amocrm.crm_deliveries c using d where c.id = d.id;
    get diagnostics v_n = row_count;
  end if;
  v_out := v_out || jsonb_build_object('deliveries_removed', v_n);

  -- Attempts of finished events: the hours are counted into the rollup first; at least
  -- the console's 90 days.
  v_n := 0;
  if v_attempts > 0 then
    v_cut := date_trunc('hour', now() - make_interval(days => greatest(v_attempts, 90)));
    select min(a.at), max(a.at) into v_first, v_last
      from (select a.at from amocrm.event_attempts a
              join amocrm.sync_events e on e.id = a.event_id and e.status in ('done', 'skipped')
             where a.at < v_cut order by a.at limit v_batch) a;
    if v_first is not null then
      perform amocrm.console_rollup_ensure(date_trunc('hour', v_first), date_trunc('hour', v_last) + interval '1 hour');
      insert into amocrm.system_settings (key, value)
      values ('retention_attempts_pruned_before', to_jsonb(date_trunc('hour', v_last) + interval '1 hour'))
      on conflict (key) do update set value = excluded.value, updated_at = now()
       where (amocrm.system_settings.value #>> '{}')::timestamptz < (excluded.value #>> '{}')::timestamptz;
      with d as (
        select a.event_id, a.attempt, a.at from amocrm.event_attempts a
          join amocrm.sync_events e on e.id = a.event_id and e.status in ('done', 'skipped')
         where a.at < v_cut and a.at <= v_last
         order by a.at limit v_batch for update of a skip locked)
      delete from amocrm.event_attempts x using d
       where x.event_id = d.event_id and x.attempt = d.attempt and x.at = d.at;
      get diagnostics v_n = row_count;
    end if;
  end if;
  v_out := v_out || jsonb_build_object('attempts_removed', v_n);

  -- Finished events: the text of the last error goes, the row stays.
  v_n := 0;
  if v_events > 0 then
    with d as (
      select e.id from amocrm.sync_events e
       where e.status in ('done', 'skipped') and e.last_error is not null
         and e.updated_at < now() - make_interval(days => greatest(v_events, 90))
       order by e.id limit v_batch for update skip locked)
    update amocrm.sync_events e set last_error = null from d where e.id = d.id;
    get diagnostics v_n = row_count;
  end if;
  v_out := v_out || jsonb_build_object('events_compacted', v_n);

  -- Opt-in: the stage history (never a deal's latest row: the mirror's last word).
  v_n := 0;
  if v_history > 0 then
    with d as (
      select h.id from amocrm.deal_stage_history h
       where h.changed_at < now() - make_interval(days => greatest(v_history, 180))
         and h.recorded_at < now() - make_interval(days => greatest(v_history, 180))
         and exists (select 1 from amocrm.deal_stage_history n where n.lead_id = h.lead_id and n.changed_at > h.changed_at)
       order by h.id limit v_batch for update skip locked)
    delete from amocrm.deal_stage_history h using d where h.id = d.id;
    get diagnostics v_n = row_count;
  end if;
  v_out := v_out || jsonb_build_object('history_removed', v_n);

  -- Opt-in: the platform's changes.
  v_n := 0;
  if v_changes > 0 then
    with d as (
      select c.id from amocrm.deal_changes c
       where c.created_at < now() - make_interval(days => greatest(v_changes, 30))
       order by c.id limit v_batch for update skip locked)
    delete from amocrm.deal_changes c using d where c.id = d.id;
    get diagnostics v_n = row_count;
  end if;
  v_out := v_out || jsonb_build_object('changes_removed', v_n);

  return v_out || jsonb_build_object('batch', v_batch);
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
