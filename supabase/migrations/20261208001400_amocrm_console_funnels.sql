-- amocrm-lesson-sync, after 1.0.0: the console's funnel counts per funnel. Since events
-- carry the funnel they belong to (20261208001100), step 1 of one funnel and step 1 of
-- another are different steps: the funnel view counts each funnel's steps apart, names
-- each step with the lessons and the stage of the version in force, and counts won and
-- lost deals in each funnel's own pipeline. Same rules as the sync's migration
-- (20261208000100).

-- ---------------------------------------------------------------------------
-- The hourly rollups keep the funnel
-- ---------------------------------------------------------------------------
-- funnel_key: the events' funnel for kind 'funnel' rows, '' for the others.
alter table amocrm.console_rollup add column if not exists funnel_key text not null default '';
alter table amocrm.console_rollup drop constraint if exists console_rollup_pkey;
alter table amocrm.console_rollup add constraint console_rollup_pkey primary key (hour, kind, funnel_key, stage_number, key);

-- The funnel rows already counted mixed the funnels: counted again, per funnel, from the
-- events (which retention keeps). Attempt and latency rows stay as they are: attempts
-- retention removed cannot be counted again.
delete from amocrm.console_rollup r where r.kind = 'funnel';
insert into amocrm.console_rollup (hour, kind, funnel_key, stage_number, key, n)
select h.hour, 'funnel', e.funnel_key, e.stage_number, e.status || '|' || coalesce(e.last_error_code, ''), count(*)
  from amocrm.console_rollup_hours h
  join amocrm.sync_events e on e.created_at >= h.hour and e.created_at < h.hour + interval '1 hour'
 group by h.hour, e.funnel_key, e.stage_number, e.status, e.last_error_code;

-- The period's events are read from the index alone, the funnel included.
create index if not exists sync_events_created_funnel_idx on amocrm.sync_events (created_at)
  include (funnel_key, stage_number, lesson_id, status, last_error_code);
drop index if exists amocrm.sync_events_created_idx;

-- As in 20261208000500, with the events' funnel (its result gains a column, so it is
-- dropped and created again, with the function that returns its rows).
drop function if exists amocrm.console_period_counts(timestamptz, timestamptz);
drop function if exists amocrm.console_counts(timestamptz, timestamptz);
create function amocrm.console_counts(p_from timestamptz, p_to timestamptz)
returns table (kind text, funnel_key text, stage_number smallint, key text, n bigint)
language sql stable set search_path = '' as $$
  select 'funnel', e.funnel_key, e.stage_number, e.status || '|' || coalesce(e.last_error_code, ''), count(*)
    from amocrm.sync_events e where e.created_at >= p_from and e.created_at < p_to group by 2, 3, 4
  union all
  select 'attempt', '', 0::smallint, a.outcome, count(*)
    from amocrm.event_attempts a where a.at >= p_from and a.at < p_to group by 4
  union all
  select 'attempt', '', 0::smallint, 'rate_limited', count(*)
    from amocrm.event_attempts a where a.at >= p_from and a.at < p_to and a.code = 'rate_limited'
  union all
  select 'latency', '', 0::smallint, amocrm.latency_bucket(extract(epoch from e.done_at - e.created_at) * 1000)::text, count(*)
    from amocrm.sync_events e where e.done_at >= p_from and e.done_at < p_to group by 4
$$;

-- As in 20261208000700 (attempt counts of pruned hours kept), with the funnel.
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
    insert into amocrm.console_rollup (hour, kind, funnel_key, stage_number, key, n)
    select v_hour, c.kind, c.funnel_key, c.stage_number, c.key, c.n
      from amocrm.console_counts(v_hour, v_hour + interval '1 hour') c
     where c.n > 0 and not (v_keep and c.kind = 'attempt');
  end loop;
end $$;

-- As in 20261208000500, with the funnel: rollups of the whole closed hours, live counts of
-- the rest.
create function amocrm.console_period_counts(p_from timestamptz, p_to timestamptz)
returns table (kind text, funnel_key text, stage_number smallint, key text, n bigint)
language plpgsql security definer set search_path = '' as $$
declare
  v_first timestamptz := date_trunc('hour', p_from) + case when date_trunc('hour', p_from) < p_from then interval '1 hour' else interval '0' end;
  v_last  timestamptz := greatest(v_first, least(date_trunc('hour', p_to), date_trunc('hour', now())));
