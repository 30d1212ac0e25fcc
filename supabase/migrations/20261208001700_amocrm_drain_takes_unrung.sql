-- amocrm-lesson-sync, after 1.0.0: a drainer takes the events whose webhook never came.
--
-- While nobody drains, the trigger records an event due only 60 s later (the column's
-- default) and rings its webhook through pg_net; the webhook moves the event or hands it to
-- a drainer (due at once). When the ring is lost (pg_net's request failed outright; pg_net
-- does not retry) the event stayed at its default: a drainer holding the queue lingered
-- idle for it, polling, until it fell due up to 60 s after it was recorded.
--
-- Now the drain's holder also claims a pending event still at the trigger's default (never
-- claimed: attempts 0; never routed, deferred or taken by the quiet trigger: each of those
-- sets next_attempt_at, so it is no longer created_at + 60 s) once it is older than the
-- webhook's timeout (webhook_timeout_ms, 10 s): by then its webhook has handed it over or
-- is not coming. A webhook still running after that finds it claimed (amocrm_claim_event
-- takes only a pending one), so nothing moves twice. Its drain does not end while such an
-- event is, or within the linger will be, claimable. Everything else is as before.

-- The column's default delay of next_attempt_at (amocrm.sync_events): an event that
-- still has exactly created_at + this was left, as recorded, to its webhook.
create or replace function amocrm.unrung_default() returns interval
language sql immutable set search_path = '' as $$
  select interval '60 seconds'
$$;

