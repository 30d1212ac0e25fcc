-- amocrm-lesson-sync, bursts at the limit: a batch's outcomes and found deals are written
-- in one call each (a drainer's database round trips no longer grow with its events);
-- batches hold a read's worth of events but a bounded number of searches; the first
-- webhook of a burst rings the drainer, and a drainer that has just been rung already
-- takes the webhooks' events; look-ahead jobs that are due wake the drainer too. Same
-- rules as the earlier migrations.

-- ---------------------------------------------------------------------------
-- One call for a batch's outcomes
-- ---------------------------------------------------------------------------
-- p_outcomes: [{event_id, outcome, error_code?, error?, lead_id?, contact_id?, status_id?,
-- retry_in_ms?, max_attempts?}, ...]. Each is recorded exactly as amocrm_finish_event
-- records it (same lease check, same answer), in event id order so two batches never
-- wait on each other's rows in opposite orders; the answers come back in the given order.
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
-- A drainer that has just been rung takes the webhooks' events
-- ---------------------------------------------------------------------------
-- Between the ring and the drainer's first batch (a cold start, up to a second or two)
-- the rest of a burst's webhooks would each wait for a slot and defer their event. A ring
-- that no drainer has answered yet (woken after the last drain began) counts as a drainer
-- for p_woken_ms: the webhook hands its event over and answers at once. If that drainer
-- has not begun p_ring_again_ms after the ring, exactly one webhook is told to ring again
-- (ring=true), so a lost ring is repeated without a second call per webhook; the
-- scheduled run is the last backstop.
--
-- A burst is seen by its first webhooks: with p_backlog given (the caller can ring a
-- drainer) and at least that many events pending, nobody draining and nobody rung in the
-- last p_ring_again_ms, this webhook is the one to ring (ring=true) and hands its event
-- over; so do the rest of the burst. Without it each of them would first wait for a slot
-- it mostly cannot get, and that is billed function time. A lone event is still moved by
-- its own webhook.
-- Rung and not yet begun: woken in the last p_woken_ms, after the last drain began.
create or replace function amocrm.drainer_rung(d amocrm.drainer, p_woken_ms integer) returns boolean
language sql stable set search_path = '' as $$
  select coalesce(d.last_woken_at > now() - make_interval(secs => greatest(p_woken_ms, 0) / 1000.0)
                  and (d.started_at is null or d.last_woken_at > d.started_at), false)
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
drop function if exists public.amocrm_route_event(bigint);
drop function if exists public.amocrm_route_event(bigint, integer, integer);

-- ---------------------------------------------------------------------------
-- Batches as large as a read, searches as many as a batch can afford
-- ---------------------------------------------------------------------------
-- A student with a remembered deal costs a batch nothing but a share of one read (250
-- deals) and one PATCH (50 moves); a student without one costs a contact search. The
-- drainer claims up to 250 events, but at most p_max_unknown students to search (50: a
-- batch stays well inside its leases even at a halved rate). Oldest due first as before;
-- once the searches are used up, further unknown students are left (still oldest) for the
-- next batch while known students' events ride along: a known student's lesson is not
-- queued behind a whole webinar of first lessons, and the first lessons lose only the
-- extra PATCHes. Retries take at most half of a batch; one event per student.
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
drop function if exists public.amocrm_claim_due(text, integer, integer);

-- ---------------------------------------------------------------------------
-- Look-ahead jobs wake the drainer too
-- ---------------------------------------------------------------------------
-- Jobs the drainer would claim now (look-ahead on, student not already known or in a
-- lesson event).
create or replace function amocrm.due_lookahead_jobs() returns boolean
language sql stable set search_path = '' as $$
  select coalesce((select (s.value #>> '{}')::boolean from amocrm.system_settings s where s.key = 'lookahead_enabled'), true)
     and exists (select 1 from amocrm.lookahead_jobs j
                  where ((j.status = 'pending' and j.next_attempt_at <= now())
                         or (j.status = 'processing' and j.lease_until < now()))
                    and not exists (select 1 from amocrm.sync_events e where e.user_id = j.user_id)
                    and not exists (select 1 from amocrm.student_leads l where l.user_id = j.user_id))
$$;

-- The scheduled run's budget ends with work left: lesson events or look-ahead jobs due
-- both want the background drainer (it has 15 minutes; the scheduled run 30 s).
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

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
