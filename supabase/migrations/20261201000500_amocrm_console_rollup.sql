-- amocrm-lesson-sync, the console at a million events: hourly rollups of closed hours.
-- A week is 168 hours; counting a quarter of a million rows per request is too slow, so
-- each closed hour is counted once into amocrm.console_rollup and read from there. The
-- current hour (and a period's ragged edges) are counted live. An old event whose status
-- changes (a retry, a replay) marks its hour dirty, and the next console request counts
-- that hour again: nothing on the student's write path, no shared counter to contend on.

create table if not exists amocrm.console_rollup_hours (
  hour        timestamptz primary key,
  dirty       boolean not null default false,
  computed_at timestamptz not null default now()
);

-- kind: funnel (events created in the hour: stage_number, key = status|code),
--       attempt (attempts made in the hour: key = outcome, or 'rate_limited'),
--       latency (events moved in the hour: key = the latency bucket's upper bound in ms).
create table if not exists amocrm.console_rollup (
  hour         timestamptz not null references amocrm.console_rollup_hours (hour) on delete cascade,
  kind         text not null,
  stage_number smallint not null default 0,
  key          text not null,
  n            bigint not null,
  primary key (hour, kind, stage_number, key)
);

alter table amocrm.console_rollup_hours enable row level security;
alter table amocrm.console_rollup       enable row level security;
revoke all on amocrm.console_rollup_hours, amocrm.console_rollup from public, anon, authenticated;
grant select, insert, update, delete on amocrm.console_rollup_hours, amocrm.console_rollup to service_role;

-- Latency buckets (ms): fine below 2 s, where a healthy sync lives.
create or replace function amocrm.latency_bucket(p_ms double precision) returns integer
language sql immutable set search_path = '' as $$
  select coalesce((select b from unnest(array[250, 500, 750, 1000, 1250, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
                                              120000, 300000, 600000, 1800000, 3600000]) b where p_ms <= b order by b limit 1), 86400000)
$$;

-- The live counts of [p_from, p_to), in the rollup's shape.
create or replace function amocrm.console_counts(p_from timestamptz, p_to timestamptz)
returns table (kind text, stage_number smallint, key text, n bigint)
language sql stable set search_path = '' as $$
  select 'funnel', e.stage_number, e.status || '|' || coalesce(e.last_error_code, ''), count(*)
    from amocrm.sync_events e where e.created_at >= p_from and e.created_at < p_to group by 2, 3
  union all
  select 'attempt', 0::smallint, a.outcome, count(*)
    from amocrm.event_attempts a where a.at >= p_from and a.at < p_to group by 3
  union all
  select 'attempt', 0::smallint, 'rate_limited', count(*)
    from amocrm.event_attempts a where a.at >= p_from and a.at < p_to and a.code = 'rate_limited'
  union all
  select 'latency', 0::smallint, amocrm.latency_bucket(extract(epoch from e.done_at - e.created_at) * 1000)::text, count(*)
    from amocrm.sync_events e where e.done_at >= p_from and e.done_at < p_to group by 3
$$;

-- Counts the closed hours of [p_from, p_to) that are missing or dirty.
create or replace function amocrm.console_rollup_ensure(p_from timestamptz, p_to timestamptz)
returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_hour timestamptz;
  v_last timestamptz := least(date_trunc('hour', p_to), date_trunc('hour', now()));
begin
  for v_hour in
    select h from generate_series(date_trunc('hour', p_from), v_last - interval '1 hour', interval '1 hour') h
     where not exists (select 1 from amocrm.console_rollup_hours r where r.hour = h and not r.dirty)
  loop
    insert into amocrm.console_rollup_hours (hour, dirty, computed_at) values (v_hour, false, now())
    on conflict (hour) do update set dirty = false, computed_at = now();
    delete from amocrm.console_rollup r where r.hour = v_hour;
    insert into amocrm.console_rollup (hour, kind, stage_number, key, n)
    select v_hour, c.kind, c.stage_number, c.key, c.n
      from amocrm.console_counts(v_hour, v_hour + interval '1 hour') c where c.n > 0;
  end loop;
end $$;

-- The counts of any period: rollups of its whole closed hours, live counts of the rest.
create or replace function amocrm.console_period_counts(p_from timestamptz, p_to timestamptz)
returns table (kind text, stage_number smallint, key text, n bigint)
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
    select x.kind, x.stage_number, x.key, sum(x.n)::bigint from (
      select r.kind, r.stage_number, r.key, r.n from amocrm.console_rollup r where r.hour >= v_first and r.hour < v_last
      union all select * from amocrm.console_counts(p_from, v_first)
      union all select * from amocrm.console_counts(v_last, p_to)) x
    group by 1, 2, 3;
end $$;

-- An old event's status changed: its hours are counted again on the next request.
create or replace function amocrm.on_event_status_changed() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  update amocrm.console_rollup_hours h set dirty = true
   where h.hour in (date_trunc('hour', new.created_at), date_trunc('hour', coalesce(new.done_at, new.created_at)))
     and not h.dirty;
  return null;
end $$;

drop trigger if exists amocrm_event_status_changed on amocrm.sync_events;
create trigger amocrm_event_status_changed after update of status on amocrm.sync_events
  for each row when (old.status is distinct from new.status and new.created_at < date_trunc('hour', now()))
  execute function amocrm.on_event_status_changed();

-- ---------------------------------------------------------------------------
-- The funnel and the health view, now from the counts
-- ---------------------------------------------------------------------------
create or replace function public.amocrm_console_funnel(p_from timestamptz, p_to timestamptz)
returns jsonb
language sql volatile security definer set search_path = '' as $$
  with c as (
    select c.stage_number, split_part(c.key, '|', 1) as status, nullif(split_part(c.key, '|', 2), '') as code, c.n
      from amocrm.console_period_counts(p_from, p_to) c where c.kind = 'funnel'),
  lessons as (
    select c.stage_number, sum(c.n) as completed,
           sum(c.n) filter (where c.status = 'done') as moved,
           sum(c.n) filter (where c.status = 'skipped') as skipped,
           sum(c.n) filter (where c.status in ('failed', 'dead', 'parked')) as failed,
           sum(c.n) filter (where c.status in ('pending', 'processing')) as waiting
      from c group by 1),
  lesson_ids as (
    select (s.value ->> k)::smallint as stage_number, min(k::integer) as lesson_id
      from amocrm.system_settings s, jsonb_object_keys(s.value) k where s.key = 'tripwire_lessons' group by 1)
  select jsonb_build_object(
    'from', p_from, 'to', p_to,
    'lessons', coalesce((select jsonb_agg(jsonb_build_object('stage_number', l.stage_number, 'lesson_id', i.lesson_id,
                 'completed', l.completed, 'moved', coalesce(l.moved, 0), 'skipped', coalesce(l.skipped, 0),
                 'failed', coalesce(l.failed, 0), 'waiting', coalesce(l.waiting, 0)) order by l.stage_number)
                 from lessons l left join lesson_ids i on i.stage_number = l.stage_number), '[]'::jsonb),
    'won', (select count(*) from amocrm.deal_changes d where d.kind = 'won' and d.changed_at >= p_from and d.changed_at < p_to),
    'lost', (select count(*) from amocrm.deal_changes d where d.kind = 'lost' and d.changed_at >= p_from and d.changed_at < p_to),
    'stuck', coalesce((select jsonb_agg(jsonb_build_object('stage_number', s.stage_number, 'status', s.status, 'code', s.code, 'count', s.n)
                 order by s.n desc) from (select c.stage_number, c.status, c.code, sum(c.n) as n from c where c.status <> 'done' group by 1, 2, 3) s), '[]'::jsonb))
$$;

-- Percentile from the latency buckets: the upper bound of the bucket it falls in.
create or replace function amocrm.bucket_percentile(p_buckets jsonb, p_fraction numeric) returns integer
language sql immutable set search_path = '' as $$
  with b as (select (x.key)::integer as upper_ms, (x.value)::bigint as n from jsonb_each_text(p_buckets) x),
  run as (select upper_ms, sum(n) over (order by upper_ms) as cum, sum(n) over () as total from b)
  select min(upper_ms) from run where total > 0 and cum >= ceil(total * p_fraction)
$$;

create or replace function public.amocrm_console_health(p_from timestamptz, p_to timestamptz, p_bucket text default 'hour')
returns jsonb
language plpgsql volatile security definer set search_path = '' as $$
declare
  v_unit  text := case when p_bucket = 'day' then 'day' else 'hour' end;
  v_first timestamptz := date_trunc('hour', p_from) + case when date_trunc('hour', p_from) < p_from then interval '1 hour' else interval '0' end;
  v_last  timestamptz := greatest(v_first, least(date_trunc('hour', p_to), date_trunc('hour', now())));
  v_buckets jsonb;
  v_latency jsonb;
  v_total jsonb;
begin
  perform amocrm.console_rollup_ensure(v_first, v_last);
  -- Attempts per bucket in one pass: whole closed hours from the rollup, the edges live.
  with per as (
    select date_trunc(v_unit, r.hour) as at, r.key, sum(r.n) as n
      from amocrm.console_rollup r where r.kind = 'attempt' and r.hour >= v_first and r.hour < v_last group by 1, 2
    union all
    select date_trunc(v_unit, a.at), a.outcome, count(*)
      from amocrm.event_attempts a
     where (a.at >= p_from and a.at < least(v_first, p_to)) or (a.at >= greatest(v_last, p_from) and a.at < p_to) group by 1, 2),
  b as (select per.at, jsonb_object_agg(per.key, per.n) as c
          from (select at, key, sum(n) as n from per group by 1, 2) per group by 1)
  select coalesce(jsonb_agg(jsonb_build_object('at', b.at,
           'done', coalesce((b.c->>'done')::bigint, 0), 'skipped', coalesce((b.c->>'skipped')::bigint, 0),
           'failed', coalesce((b.c->>'failed')::bigint, 0) + coalesce((b.c->>'parked')::bigint, 0),
           'dead', coalesce((b.c->>'dead')::bigint, 0), 'retried', coalesce((b.c->>'failed')::bigint, 0),
           'deferred', coalesce((b.c->>'deferred')::bigint, 0)) order by b.at), '[]'::jsonb)
    into v_buckets from b;
  -- Latency buckets and attempt totals of the period, from the same rollup rows and edges.
  with agg as (
    select x.kind, x.key, sum(x.n) as n from (
      select r.kind, r.key, r.n from amocrm.console_rollup r
       where r.kind in ('attempt', 'latency') and r.hour >= v_first and r.hour < v_last
      union all select c.kind, c.key, c.n from amocrm.console_counts(p_from, least(v_first, p_to)) c where c.kind <> 'funnel'
      union all select c.kind, c.key, c.n from amocrm.console_counts(greatest(v_last, p_from), p_to) c where c.kind <> 'funnel') x
    group by 1, 2)
  select coalesce(jsonb_object_agg(agg.key, agg.n) filter (where agg.kind = 'latency'), '{}'::jsonb),
         coalesce(jsonb_object_agg(agg.key, agg.n) filter (where agg.kind = 'attempt'), '{}'::jsonb)
    into v_latency, v_total from agg;
  return jsonb_build_object(
    'buckets', v_buckets,
    'latency', jsonb_build_object('n', coalesce((select sum(value::bigint) from jsonb_each_text(v_latency)), 0),
                 'p50_ms', amocrm.bucket_percentile(v_latency, 0.5), 'p95_ms', amocrm.bucket_percentile(v_latency, 0.95),
                 'approximate', true),
    'queue', (select jsonb_build_object(
                'due', count(*) filter (where (e.status = 'pending' and e.next_attempt_at <= now())
                                          or (e.status = 'failed' and e.retryable and e.next_attempt_at <= now())),
                'waiting', count(*) filter (where e.status = 'pending' or (e.status = 'failed' and e.retryable)),
                'processing', count(*) filter (where e.status = 'processing'),
                'parked', (select count(*) from amocrm.sync_events p where p.status = 'parked'),
                'oldest_waiting_seconds', floor(extract(epoch from now() - min(e.created_at))))
                from amocrm.sync_events e
               where e.status in ('pending', 'processing') or (e.status = 'failed' and e.retryable)),
    'rate', (select jsonb_build_object('rate_factor', amocrm.effective_rate_factor(r, clock_timestamp()),
                'paused_until', case when r.paused_until > clock_timestamp() then r.paused_until end,
                'rate_limited_total', r.rate_limited_total,
                'rate_limited_in_period', coalesce((v_total->>'rate_limited')::bigint, 0),
                'requests_in_period', null)
               from amocrm.rate_limiter r where r.key = 'amocrm'),
    'token', (select jsonb_build_object('kind', s.value->>'kind', 'expires_at', s.value->>'expires_at',
                'auth_state', coalesce(s.value->>'auth_state', 'ok'), 'auth_problem', s.value->>'auth_problem')
                from amocrm.system_settings s where s.key = 'amocrm_tokens'),
    'drain', (select jsonb_build_object('active', d.lease_until is not null and d.lease_until >= now(),
                'started_at', d.started_at, 'lease_until', d.lease_until, 'last_woken_at', d.last_woken_at,
                'drained_total', d.drained_total)
                from amocrm.drainer d where d.key = 'drain'),
    'dead_total', (select count(*) from amocrm.sync_events e where e.status = 'dead'),
    'retries_in_period', coalesce((v_total->>'failed')::bigint, 0),
    'hooks', jsonb_build_object(
      'pending', (select count(*) from amocrm.crm_deliveries x where x.status = 'pending'),
      'flagged', (select count(*) from amocrm.crm_deliveries x where x.status = 'flagged')));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