begin
  if v_first >= p_to then
    return query select * from amocrm.console_counts(p_from, p_to);
    return;
  end if;
  perform amocrm.console_rollup_ensure(v_first, v_last);
  return query
    select x.kind, x.funnel_key, x.stage_number, x.key, sum(x.n)::bigint from (
      select r.kind, r.funnel_key, r.stage_number, r.key, r.n from amocrm.console_rollup r where r.hour >= v_first and r.hour < v_last
      union all select * from amocrm.console_counts(p_from, v_first)
      union all select * from amocrm.console_counts(v_last, p_to)) x
    group by 1, 2, 3, 4;
end $$;

-- ---------------------------------------------------------------------------
-- The funnel view, per funnel
-- ---------------------------------------------------------------------------
-- Each funnel's steps as the version in force has them: (funnel_key, stage_number, the
-- step's stage, its lessons). While the lessons come from the `tripwire_lessons` setting
-- (amocrm.lessons_from_setting()), funnel 'tripwire' takes its steps' lessons from it, as
-- the trigger does.
create or replace function amocrm.console_funnel_steps()
returns table (funnel_key text, stage_number smallint, stage_id bigint, lessons jsonb)
language sql stable set search_path = '' as $$
  with configured as (
    select f.funnel->>'key' as funnel_key, st.n::smallint as stage_number,
           (st.step->>'stageId')::bigint as stage_id, st.step->'lessons' as lessons
      from jsonb_array_elements(coalesce(amocrm.current_funnels(), '[]'::jsonb)) f(funnel),
           jsonb_array_elements(f.funnel->'steps') with ordinality st(step, n)),
  setting as (
    select 'tripwire'::text as funnel_key, (s.value ->> k)::smallint as stage_number,
           jsonb_agg(k::integer order by k::integer) as lessons
      from amocrm.system_settings s, jsonb_object_keys(s.value) k
     where s.key = 'tripwire_lessons' and amocrm.lessons_from_setting()
       and k ~ '^[0-9]{1,9}$' and (s.value ->> k) ~ '^[0-9]{1,4}$'
     group by 2)
  select coalesce(c.funnel_key, s.funnel_key), coalesce(c.stage_number, s.stage_number), c.stage_id,
         coalesce(s.lessons, c.lessons, '[]'::jsonb)
    from configured c full join setting s on s.funnel_key = c.funnel_key and s.stage_number = c.stage_number
$$;

