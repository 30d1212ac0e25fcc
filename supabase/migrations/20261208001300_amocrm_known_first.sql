-- amocrm-lesson-sync, after 1.0.0: a known student's lesson is not queued behind a cold
-- backlog.
--
-- The batch claim looked only at the oldest due rows (4 × the batch) and took from them at
-- most p_max_unknown students to search. A known student's event (a deal remembered in its
-- funnel's pipeline: a share of one read and one PATCH, no search) that arrived behind
-- thousands of cold events was outside that window until the searches ahead of it had
-- been made: at amoCRM's 6 requests/s a 10,000-event burst kept it waiting for minutes.
--
-- Now a claim first takes the oldest due events of known students, wherever they are in
-- the queue, and then fills the batch from the oldest due events as before. The known
-- events may take at most p_limit − min(p_max_unknown, ⌈p_limit/2⌉) places, so every
-- batch keeps room for the searches: however many known events keep arriving, the cold
-- events are still claimed, oldest first, at least that many per batch. Everything else is
-- as before: one event per student per batch, the advisory lock per student and
-- student_busy (one student's events one at a time), the cap on retried failures, claims
-- with a lease, rows another claimer holds skipped.

-- As in 20261208001100, with the known students' events claimed first (bounded).
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
    candidates as (
      select k.id, k.user_id, k.status, k.next_attempt_at, true as first, false as unknown from known k
      union all
      select o.id, o.user_id, o.status, o.next_attempt_at, false,
             not exists (select 1 from amocrm.student_leads l
                          where l.user_id = o.user_id
                            and l.pipeline_id = case when v_funnels is null then 0 else p.pipeline_id end)
        from oldest o left join pipes p on p.funnel_key = o.funnel_key)
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
