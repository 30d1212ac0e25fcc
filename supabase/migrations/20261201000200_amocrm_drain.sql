-- amocrm-lesson-sync, bursts: one drainer at a time works the queue at the shared rate,
-- and deals are found ahead of time when a student signs up (look-ahead jobs, using only
-- rate capacity that lesson events do not use). Same rules as the earlier migrations.

-- ---------------------------------------------------------------------------
-- The drain lease
-- ---------------------------------------------------------------------------
-- One row. A drainer (the background function, or the scheduled run while it drains)
-- holds the lease and renews it per batch; a killed drainer's lease expires and the next
-- one to be woken takes over. last_woken_at keeps a thousand webhooks of one burst from
-- ringing the drainer a thousand times.
create table if not exists amocrm.drainer (
  key           text primary key default 'drain' check (key = 'drain'),
  holder        text,
  lease_until   timestamptz,
  started_at    timestamptz,
  last_woken_at timestamptz,
  drained_total bigint not null default 0
);
insert into amocrm.drainer (key) values ('drain') on conflict (key) do nothing;
alter table amocrm.drainer enable row level security;
revoke all on amocrm.drainer from public, anon, authenticated;
grant select, insert, update, delete on amocrm.drainer to service_role;

-- Lesson events the queue holds that are due now (what a drainer would claim), or pending
-- ones due within p_within_ms (given back to wait for a slot or a pause). Retries in
-- backoff and leases held by others are not waited for.
create or replace function amocrm.due_lesson_events(p_within_ms integer default 0) returns boolean
language sql stable set search_path = '' as $$
  select exists (select 1 from amocrm.sync_events s
                  where (s.status = 'pending' and s.next_attempt_at <= now() + make_interval(secs => p_within_ms / 1000.0))
                     or (s.status = 'failed' and s.retryable and s.next_attempt_at <= now())
                     or (s.status = 'processing' and s.lease_until < now()))
$$;

create or replace function public.amocrm_begin_drain(p_holder text, p_lease_seconds integer default 60)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d amocrm.drainer;
begin
  update amocrm.drainer t
     set holder = p_holder, lease_until = now() + make_interval(secs => p_lease_seconds), started_at = now()
   where t.key = 'drain' and (t.lease_until is null or t.lease_until < now() or t.holder = p_holder)
  returning * into d;
  if found then
    return jsonb_build_object('acquired', true, 'lease_until', d.lease_until);
  end if;
  select * into d from amocrm.drainer t where t.key = 'drain';
  return jsonb_build_object('acquired', false, 'holder', d.holder, 'lease_until', d.lease_until);
end $$;

create or replace function public.amocrm_renew_drain(p_holder text, p_lease_seconds integer default 60)
returns jsonb
language sql security definer set search_path = '' as $$
  with r as (
    update amocrm.drainer t set lease_until = now() + make_interval(secs => p_lease_seconds)
     where t.key = 'drain' and t.holder = p_holder and t.lease_until >= now()
    returning 1)
  select jsonb_build_object('renewed', exists (select 1 from r))
$$;

-- Ends the drain unless lesson events are due, or will be within p_linger_ms (events given
-- back to wait for a slot or a pause): then the drainer goes on (and waits for them). The
-- row lock orders this against amocrm_route_event: an event handed to the drainer before
-- the end is seen here; one routed after it finds no drainer and is moved by its own webhook.
create or replace function public.amocrm_end_drain(p_holder text, p_drained integer default 0, p_linger_ms integer default 0)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d amocrm.drainer;
begin
  select * into d from amocrm.drainer t where t.key = 'drain' for update;
  if d.holder is distinct from p_holder then
    return jsonb_build_object('ended', true, 'held', false);
  end if;
  update amocrm.drainer t set drained_total = t.drained_total + greatest(p_drained, 0) where t.key = 'drain';
  if amocrm.due_lesson_events(greatest(p_linger_ms, 0)) then
    return jsonb_build_object('ended', false, 'held', true);
  end if;
  update amocrm.drainer t set holder = null, lease_until = null where t.key = 'drain';
  return jsonb_build_object('ended', true, 'held', true);
end $$;

-- Gives the lease back whatever is due (budget used up, or the drainer failed): the
-- caller wakes a successor if work remains.
create or replace function public.amocrm_release_drain(p_holder text)
returns jsonb
language sql security definer set search_path = '' as $$
  with r as (
    update amocrm.drainer t set holder = null, lease_until = null
     where t.key = 'drain' and t.holder = p_holder
    returning 1)
  select jsonb_build_object('released', exists (select 1 from r), 'due', amocrm.due_lesson_events())
$$;

-- The webhook asks first: while a drainer holds the queue, the event is made due now and
-- left to it (the webhook answers at once instead of waiting for slots it cannot get).
create or replace function public.amocrm_route_event(p_event_id bigint)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_active boolean;
begin
  select t.lease_until is not null and t.lease_until >= now() into v_active
    from amocrm.drainer t where t.key = 'drain' for share;
  if coalesce(v_active, false) then
    update amocrm.sync_events s set next_attempt_at = least(s.next_attempt_at, now()), updated_at = now()
     where s.id = p_event_id and s.status = 'pending';
  end if;
  return jsonb_build_object('drainer_active', coalesce(v_active, false));