-- The funnel of a period: per funnel (the funnels in force, in their order, then any
-- funnel the period's events name that is no longer configured), each step's events by
-- outcome, the deals won and lost in the funnel's pipeline, and where its students are
-- stuck and why. Also, for scripts, the flat lists of every funnel's counted steps
-- (`lessons`) and stuck events (`stuck`), and the period's won and lost deals in all.
create or replace function public.amocrm_console_funnel(p_from timestamptz, p_to timestamptz)
returns jsonb
language sql volatile security definer set search_path = '' as $$
  with c as (
    select c.funnel_key, c.stage_number, split_part(c.key, '|', 1) as status, nullif(split_part(c.key, '|', 2), '') as code, c.n
      from amocrm.console_period_counts(p_from, p_to) c where c.kind = 'funnel'),
  counted as (
    select c.funnel_key, c.stage_number, sum(c.n) as completed,
           coalesce(sum(c.n) filter (where c.status = 'done'), 0) as moved,
           coalesce(sum(c.n) filter (where c.status = 'skipped'), 0) as skipped,
           coalesce(sum(c.n) filter (where c.status in ('failed', 'dead', 'parked')), 0) as failed,
           coalesce(sum(c.n) filter (where c.status in ('pending', 'processing')), 0) as waiting
      from c group by 1, 2),
  configured as (select * from amocrm.console_funnel_steps()),
  funnels as (
    select f.funnel->>'key' as funnel_key, f.funnel->>'name' as name, (f.funnel->>'pipelineId')::bigint as pipeline_id,
           true as configured, f.n as ord
      from jsonb_array_elements(coalesce(amocrm.current_funnels(),
             '[{"key": "tripwire", "name": "Tripwire"}]'::jsonb)) with ordinality f(funnel, n)
    union all
    select k.funnel_key, k.funnel_key, amocrm.funnel_pipeline(k.funnel_key), false, 1000 + row_number() over (order by k.funnel_key)
      from (select distinct funnel_key from counted) k
     where not exists (select 1 from jsonb_array_elements(coalesce(amocrm.current_funnels(),
                         '[{"key": "tripwire"}]'::jsonb)) f where f->>'key' = k.funnel_key)),
  steps as (
    select coalesce(s.funnel_key, l.funnel_key) as funnel_key, coalesce(s.stage_number, l.stage_number) as stage_number,
           s.stage_id, coalesce(s.lessons, '[]'::jsonb) as lessons, s.funnel_key is not null as configured,
           coalesce(l.completed, 0) as completed, coalesce(l.moved, 0) as moved, coalesce(l.skipped, 0) as skipped,
           coalesce(l.failed, 0) as failed, coalesce(l.waiting, 0) as waiting, l.funnel_key is not null as counted
      from configured s full join counted l on l.funnel_key = s.funnel_key and l.stage_number = s.stage_number),
  -- A change recorded without a pipeline counts in the first funnel's (as a deal remembered
  -- without one belongs to it).
  closed as (
    select d.kind, coalesce(d.pipeline_id, amocrm.default_pipeline()) as pipeline_id, count(*) as n from amocrm.deal_changes d
     where d.kind in ('won', 'lost') and d.changed_at >= p_from and d.changed_at < p_to group by 1, 2),
  stuck as (
    select c.funnel_key, c.stage_number, c.status, c.code, sum(c.n) as n from c where c.status <> 'done' group by 1, 2, 3, 4)
  select jsonb_build_object(
    'from', p_from, 'to', p_to,
    'funnels', coalesce((select jsonb_agg(jsonb_build_object(
        'key', f.funnel_key, 'name', f.name, 'pipeline_id', f.pipeline_id, 'configured', f.configured,
        'steps', coalesce((select jsonb_agg(jsonb_build_object('stage_number', s.stage_number, 'stage_id', s.stage_id,
                   'lessons', s.lessons, 'configured', s.configured, 'completed', s.completed, 'moved', s.moved,
                   'skipped', s.skipped, 'failed', s.failed, 'waiting', s.waiting) order by s.stage_number)
                   from steps s where s.funnel_key = f.funnel_key), '[]'::jsonb),
        -- Before any version is saved the one funnel's pipeline is not known here: all of them.
        'won', coalesce((select sum(x.n) from closed x where x.kind = 'won' and (f.pipeline_id is null or x.pipeline_id = f.pipeline_id)), 0),
        'lost', coalesce((select sum(x.n) from closed x where x.kind = 'lost' and (f.pipeline_id is null or x.pipeline_id = f.pipeline_id)), 0),
        'stuck', coalesce((select jsonb_agg(jsonb_build_object('stage_number', x.stage_number, 'status', x.status, 'code', x.code, 'count', x.n)
                   order by x.n desc, x.stage_number) from stuck x where x.funnel_key = f.funnel_key), '[]'::jsonb))
        order by f.ord) from funnels f), '[]'::jsonb),
    'lessons', coalesce((select jsonb_agg(jsonb_build_object('funnel_key', s.funnel_key, 'stage_number', s.stage_number,
                 'lesson_id', (s.lessons->>0)::integer, 'completed', s.completed, 'moved', s.moved, 'skipped', s.skipped,
                 'failed', s.failed, 'waiting', s.waiting) order by s.funnel_key, s.stage_number)
                 from steps s where s.counted), '[]'::jsonb),
    'won', coalesce((select sum(x.n) from closed x where x.kind = 'won'), 0),
    'lost', coalesce((select sum(x.n) from closed x where x.kind = 'lost'), 0),
    'stuck', coalesce((select jsonb_agg(jsonb_build_object('funnel_key', x.funnel_key, 'stage_number', x.stage_number,
                 'status', x.status, 'code', x.code, 'count', x.n) order by x.n desc, x.funnel_key, x.stage_number) from stuck x), '[]'::jsonb))
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