-- How long a recorded event is left to its webhook: the webhook's timeout, as the trigger
-- rings it (ring_webhook).
create or replace function amocrm.unrung_after() returns interval
language sql stable set search_path = '' as $$
  select make_interval(secs => greatest(coalesce(
    (select (s.value #>> '{}')::integer from amocrm.system_settings s where s.key = 'webhook_timeout_ms'), 10000), 0) / 1000.0)
$$;

-- Pending events still at the trigger's default that are past the webhook's timeout now, or
-- will be within p_within_ms: what the drain's holder would claim (or waits for).
create or replace function amocrm.unrung_lesson_events(p_within_ms integer default 0) returns boolean
language sql stable set search_path = '' as $$
  select exists (select 1 from amocrm.sync_events s
                  where s.status = 'pending' and s.attempts = 0
                    and s.next_attempt_at > now()
                    and s.next_attempt_at <= now() + (amocrm.unrung_default() - amocrm.unrung_after())
                                                   + make_interval(secs => greatest(p_within_ms, 0) / 1000.0)
                    and s.next_attempt_at = s.created_at + amocrm.unrung_default())
$$;

-- As in 20261208001300, and: the drain's holder also claims the events whose webhook never
-- came (unrung above), ordered by when they became claimable.
create or replace function public.amocrm_claim_due(
  p_holder text, p_limit integer default 20, p_lease_seconds integer default 60, p_max_unknown integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  e amocrm.sync_events;
  v_limit integer := greatest(p_limit, 1);
  v_users uuid[] := '{}'::uuid[];
  v_retries integer := 0;
  v_max_retries integer := greatest(1, ceil(greatest(p_limit, 1) / 2.0)::integer);
  v_unknown integer := 0;
  v_max_unknown integer := least(greatest(coalesce(p_max_unknown, p_limit), 1), greatest(p_limit, 1));
  v_known_first integer;
  v_first integer := 0;
  v_claimed amocrm.sync_events[] := array[]::amocrm.sync_events[];
  v_funnels jsonb := amocrm.current_funnels();
  -- Only the drain's holder takes events whose webhook has not come.
  v_drains boolean := exists (select 1 from amocrm.drainer d
                               where d.key = 'drain' and d.holder = p_holder and d.lease_until >= now());
  v_unrung interval := amocrm.unrung_after();
begin
  -- Places the cold events always keep in a batch: the searches allowed, at most half.
  v_known_first := v_limit - least(v_max_unknown, ceil(v_limit / 2.0)::integer);
  for r in
    with pipes as (
      -- Each funnel's pipeline; while no version is saved, one pipeline (0) for every event.
      select distinct on (f->>'key') f->>'key' as funnel_key, (f->>'pipelineId')::bigint as pipeline_id
        from jsonb_array_elements(coalesce(v_funnels, '[]'::jsonb)) with ordinality as x(f, n)
       order by f->>'key', n),
    known as (
      select s.id, s.user_id, s.status, s.next_attempt_at
        from amocrm.sync_events s
        left join pipes p on p.funnel_key = s.funnel_key
        join amocrm.student_leads l on l.user_id = s.user_id
         and l.pipeline_id = case when v_funnels is null then 0 else p.pipeline_id end
       where v_known_first > 0
         and ((s.status = 'pending' and s.next_attempt_at <= now())
           or (s.status = 'failed' and s.retryable and s.next_attempt_at <= now())
           or (s.status = 'processing' and s.lease_until < now()))
       order by s.next_attempt_at, s.id
       limit v_known_first * 4
       for update of s skip locked),
    oldest as (
      select s.id, s.user_id, s.status, s.next_attempt_at, s.funnel_key
        from amocrm.sync_events s
       where (s.status = 'pending' and s.next_attempt_at <= now())
          or (s.status = 'failed' and s.retryable and s.next_attempt_at <= now())
          or (s.status = 'processing' and s.lease_until < now())
       order by s.next_attempt_at, s.id
       limit v_limit * 4
       for update of s skip locked),
    unrung as (
      -- Still at the trigger's default and past the webhook's timeout: its ring is lost (or
      -- its webhook would have handed it over). Due, for the holder, from then on. The range
      -- on next_attempt_at lets the due index find them.
      select s.id, s.user_id, s.status, s.created_at + v_unrung as next_attempt_at, s.funnel_key
        from amocrm.sync_events s
       where v_drains and s.status = 'pending' and s.attempts = 0
         and s.next_attempt_at > now()
         and s.next_attempt_at <= now() + (amocrm.unrung_default() - v_unrung)
         and s.next_attempt_at = s.created_at + amocrm.unrung_default()
       order by s.next_attempt_at, s.id
       limit v_limit * 4
       for update of s skip locked),
    candidates as (
      select k.id, k.user_id, k.status, k.next_attempt_at, true as first, false as unknown from known k
      union all
      select o.id, o.user_id, o.status, o.next_attempt_at, false,
             not exists (select 1 from amocrm.student_leads l
                          where l.user_id = o.user_id
                            and l.pipeline_id = case when v_funnels is null then 0 else p.pipeline_id end)
        from (select * from oldest union all select * from unrung) o left join pipes p on p.funnel_key = o.funnel_key)
    select * from candidates c order by c.first desc, c.next_attempt_at, c.id
  loop
    exit when cardinality(v_claimed) >= p_limit;
    continue when r.first and v_first >= v_known_first;
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
    if r.first then v_first := v_first + 1; end if;
    v_users := v_users || r.user_id;
    v_claimed := v_claimed || e;
  end loop;
  -- The batch oldest first, whichever were claimed first.
  return coalesce((select jsonb_agg(amocrm.event_json(v_claimed[i]) order by (v_claimed[i]).next_attempt_at, (v_claimed[i]).id)
                     from generate_subscripts(v_claimed, 1) as i), '[]'::jsonb);
end $$;

-- As in 20261208000900, and: a drain does not end while an event whose webhook never came
-- is claimable, or will be within the linger.
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
  if amocrm.due_lesson_events(greatest(p_linger_ms, 0))
     or amocrm.unrung_lesson_events(greatest(p_linger_ms, 0))
     or not pg_try_advisory_xact_lock(amocrm.quiet_lock_key()) then
    return jsonb_build_object('ended', false, 'held', true);
  end if;
  update amocrm.drainer t set holder = null, lease_until = null where t.key = 'drain';
  return jsonb_build_object('ended', true, 'held', true);
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