end $$;

-- Someone saw a backlog. wake=true tells exactly one caller per interval to ring the
-- drainer, and only when none holds the lease (a killed one's lease has expired).
create or replace function public.amocrm_request_drain(p_min_interval_ms integer default 5000)
returns jsonb
language sql security definer set search_path = '' as $$
  with woken as (
    update amocrm.drainer t set last_woken_at = now()
     where t.key = 'drain'
       and (t.lease_until is null or t.lease_until < now())
       and (t.last_woken_at is null or t.last_woken_at < now() - make_interval(secs => p_min_interval_ms / 1000.0))
    returning 1)
  select jsonb_build_object('wake', exists (select 1 from woken))
$$;

-- ---------------------------------------------------------------------------
-- Fairness of the lesson queue
-- ---------------------------------------------------------------------------
-- Oldest due first; retries take at most half of a batch, so a storm of failing events
-- never starves fresh ones; still one event per student, none of a student in flight.
create or replace function public.amocrm_claim_due(
  p_holder text, p_limit integer default 20, p_lease_seconds integer default 60)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  e amocrm.sync_events;
  v_users uuid[] := '{}'::uuid[];
  v_retries integer := 0;
  v_max_retries integer := greatest(1, ceil(greatest(p_limit, 1) / 2.0)::integer);
  v_out jsonb := '[]'::jsonb;
begin
  for r in
    select s.id, s.user_id, s.status from amocrm.sync_events s
     where (s.status = 'pending' and s.next_attempt_at <= now())
        or (s.status = 'failed' and s.retryable and s.next_attempt_at <= now())
        or (s.status = 'processing' and s.lease_until < now())
     order by s.next_attempt_at, s.id
     limit greatest(p_limit, 1) * 4
     for update skip locked
  loop
    exit when jsonb_array_length(v_out) >= p_limit;
    continue when r.user_id = any(v_users);
    continue when r.status = 'failed' and v_retries >= v_max_retries;
    -- Another transaction is claiming for this student right now: leave it to them.
    continue when not pg_try_advisory_xact_lock(amocrm.student_lock_key(r.user_id));
    continue when amocrm.student_busy(r.user_id, r.id);
    update amocrm.sync_events s
       set status = 'processing', lease_holder = p_holder,
           lease_until = now() + make_interval(secs => p_lease_seconds),
           attempts = s.attempts + 1, updated_at = now()
     where s.id = r.id
    returning * into e;
    if r.status = 'failed' then v_retries := v_retries + 1; end if;
    v_users := v_users || r.user_id;
    v_out := v_out || jsonb_build_array(amocrm.event_json(e));
  end loop;
  return v_out;
end $$;

-- ---------------------------------------------------------------------------
-- Look-ahead: find a student's deal when they sign up
-- ---------------------------------------------------------------------------
-- status: pending → processing → found (deal remembered) | no_deal (searched again at
-- the first lesson) | failed (permanent: no e-mail, search capped); retryable failures
-- go back to pending later. Turned off with the setting lookahead_enabled = false.
create table if not exists amocrm.lookahead_jobs (
  user_id         uuid primary key,
  email           text,
  status          text not null default 'pending'
                  check (status in ('pending', 'processing', 'found', 'no_deal', 'failed')),
  attempts        integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  lease_holder    text,
  lease_until     timestamptz,
  lead_id         bigint,
  last_error_code text,
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now()
);
create index if not exists lookahead_jobs_due_idx
  on amocrm.lookahead_jobs (next_attempt_at) where status in ('pending', 'processing');
alter table amocrm.lookahead_jobs enable row level security;
revoke all on amocrm.lookahead_jobs from public, anon, authenticated;
grant select, insert, update, delete on amocrm.lookahead_jobs to service_role;

insert into amocrm.system_settings (key, value) values ('lookahead_enabled', 'true'::jsonb)
on conflict (key) do nothing;

-- The sign-up trigger. Like the lesson trigger, it never fails the platform's write.
create or replace function amocrm.on_user_created() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  begin
    if coalesce((select (s.value #>> '{}')::boolean from amocrm.system_settings s where s.key = 'lookahead_enabled'), true)
       and coalesce(btrim(new.email), '') <> '' then
      insert into amocrm.lookahead_jobs (user_id, email)
      values (new.id, lower(btrim(new.email)))
      on conflict (user_id) do nothing;
    end if;
  exception when others then
    raise warning '[AmoCRM] look-ahead job not queued for user %: %', new.id, sqlerrm;
  end;
  return null;
end $$;

drop trigger if exists amocrm_user_created on auth.users;
create trigger amocrm_user_created after insert on auth.users
  for each row execute function amocrm.on_user_created();

-- Jobs of students who have no lesson event and no remembered deal yet (a student who
-- already completed a lesson is the lesson path's business).
create or replace function public.amocrm_claim_lookahead(
  p_holder text, p_limit integer default 20, p_lease_seconds integer default 60)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_out jsonb;
begin
  -- Turned off: queued jobs wait (and run again if it is turned back on).
  if not coalesce((select (s.value #>> '{}')::boolean from amocrm.system_settings s where s.key = 'lookahead_enabled'), true) then
    return '[]'::jsonb;
  end if;
  with picked as (
    select j.user_id from amocrm.lookahead_jobs j
     where ((j.status = 'pending' and j.next_attempt_at <= now())
            or (j.status = 'processing' and j.lease_until < now()))
       and not exists (select 1 from amocrm.sync_events e where e.user_id = j.user_id)
       and not exists (select 1 from amocrm.student_leads l where l.user_id = j.user_id)
     order by j.next_attempt_at, j.created_at
     limit greatest(p_limit, 1)
     for update skip locked),
  claimed as (
    update amocrm.lookahead_jobs j
       set status = 'processing', lease_holder = p_holder,
           lease_until = now() + make_interval(secs => p_lease_seconds),
           attempts = j.attempts + 1, updated_at = now()
      from picked where j.user_id = picked.user_id
    returning j.user_id, j.email, j.attempts)
  select coalesce(jsonb_agg(jsonb_build_object('user_id', c.user_id, 'email', c.email, 'attempts', c.attempts)), '[]'::jsonb)
    into v_out from claimed c;
  return v_out;
end $$;

create or replace function public.amocrm_finish_lookahead(
  p_user_id uuid, p_holder text, p_outcome text,
  p_lead_id bigint default null, p_contact_id bigint default null,
  p_error_code text default null, p_retry_in_ms integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  j amocrm.lookahead_jobs;
begin
  if p_outcome not in ('found', 'no_deal', 'failed', 'retry') then
    raise exception 'amocrm_finish_lookahead: unknown outcome %', p_outcome using errcode = '22023';
  end if;
  select * into j from amocrm.lookahead_jobs t where t.user_id = p_user_id for update;
  if not found or j.status <> 'processing' or j.lease_holder is distinct from p_holder then
    return jsonb_build_object('recorded', false);
  end if;
  update amocrm.lookahead_jobs t set
    -- Waiting for spare capacity is not a failed attempt.
    attempts = case when p_error_code = 'no_spare_capacity' then greatest(t.attempts - 1, 0) else t.attempts end,
    status = case when p_outcome = 'retry' then case when t.attempts >= 5 and p_error_code is distinct from 'no_spare_capacity' then 'failed' else 'pending' end else p_outcome end,
    next_attempt_at = case when p_outcome = 'retry' then now() + make_interval(secs => coalesce(p_retry_in_ms, 60000) / 1000.0) else t.next_attempt_at end,
    lease_holder = null, lease_until = null, lead_id = p_lead_id, last_error_code = p_error_code, updated_at = now()
   where t.user_id = p_user_id;
  if p_outcome = 'found' and p_lead_id is not null then
    insert into amocrm.student_leads as l (user_id, email, lead_id, contact_id)
    values (p_user_id, j.email, p_lead_id, p_contact_id)
    on conflict (user_id) do nothing; -- a lesson that found the deal meanwhile knows better
  end if;
  return jsonb_build_object('recorded', true);
end $$;

-- Look-ahead requests take only capacity that lesson events do not use: the next slot,
-- if it is at most one slot away (nobody but the job itself is queued), nothing is paused,
-- and no lesson event is due or in flight. A lesson request arriving meanwhile waits at
-- most the one slot already taken (1/rate).
create or replace function public.amocrm_take_spare_slot(p_per_second numeric default 6)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r      amocrm.rate_limiter;
  v_now  timestamptz;
  v_rate numeric;
  v_gap  interval;
  v_slot timestamptz;
begin
  if p_per_second is null or p_per_second <= 0 then
    raise exception 'p_per_second must be positive' using errcode = '22023';
  end if;
  select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  if not found then
    return jsonb_build_object('granted', false);
  end if;
  v_now  := clock_timestamp();
  v_rate := p_per_second * amocrm.effective_rate_factor(r, v_now);
  v_gap  := make_interval(secs => 1.0 / v_rate);
  v_slot := greatest(v_now, r.next_free_at);
  if v_slot > v_now + v_gap or coalesce(r.paused_until, v_now) > v_now
     or amocrm.due_lesson_events()
     or exists (select 1 from amocrm.sync_events s where s.status = 'processing' and s.lease_until >= now()) then
    return jsonb_build_object('granted', false);
  end if;
  update amocrm.rate_limiter t set next_free_at = v_slot + v_gap where t.key = 'amocrm';
  return jsonb_build_object('granted', true, 'wait_ms', ceil(extract(epoch from (v_slot - v_now)) * 1000), 'rate', v_rate,
                            'now_ms', floor(extract(epoch from v_now) * 1000),
                            'slot_ms', floor(extract(epoch from v_slot) * 1000));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
