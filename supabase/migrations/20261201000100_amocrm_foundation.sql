-- amocrm-lesson-sync, foundation: a jitter-proof shared rate limit, what an invocation
-- learns stored at once, and the fact that a move happened kept apart from the status.
-- Same rules as the earlier migrations: SECURITY DEFINER, empty search_path, executable
-- by service_role only (the lock-down call at the end).

-- ---------------------------------------------------------------------------
-- Shared rate limit
-- ---------------------------------------------------------------------------
-- A slot is a promise "start your request at T". A starved process or a slow network
-- starts it late, and late requests bunch up at amoCRM, which answers 429 and, when it
-- keeps happening, blocks the whole account with 403. Three rules keep the promise:
--   1. Reservations reach at most p_horizon_ms ahead (the functions pass 1 s; without it
--      the queue is unbounded up to p_max_wait_ms); a caller further back in the queue
--      is told to come back (granted=false, queued=true) instead of holding a slot it may
--      start long after the world has changed (a 429 pause, say).
--   2. The caller voids a slot it could not start on time and takes a new one (in
--      lib/amocrm/rate-limit.ts: the database cannot see when a request really left).
--   3. Any 429 pauses every instance (paused_until, honouring Retry-After) and halves
--      the shared rate; the rate then recovers linearly to the full rate over 2 minutes.
-- The token refresh goes ahead of the queue (p_priority): a starved refresh would stall
-- every request behind it. It pushes the queue back by one slot, and at most one
-- priority request starts per second.
alter table amocrm.rate_limiter
  add column if not exists paused_until     timestamptz,
  add column if not exists rate_factor      numeric not null default 1
                                            check (rate_factor > 0 and rate_factor <= 1),
  add column if not exists penalized_at     timestamptz,
  add column if not exists priority_next_at timestamptz,
  add column if not exists rate_limited_total bigint not null default 0;

-- The rate factor in force at p_now: the last penalty recovering by 1/240 per second
-- (0.5 → 1 in two minutes).
create or replace function amocrm.effective_rate_factor(r amocrm.rate_limiter, p_now timestamptz)
returns numeric
language sql immutable set search_path = '' as $$
  select least(1.0, r.rate_factor
               + coalesce(extract(epoch from (p_now - r.penalized_at)), 1e9)::numeric / 240.0)
$$;

drop function if exists public.amocrm_take_rate_slot(numeric, integer);

