-- amocrm-lesson-sync, forward-only by construction: a move leaves only while its event's
-- claim is held for longer than the request can take, a holder whose claim expired
-- records nothing, and a move whose answer never came holds the student's other lessons
-- back until a late-applied move can no longer land after a newer one. Also: a ring
-- that did not reach the drainer is said so, and webhooks stop handing it events.
-- Same rules as the earlier migrations.

-- ---------------------------------------------------------------------------
-- The student hold
-- ---------------------------------------------------------------------------
-- hold_until: a move of this event was sent and its answer never came (timeout, reset,
-- 5xx): amoCRM may still apply it. Until then no other event of the student is claimed,
-- so no newer move can land before the late one. Never cleared: a retry that succeeds
-- does not stop the first request from landing late.
alter table amocrm.sync_events add column if not exists hold_until timestamptz;

create or replace function amocrm.student_busy(p_user_id uuid, p_except bigint) returns boolean
language sql stable set search_path = '' as $$
  select exists (select 1 from amocrm.sync_events o
                  where o.user_id = p_user_id and o.id <> p_except
                    and ((o.status = 'processing' and o.lease_until > now()) or o.hold_until > now()))
$$;

-- ---------------------------------------------------------------------------
-- Claims held while a batch works, and checked before every move
-- ---------------------------------------------------------------------------
-- Extends the caller's live claims on p_event_ids to now() + p_lease_seconds, and its
-- drain lease if it holds one. An expired claim is not revived: another invocation may
-- already have claimed a newer lesson of the student. Answers the ids still held; only
-- their moves may be sent.
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

-- ---------------------------------------------------------------------------
-- Outcomes: only a live claim records one
-- ---------------------------------------------------------------------------
-- As before, plus: a holder whose claim expired records nothing (recorded=false): the
-- event belongs to whoever claims it next, who reads the deal afresh.
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
  if not found or e.status <> 'processing' or e.lease_holder is distinct from p_holder
     or e.lease_until is null or e.lease_until <= now() then
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

-- As before, plus hold_ms: the item's move was sent and never answered. The hold is set
-- whether or not the outcome is recorded (the request is out either way), and only ever
-- lengthened.
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

-- ---------------------------------------------------------------------------
-- A ring that did not reach the drainer
-- ---------------------------------------------------------------------------
-- ring_failed_at: the last ring was refused or unanswered (function missing, wrong URL,
-- a plan without background functions). A rung drainer counts only if it was rung after
-- that: webhooks deliver their own events instead of handing them to nobody, and the ring
-- is tried again at most every 5 s as before.
alter table amocrm.drainer add column if not exists ring_failed_at timestamptz;

create or replace function amocrm.drainer_rung(d amocrm.drainer, p_woken_ms integer) returns boolean
language sql stable set search_path = '' as $$
  select coalesce(d.last_woken_at > now() - make_interval(secs => greatest(p_woken_ms, 0) / 1000.0)
                  and (d.started_at is null or d.last_woken_at > d.started_at)
                  and (d.ring_failed_at is null or d.last_woken_at > d.ring_failed_at), false)
$$;

create or replace function public.amocrm_ring_failed()
returns jsonb
language sql security definer set search_path = '' as $$
  with r as (update amocrm.drainer t set ring_failed_at = now() where t.key = 'drain' returning 1)
  select jsonb_build_object('recorded', exists (select 1 from r))
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
