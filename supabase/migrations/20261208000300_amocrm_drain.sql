-- amocrm-lesson-sync 1.0.0, bursts: one drainer at a time works the queue at the shared
-- rate, in batches (a batch's outcomes and found deals are written in one call each);
-- the first webhooks of a burst ring it and hand it their events; deals are found ahead
-- of time when a student signs up (look-ahead jobs, using only rate capacity that lesson
-- events do not use). Same rules as the sync's migration (20261208000100).

-- ---------------------------------------------------------------------------
-- The drain lease
-- ---------------------------------------------------------------------------
-- One row. A drainer (the background function, or the scheduled run while it drains)
-- holds the lease and renews it per batch; a killed drainer's lease expires and the next
-- one to be woken takes over. last_woken_at keeps a thousand webhooks of one burst from
-- ringing the drainer a thousand times.
-- drained_total: events drained, for the console. amocrm_end_drain's p_drained is the
--   caller's running total, and a drainer that lingers calls it once per pass:
--   drained_counted is how much of drained_holder's running total drained_total already
--   holds, so each event is counted once.
-- ring_failed_at: the last ring was refused or unanswered (function missing, wrong URL,
--   a plan without background functions). A rung drainer counts only if it was rung after
--   that: webhooks deliver their own events instead of handing them to nobody, and the
--   ring is tried again at most every 5 s.
create table if not exists amocrm.drainer (
  key             text primary key default 'drain' check (key = 'drain'),
  holder          text,
  lease_until     timestamptz,
  started_at      timestamptz,
  last_woken_at   timestamptz,
  drained_total   bigint not null default 0,
  ring_failed_at  timestamptz,
  drained_holder  text,
  drained_counted bigint not null default 0
);
insert into amocrm.drainer (key) values ('drain') on conflict (key) do nothing;
alter table amocrm.drainer enable row level security;
revoke all on amocrm.drainer from public, anon, authenticated;
grant select, insert, update, delete on amocrm.drainer to service_role;

-- ---------------------------------------------------------------------------
-- Look-ahead jobs: find a student's deal when they sign up
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

-- ---------------------------------------------------------------------------
-- Who drains
-- ---------------------------------------------------------------------------
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

-- Look-ahead jobs the drainer would claim now (look-ahead on, student not already known
-- or in a lesson event): they wake the drainer too.
create or replace function amocrm.due_lookahead_jobs() returns boolean
language sql stable set search_path = '' as $$
  select coalesce((select (s.value #>> '{}')::boolean from amocrm.system_settings s where s.key = 'lookahead_enabled'), true)
     and exists (select 1 from amocrm.lookahead_jobs j
                  where ((j.status = 'pending' and j.next_attempt_at <= now())
                         or (j.status = 'processing' and j.lease_until < now()))
                    and not exists (select 1 from amocrm.sync_events e where e.user_id = j.user_id)
                    and not exists (select 1 from amocrm.student_leads l where l.user_id = j.user_id))
$$;

-- Takes the drain lease: free, expired, or already the caller's.
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

-- Renews the caller's live lease (per batch); an expired lease is not revived.
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
-- p_drained is what this holder has drained so far: only what it adds since its last call
-- is counted (a new holder's count starts at zero).
create or replace function public.amocrm_end_drain(p_holder text, p_drained integer default 0, p_linger_ms integer default 0)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d amocrm.drainer;
  v_counted bigint;
begin
  select * into d from amocrm.drainer t where t.key = 'drain' for update;
  if d.holder is distinct from p_holder then
    return jsonb_build_object('ended', true, 'held', false);
  end if;
  v_counted := case when d.drained_holder = p_holder then d.drained_counted else 0 end;
  update amocrm.drainer t
     set drained_total = t.drained_total + greatest(greatest(p_drained, 0) - v_counted, 0),
         drained_holder = p_holder,
         drained_counted = greatest(greatest(p_drained, 0), v_counted)
   where t.key = 'drain';
  if amocrm.due_lesson_events(greatest(p_linger_ms, 0)) then
    return jsonb_build_object('ended', false, 'held', true);
  end if;
  update amocrm.drainer t set holder = null, lease_until = null where t.key = 'drain';
  return jsonb_build_object('ended', true, 'held', true);
end $$;

-- Gives the lease back whatever is due (budget used up, or the drainer failed): the
-- caller wakes a successor if work remains. Lesson events or look-ahead jobs due both
-- want the background drainer (it has 15 minutes; the scheduled run 30 s).
create or replace function public.amocrm_release_drain(p_holder text)
returns jsonb
language sql security definer set search_path = '' as $$
  with r as (
    update amocrm.drainer t set holder = null, lease_until = null
     where t.key = 'drain' and t.holder = p_holder
    returning 1)
  select jsonb_build_object('released', exists (select 1 from r),
                            'due', amocrm.due_lesson_events() or amocrm.due_lookahead_jobs())
$$;

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
-- The webhooks and the drainer
-- ---------------------------------------------------------------------------
-- The webhook asks first (amocrm_route_event): while a drainer holds the queue, the event
-- is made due now and left to it (the webhook answers at once instead of waiting for
-- slots it cannot get).
--
-- Between the ring and the drainer's first batch (a cold start, up to a second or two)
-- the rest of a burst's webhooks would each wait for a slot and defer their event. A ring
-- that no drainer has answered yet (woken after the last drain began, and after the last
-- failed ring) counts as a drainer for p_woken_ms: the webhook hands its event over and
-- answers at once. If that drainer has not begun p_ring_again_ms after the ring, exactly
-- one webhook is told to ring again (ring=true), so a lost ring is repeated without a
-- second call per webhook; the scheduled run is the last backstop.
--
-- A burst is seen by its first webhooks: with p_backlog given (the caller can ring a
-- drainer) and at least that many events pending, nobody draining and nobody rung in the
-- last p_ring_again_ms, this webhook is the one to ring (ring=true) and hands its event
-- over; so do the rest of the burst. Without it each of them would first wait for a slot
-- it mostly cannot get, and that is billed function time. A lone event is still moved by
-- its own webhook.

-- Rung and not yet begun: woken in the last p_woken_ms, after the last drain began and
-- after the last failed ring.
create or replace function amocrm.drainer_rung(d amocrm.drainer, p_woken_ms integer) returns boolean
language sql stable set search_path = '' as $$
  select coalesce(d.last_woken_at > now() - make_interval(secs => greatest(p_woken_ms, 0) / 1000.0)
                  and (d.started_at is null or d.last_woken_at > d.started_at)
                  and (d.ring_failed_at is null or d.last_woken_at > d.ring_failed_at), false)
$$;

create or replace function public.amocrm_route_event(
  p_event_id bigint, p_woken_ms integer default 10000, p_ring_again_ms integer default 5000,
  p_backlog integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d amocrm.drainer;
  v_again interval := make_interval(secs => greatest(p_ring_again_ms, 0) / 1000.0);
  v_ring boolean;
  v_active boolean;
begin
  -- Read without a lock, only to decide whether to try for the ring: while a drainer runs
  -- or was rung moments ago (most of a burst's webhooks) neither the pending events are
  -- counted nor the row locked.
  select * into d from amocrm.drainer t where t.key = 'drain';
  if not coalesce(d.lease_until >= now(), false)
     and (d.last_woken_at is null or d.last_woken_at < now() - v_again)
     and (amocrm.drainer_rung(d, p_woken_ms)
          or (p_backlog is not null
              and (select count(*) from (select 1 from amocrm.sync_events s where s.status = 'pending'
                                          limit greatest(p_backlog, 1)) b) >= greatest(p_backlog, 1))) then
    -- Re-checked under the row lock: one webhook rings. Taken before the share lock below,
    -- as upgrading a shared row lock would deadlock two webhooks doing the same.
    update amocrm.drainer t set last_woken_at = now()
     where t.key = 'drain' and (t.lease_until is null or t.lease_until < now())
       and (t.last_woken_at is null or t.last_woken_at < now() - v_again)
    returning true into v_ring;
  end if;
  select * into d from amocrm.drainer t where t.key = 'drain' for share;
  v_active := coalesce(d.lease_until >= now(), false) or amocrm.drainer_rung(d, p_woken_ms);
  if v_active then
    update amocrm.sync_events s set next_attempt_at = least(s.next_attempt_at, now()), updated_at = now()
     where s.id = p_event_id and s.status = 'pending';
  end if;
  return jsonb_build_object('drainer_active', v_active, 'ring', coalesce(v_ring, false));
end $$;

-- The caller's ring was refused or unanswered (ring_failed_at).
create or replace function public.amocrm_ring_failed()
returns jsonb
language sql security definer set search_path = '' as $$
  with r as (update amocrm.drainer t set ring_failed_at = now() where t.key = 'drain' returning 1)
  select jsonb_build_object('recorded', exists (select 1 from r))
$$;

-- ---------------------------------------------------------------------------
-- Batches
-- ---------------------------------------------------------------------------
-- Claims up to p_limit due events: pending or failed-retryable whose next_attempt_at has
-- come, and processing ones whose lease expired (a killed invocation). SKIP LOCKED:
-- overlapping runs never claim the same event. At most one event per student, and none
-- of a student whose other event is in flight or held (see amocrm_claim_event). Oldest
-- due first; retries take at most half of a batch, so a storm of failing events never
-- starves fresh ones.
--
-- A student with a remembered deal costs a batch nothing but a share of one read (250
-- deals) and one PATCH (50 moves); a student without one costs a contact search. The
-- drainer claims up to 250 events, but at most p_max_unknown students to search (50: a
-- batch stays well inside its leases even at a halved rate). Once the searches are used
-- up, further unknown students are left (still oldest) for the next batch while known
-- students' events ride along: a known student's lesson is not queued behind a whole
-- webinar of first lessons, and the first lessons lose only the extra PATCHes.
create or replace function public.amocrm_claim_due(
  p_holder text, p_limit integer default 20, p_lease_seconds integer default 60, p_max_unknown integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  e amocrm.sync_events;
  v_users uuid[] := '{}'::uuid[];
  v_retries integer := 0;
  v_max_retries integer := greatest(1, ceil(greatest(p_limit, 1) / 2.0)::integer);
  v_unknown integer := 0;
  v_max_unknown integer := least(greatest(coalesce(p_max_unknown, p_limit), 1), greatest(p_limit, 1));
  v_claimed amocrm.sync_events[] := array[]::amocrm.sync_events[];
begin
  for r in
    select s.id, s.user_id, s.status,
           not exists (select 1 from amocrm.student_leads l where l.user_id = s.user_id) as unknown
      from amocrm.sync_events s
     where (s.status = 'pending' and s.next_attempt_at <= now())
        or (s.status = 'failed' and s.retryable and s.next_attempt_at <= now())
        or (s.status = 'processing' and s.lease_until < now())
     order by s.next_attempt_at, s.id
     limit greatest(p_limit, 1) * 4
     for update of s skip locked
  loop
    exit when cardinality(v_claimed) >= p_limit;
    continue when r.user_id = any(v_users);
    continue when r.status = 'failed' and v_retries >= v_max_retries;
    continue when r.unknown and v_unknown >= v_max_unknown;
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
    if r.unknown then v_unknown := v_unknown + 1; end if;
    v_users := v_users || r.user_id;
    v_claimed := v_claimed || e;
  end loop;
  return coalesce((select jsonb_agg(amocrm.event_json(v_claimed[i]) order by i) from generate_subscripts(v_claimed, 1) as i), '[]'::jsonb);
end $$;

-- Claims held while a batch works, and checked before every move: extends the caller's
-- live claims on p_event_ids to now() + p_lease_seconds, and its drain lease if it holds
-- one. An expired claim is not revived: another invocation may already have claimed a
-- newer lesson of the student. Answers the ids still held; only their moves may be sent.
create or replace function public.amocrm_hold_events(
  p_holder text, p_event_ids bigint[], p_lease_seconds integer default 90, p_drain_lease_seconds integer default 60)
returns jsonb
language sql security definer set search_path = '' as $$
  with held as (
    update amocrm.sync_events s set lease_until = now() + make_interval(secs => p_lease_seconds)
     where s.id = any(coalesce(p_event_ids, '{}'::bigint[])) and s.status = 'processing'
       and s.lease_holder = p_holder and s.lease_until > now()
    returning s.id),
  drain as (
    update amocrm.drainer t set lease_until = greatest(t.lease_until, now() + make_interval(secs => p_drain_lease_seconds))
     where t.key = 'drain' and t.holder = p_holder and t.lease_until >= now()
    returning 1)
  select jsonb_build_object('held', coalesce((select jsonb_agg(h.id order by h.id) from held h), '[]'::jsonb),
                            'drain_renewed', exists (select 1 from drain))
$$;

-- One call for a batch's outcomes. p_outcomes: [{event_id, outcome, error_code?, error?,
-- lead_id?, contact_id?, status_id?, retry_in_ms?, max_attempts?, hold_ms?}, ...]. Each is
-- recorded exactly as amocrm_finish_event records it (same lease check, same answer), in
-- event id order so two batches never wait on each other's rows in opposite orders; the
-- answers come back in the given order. hold_ms: the item's move was sent and never
-- answered (hold_until); the hold is set whether or not the outcome is recorded (the
-- request is out either way), and only ever lengthened.
create or replace function public.amocrm_finish_events(p_holder text, p_outcomes jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  o record;
  v_answers jsonb := '{}'::jsonb;
begin
  if jsonb_typeof(coalesce(p_outcomes, '[]'::jsonb)) <> 'array' then
    raise exception 'amocrm_finish_events: p_outcomes must be a JSON array' using errcode = '22023';
  end if;
  for o in
    select x.i, x.item from jsonb_array_elements(coalesce(p_outcomes, '[]'::jsonb)) with ordinality as x(item, i)
     order by (x.item->>'event_id')::bigint, x.i
  loop
    if (o.item->>'hold_ms') is not null then
      update amocrm.sync_events s
         set hold_until = greatest(s.hold_until, now() + make_interval(secs => (o.item->>'hold_ms')::integer / 1000.0))
       where s.id = (o.item->>'event_id')::bigint;
    end if;
    v_answers := v_answers || jsonb_build_object(o.i::text, public.amocrm_finish_event(
      p_event_id     => (o.item->>'event_id')::bigint,
      p_holder       => p_holder,
      p_outcome      => o.item->>'outcome',
      p_error_code   => o.item->>'error_code',
      p_error        => o.item->>'error',
      p_lead_id      => (o.item->>'lead_id')::bigint,
      p_contact_id   => (o.item->>'contact_id')::bigint,
      p_status_id    => (o.item->>'status_id')::bigint,
      p_retry_in_ms  => (o.item->>'retry_in_ms')::integer,
      p_max_attempts => coalesce((o.item->>'max_attempts')::integer, 8)));
  end loop;
  return coalesce((select jsonb_agg(v_answers->(i::text) order by i)
                     from generate_series(1, jsonb_array_length(coalesce(p_outcomes, '[]'::jsonb))) as i), '[]'::jsonb);
end $$;

-- The deals a batch's searches found, remembered in one call ([{user_id, lead_id,
-- contact_id?, email?}, ...]); the same upsert as amocrm_remember_lead, one row per student.
create or replace function public.amocrm_remember_leads(p_leads jsonb)
returns jsonb
language sql security definer set search_path = '' as $$
  with found as (
    select distinct on (x.user_id) x.user_id, x.lead_id, x.contact_id, x.email
      from jsonb_to_recordset(coalesce(p_leads, '[]'::jsonb)) as x(user_id uuid, lead_id bigint, contact_id bigint, email text)
     where x.user_id is not null and x.lead_id is not null),
  kept as (
    insert into amocrm.student_leads as l (user_id, email, lead_id, contact_id)
    select f.user_id, f.email, f.lead_id, f.contact_id from found f
    on conflict (user_id) do update
       set lead_id = excluded.lead_id,
           contact_id = coalesce(excluded.contact_id, l.contact_id),
           email = coalesce(excluded.email, l.email),
           updated_at = now()
    returning 1)
  select jsonb_build_object('remembered', (select count(*) from kept))
$$;

-- ---------------------------------------------------------------------------
-- Look-ahead
-- ---------------------------------------------------------------------------
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
-- most the one slot already taken (1/rate). Their slots are remembered too (recent_slots:
-- a refresh must not land beside a second of look-ahead requests).
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
  update amocrm.rate_limiter t
     set next_free_at = v_slot + v_gap,
         recent_slots = amocrm.remember_slot(r, v_now, v_slot)
   where t.key = 'amocrm';
  return jsonb_build_object('granted', true, 'wait_ms', ceil(extract(epoch from (v_slot - v_now)) * 1000), 'rate', v_rate,
                            'now_ms', floor(extract(epoch from v_now) * 1000),
                            'slot_ms', floor(extract(epoch from v_slot) * 1000));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
