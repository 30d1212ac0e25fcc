-- amocrm-lesson-sync 1.0.0, the operator console's reads: every attempt kept, and one
-- query per view, each served by an index or by hourly rollups (the console must answer
-- within 300 ms with a million events). Same rules as the sync's migration
-- (20261208000100).

-- ---------------------------------------------------------------------------
-- Every attempt of every event
-- ---------------------------------------------------------------------------
-- Written by a trigger whenever an event leaves `processing`, so every path that records
-- an outcome (webhook, drainer, scheduled run, replay) is covered without knowing of it.
create table if not exists amocrm.event_attempts (
  event_id bigint not null references amocrm.sync_events (id) on delete cascade,
  attempt  integer not null,
  at       timestamptz not null default now(),
  outcome  text not null,
  code     text,
  message  text,
  primary key (event_id, attempt, at)
);
-- Covering: the health view counts outcomes per bucket from the index alone.
create index if not exists event_attempts_at_idx on amocrm.event_attempts (at) include (outcome, code);
alter table amocrm.event_attempts enable row level security;
revoke all on amocrm.event_attempts from public, anon, authenticated;
grant select, insert, update, delete on amocrm.event_attempts to service_role;

create or replace function amocrm.on_event_finished() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  insert into amocrm.event_attempts (event_id, attempt, outcome, code, message)
  values (new.id, new.attempts,
          case when new.status = 'pending' then 'deferred' else new.status end,
          case when new.status = 'done' then null else new.last_error_code end,
          case when new.status = 'done' then null else left(new.last_error, 500) end)
  on conflict do nothing;
  return null;
end $$;

drop trigger if exists amocrm_event_finished on amocrm.sync_events;
create trigger amocrm_event_finished after update of status on amocrm.sync_events
  for each row when (old.status = 'processing' and new.status <> 'processing')
  execute function amocrm.on_event_finished();

-- ---------------------------------------------------------------------------
-- Hourly rollups of closed hours
-- ---------------------------------------------------------------------------
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

-- Percentile from the latency buckets: the upper bound of the bucket it falls in.
create or replace function amocrm.bucket_percentile(p_buckets jsonb, p_fraction numeric) returns integer
language sql immutable set search_path = '' as $$
  with b as (select (x.key)::integer as upper_ms, (x.value)::bigint as n from jsonb_each_text(p_buckets) x),
  run as (select upper_ms, sum(n) over (order by upper_ms) as cum, sum(n) over () as total from b)
  select min(upper_ms) from run where total > 0 and cum >= ceil(total * p_fraction)
$$;

-- ---------------------------------------------------------------------------
-- Indexes for the console's queries
-- ---------------------------------------------------------------------------
-- Covering indexes: the funnel and the latency of a week (a quarter of a million events
-- at a million in the outbox) are read from the index alone, not from the table.
create index if not exists sync_events_created_idx on amocrm.sync_events (created_at) include (stage_number, lesson_id, status, last_error_code);
create index if not exists sync_events_done_idx on amocrm.sync_events (done_at) include (created_at) where done_at is not null;
create index if not exists sync_events_status_id_idx on amocrm.sync_events (status, id desc);
create index if not exists sync_events_code_id_idx on amocrm.sync_events (last_error_code, id desc) where last_error_code is not null;
create index if not exists sync_events_email_idx on amocrm.sync_events (email text_pattern_ops, id desc);
create index if not exists deal_changes_kind_at_idx on amocrm.deal_changes (kind, changed_at);

-- ---------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------
-- The funnel and the health view, from the counts of their period (rollups and live).
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

-- One event's row as the lists show it.
create or replace function amocrm.console_item(e amocrm.sync_events) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object('id', e.id, 'status', e.status, 'email', e.email, 'user_id', e.user_id,
    'lesson_id', e.lesson_id, 'stage_number', e.stage_number, 'attempts', e.attempts,
    'code', e.last_error_code, 'reason', e.last_error, 'lead_id', e.lead_id,
    'created_at', e.created_at, 'updated_at', e.updated_at, 'done_at', e.done_at)
$$;

-- The event list, newest first, filtered, paged by id (p_before_id).
create or replace function public.amocrm_console_events(
  p_status text default null, p_code text default null, p_lesson integer default null,
  p_from timestamptz default null, p_to timestamptz default null, p_q text default null,
  p_before_id bigint default null, p_limit integer default 50)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_limit integer := greatest(1, least(coalesce(p_limit, 50), 200));
  v_q text := nullif(lower(btrim(p_q)), '');
  v_user uuid;
  v_items jsonb;