create or replace function public.amocrm_take_rate_slot(
  p_per_second numeric default 6, p_max_wait_ms integer default 2000,
  p_priority boolean default false, p_horizon_ms integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r        amocrm.rate_limiter;
  v_now    timestamptz;
  v_rate   numeric;
  v_gap    interval;
  v_start  timestamptz;
  v_slot   timestamptz;
  v_wait   numeric;
begin
  if p_per_second is null or p_per_second <= 0 then
    raise exception 'p_per_second must be positive' using errcode = '22023';
  end if;
  select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  if not found then
    -- The row is created by the first migration; if someone deleted it, recreate it
    -- rather than hand out unlimited slots.
    insert into amocrm.rate_limiter (key) values ('amocrm') on conflict (key) do nothing;
    select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  end if;
  -- The clock is read once the row lock is ours: a caller that queued behind others
  -- measures its wait from when it gets its answer.
  v_now   := clock_timestamp();
  v_rate  := p_per_second * amocrm.effective_rate_factor(r, v_now);
  v_gap   := make_interval(secs => 1.0 / v_rate);
  v_start := greatest(v_now, coalesce(r.paused_until, v_now));

  if p_priority then
    v_slot := greatest(v_start, coalesce(r.priority_next_at, v_start));
  else
    v_slot := greatest(v_start, r.next_free_at);
  end if;
  v_wait := extract(epoch from (v_slot - v_now)) * 1000;

  if v_wait > p_max_wait_ms then
    return jsonb_build_object('granted', false, 'queued', false, 'wait_ms', ceil(v_wait), 'rate', v_rate);
  end if;
  if not p_priority and p_horizon_ms is not null and v_wait > p_horizon_ms then
    -- Come back when the slot is within the horizon; nothing is reserved meanwhile.
    return jsonb_build_object('granted', false, 'queued', true, 'wait_ms', ceil(v_wait),
                              'retry_in_ms', ceil(v_wait - p_horizon_ms / 2.0), 'rate', v_rate);
  end if;

  if p_priority then
    update amocrm.rate_limiter t
       set priority_next_at = v_slot + interval '1 second',
           next_free_at = greatest(t.next_free_at, v_slot) + v_gap
     where t.key = 'amocrm';
  else
    update amocrm.rate_limiter t set next_free_at = v_slot + v_gap where t.key = 'amocrm';
  end if;
  -- now_ms/slot_ms let the caller map the slot onto its own clock (see rate-limit.ts).
  return jsonb_build_object('granted', true, 'wait_ms', ceil(v_wait), 'rate', v_rate,
                            'now_ms', floor(extract(epoch from v_now) * 1000),
                            'slot_ms', floor(extract(epoch from v_slot) * 1000));
end $$;

-- amoCRM answered 429: every instance pauses (at least 1 s, or what amoCRM asked) and
-- the shared rate halves, once per second however many instances report the same storm.
create or replace function public.amocrm_report_rate_limited(p_retry_after_ms integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r       amocrm.rate_limiter;
  v_now   timestamptz := clock_timestamp();
  v_pause timestamptz;
  v_penalize boolean;
begin
  select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  if not found then
    return jsonb_build_object('paused_until', null);
  end if;
  v_pause := greatest(coalesce(r.paused_until, v_now),
                      v_now + make_interval(secs => greatest(coalesce(p_retry_after_ms, 0), 1000) / 1000.0));
  v_penalize := r.penalized_at is null or r.penalized_at < v_now - interval '1 second';
  update amocrm.rate_limiter t
     set paused_until = v_pause,
         next_free_at = greatest(t.next_free_at, v_pause),
         rate_factor = case when v_penalize
                            then greatest(0.25, amocrm.effective_rate_factor(r, v_now) / 2)
                            else t.rate_factor end,
         penalized_at = case when v_penalize then v_now else t.penalized_at end,
         rate_limited_total = t.rate_limited_total + 1
   where t.key = 'amocrm'
  returning * into r;
  return jsonb_build_object('paused_until', r.paused_until, 'rate_factor', r.rate_factor,
                            'rate_limited_total', r.rate_limited_total);
end $$;

-- ---------------------------------------------------------------------------
-- What an invocation learns is kept the moment it is learned
-- ---------------------------------------------------------------------------
-- The deal found for a student by a search: stored before the move is even tried, so an
-- event deferred for want of a rate slot, retried or failed never pays the search again.
create or replace function public.amocrm_remember_lead(
  p_user_id uuid, p_lead_id bigint, p_contact_id bigint default null, p_email text default null)
returns jsonb
language sql security definer set search_path = '' as $$
  insert into amocrm.student_leads as l (user_id, email, lead_id, contact_id)
  values (p_user_id, p_email, p_lead_id, p_contact_id)
  on conflict (user_id) do update
     set lead_id = excluded.lead_id,
         contact_id = coalesce(excluded.contact_id, l.contact_id),
         email = coalesce(excluded.email, l.email),
         updated_at = now()
  returning jsonb_build_object('remembered', true)
$$;

-- ---------------------------------------------------------------------------
-- A move that happened stays a fact
-- ---------------------------------------------------------------------------
-- done_at: when the event's deal was first found in (or moved to) the lesson's stage. A
-- forced replay of a done event whose deal has since gone further must not turn it into
-- skipped: the move did happen. finish_event keeps such an event done (and says so in
-- its answer, which the invocation logs).
alter table amocrm.sync_events add column if not exists done_at timestamptz;
update amocrm.sync_events set done_at = coalesce(finished_at, updated_at) where status = 'done' and done_at is null;

create or replace function public.amocrm_finish_event(
  p_event_id bigint, p_holder text, p_outcome text,
  p_error_code text default null, p_error text default null,
  p_lead_id bigint default null, p_contact_id bigint default null, p_status_id bigint default null,
  p_retry_in_ms integer default null, p_max_attempts integer default 8)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  e amocrm.sync_events;
  v_status text;
begin
  if p_outcome not in ('done','skipped','retry','failed','parked','deferred') then
    raise exception 'amocrm_finish_event: unknown outcome %', p_outcome using errcode = '22023';
  end if;
  select * into e from amocrm.sync_events s where s.id = p_event_id for update;
  if not found or e.status <> 'processing' or e.lease_holder is distinct from p_holder then
    return jsonb_build_object('recorded', false, 'status', e.status);
  end if;

  v_status := case p_outcome
    when 'retry' then case when e.attempts >= p_max_attempts then 'dead' else 'failed' end
    when 'deferred' then 'pending'
    -- The deal is past the lesson's stage now, but this event's move happened.
    when 'skipped' then case when e.done_at is not null then 'done' else 'skipped' end
    else p_outcome end;

  update amocrm.sync_events s set
    status = v_status,
    attempts = case when p_outcome = 'deferred' then greatest(s.attempts - 1, 0) else s.attempts end,
    retryable = case when v_status = 'failed' then p_outcome = 'retry' else null end,
    next_attempt_at = case when p_outcome in ('retry','deferred')
                           then now() + make_interval(secs => coalesce(p_retry_in_ms, 0) / 1000.0)
                           else s.next_attempt_at end,
    lease_holder = null, lease_until = null,
    last_error_code = case when v_status = 'done' then null else coalesce(p_error_code, s.last_error_code) end,
    last_error = case when v_status = 'done' then null else coalesce(p_error, s.last_error) end,
    lead_id = coalesce(p_lead_id, s.lead_id),
    contact_id = coalesce(p_contact_id, s.contact_id),
    status_id = case when v_status = 'done' and e.done_at is not null and p_outcome = 'skipped'
                     then s.status_id else coalesce(p_status_id, s.status_id) end,
    done_at = case when v_status = 'done' then coalesce(s.done_at, now()) else s.done_at end,
    updated_at = now(),
    finished_at = case when v_status in ('done','skipped','dead') or (v_status = 'failed' and p_outcome = 'failed')
                       then now() else null end
  where s.id = p_event_id;

  if p_lead_id is not null and v_status in ('done','skipped') then
    insert into amocrm.student_leads (user_id, email, lead_id, contact_id)
    values (e.user_id, e.email, p_lead_id, p_contact_id)
    on conflict (user_id) do update
      set lead_id = excluded.lead_id, contact_id = coalesce(excluded.contact_id, amocrm.student_leads.contact_id),
          email = excluded.email, updated_at = now();
  end if;

  return jsonb_build_object('recorded', true, 'status', v_status,
                            'became_dead', v_status = 'dead', 'attempts', e.attempts);
end $$;

-- ---------------------------------------------------------------------------
-- Replay by ids: ids that do not exist come back as such
-- ---------------------------------------------------------------------------
create or replace function public.amocrm_missing_event_ids(p_ids bigint[])
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(i order by i), '[]'::jsonb)
    from unnest(p_ids) as i
   where not exists (select 1 from amocrm.sync_events e where e.id = i)
$$;

-- ---------------------------------------------------------------------------
-- Parked events, counted cheaply
-- ---------------------------------------------------------------------------
-- The scheduled run asks every two minutes whether events wait on the account; an index
-- lookup, not the status page's aggregate over the whole outbox.
create or replace function public.amocrm_count_parked(p_codes text[] default null)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('parked', count(*))
    from amocrm.sync_events e
   where e.status = 'parked' and (p_codes is null or e.last_error_code = any(p_codes))
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