begin
  -- A user id searches by user; anything else is an e-mail prefix.
  if v_q ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    v_user := v_q::uuid;
    v_q := null;
  end if;
  select coalesce(jsonb_agg(amocrm.console_item(e) order by e.id desc), '[]'::jsonb) into v_items
    from (select * from amocrm.sync_events e
           where (p_status is null or e.status = p_status)
             and (p_code is null or e.last_error_code = p_code)
             and (p_lesson is null or e.lesson_id = p_lesson)
             and (p_from is null or e.created_at >= p_from)
             and (p_to is null or e.created_at < p_to)
             and (v_user is null or e.user_id = v_user)
             and (v_q is null or e.email like replace(replace(replace(v_q, '\', '\\'), '%', '\%'), '_', '\_') || '%')
             and (p_before_id is null or e.id < p_before_id)
           order by e.id desc
           limit v_limit + 1) e;
  return jsonb_build_object(
    'items', coalesce((select jsonb_agg(x) from (select x from jsonb_array_elements(v_items) with ordinality t(x, n) where n <= v_limit) y), '[]'::jsonb),
    'next_before_id', case when jsonb_array_length(v_items) > v_limit then (v_items -> (v_limit - 1) ->> 'id')::bigint end);
end $$;

create or replace function amocrm.console_deal(p_lead_id bigint) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object('lead_id', d.lead_id, 'pipeline_id', d.pipeline_id, 'status_id', d.status_id,
                            'closed', d.closed, 'deleted', d.deleted, 'modified_at', d.modified_at)
    from amocrm.deals d where d.lead_id = p_lead_id
$$;

create or replace function amocrm.console_history(p_lead_id bigint) returns jsonb
language sql stable set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object('pipeline_id', h.pipeline_id, 'status_id', h.status_id,
           'old_status_id', h.old_status_id, 'changed_at', h.changed_at, 'changed_by', h.changed_by, 'source', h.source)
           order by h.changed_at, h.id), '[]'::jsonb)
    from amocrm.deal_stage_history h where h.lead_id = p_lead_id
$$;

-- One event: everything about it, its attempts, its deal and the deal's stage changes.
create or replace function public.amocrm_console_event(p_id bigint)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'event', amocrm.console_item(e) || jsonb_build_object('next_attempt_at', e.next_attempt_at,
               'retryable', e.retryable, 'contact_id', e.contact_id, 'status_id', e.status_id),
    'attempts', coalesce((select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'at', a.at, 'outcome', a.outcome,
                  'code', a.code, 'message', a.message) order by a.at) from amocrm.event_attempts a where a.event_id = e.id), '[]'::jsonb),
    'deal', amocrm.console_deal(coalesce(e.lead_id, (select l.lead_id from amocrm.student_leads l where l.user_id = e.user_id))),
    'history', amocrm.console_history(coalesce(e.lead_id, (select l.lead_id from amocrm.student_leads l where l.user_id = e.user_id))))
  from amocrm.sync_events e where e.id = p_id
$$;

-- One student's story, by exact e-mail or user id.
create or replace function public.amocrm_console_student(p_q text)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_q text := lower(btrim(coalesce(p_q, '')));
  v_user uuid;
  v_email text;
  v_lead bigint;
begin
  if v_q ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    v_user := v_q::uuid;
    select lower(u.email) into v_email from auth.users u where u.id = v_user;
    if not found then
      select e.email into v_email from amocrm.sync_events e where e.user_id = v_user limit 1;
    end if;
  else
    -- Events keep the e-mail lower-cased (indexed); auth.users by its own (exact) index.
    select e.user_id, e.email into v_user, v_email from amocrm.sync_events e where e.email = v_q limit 1;
    if v_user is null then
      select u.id, lower(u.email) into v_user, v_email from auth.users u where u.email = v_q limit 1;
    end if;
  end if;
  if v_user is null then
    return null;
  end if;
  select l.lead_id into v_lead from amocrm.student_leads l where l.user_id = v_user;
  if v_lead is null then
    select e.lead_id into v_lead from amocrm.sync_events e where e.user_id = v_user and e.lead_id is not null order by e.id desc limit 1;
  end if;
  return jsonb_build_object(
    'user_id', v_user, 'email', v_email,
    'events', coalesce((select jsonb_agg(amocrm.console_item(e) order by e.id) from amocrm.sync_events e where e.user_id = v_user), '[]'::jsonb),
    'attempts', coalesce((select jsonb_agg(jsonb_build_object('event_id', a.event_id, 'attempt', a.attempt, 'at', a.at,
                  'outcome', a.outcome, 'code', a.code, 'message', a.message) order by a.at)
                  from amocrm.event_attempts a join amocrm.sync_events e on e.id = a.event_id where e.user_id = v_user), '[]'::jsonb),
    'remembered_lead_id', (select l.lead_id from amocrm.student_leads l where l.user_id = v_user),
    'deal', amocrm.console_deal(v_lead),
    'history', amocrm.console_history(v_lead));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
