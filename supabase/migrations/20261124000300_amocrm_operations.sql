-- Operating the sync: the scheduled run's upkeep (resume parked events, reconcile missed
-- completions), replay selection and the status summary. Same rules as the first
-- migration: SECURITY DEFINER, empty search_path, executable by service_role only.

-- Events parked because of the account (402 unpaid, 403 blocked) resume once amoCRM
-- answers again; events parked on the token chain resume in amocrm_store_tokens.
create or replace function public.amocrm_resume_parked(p_codes text[] default null)
returns jsonb
language sql security definer set search_path = '' as $$
  with resumed as (
    update amocrm.sync_events s
       set status = 'pending', next_attempt_at = now(), updated_at = now()
     where s.status = 'parked' and (p_codes is null or s.last_error_code = any(p_codes))
    returning 1)
  select jsonb_build_object('resumed', (select count(*) from resumed))
$$;

-- Belt and braces for "no event is ever lost": the trigger never fails the student's
-- write, so if recording the event ever failed (it logs a WARNING), the completion is
-- still in lesson_progress. This records what is missing; the unique key makes it a no-op
-- otherwise.
create or replace function public.amocrm_reconcile(p_limit integer default 500)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_lessons integer[];
  v_created integer := 0;
  r record;
  v record;
begin
  select array_agg(k::integer) into v_lessons
    from amocrm.system_settings s, jsonb_object_keys(s.value) k where s.key = 'tripwire_lessons';
  if v_lessons is null or to_regclass('public.lesson_progress') is null then
    return jsonb_build_object('created', 0);
  end if;
  for r in execute
    'select lp.user_id, lp.lesson_id, to_jsonb(lp) as j from public.lesson_progress lp
      where lp.lesson_id = any($1)
        and not exists (select 1 from amocrm.sync_events e where e.user_id = lp.user_id and e.lesson_id = lp.lesson_id)
      limit $2' using v_lessons, p_limit
  loop
    if amocrm.row_is_completed(r.j) then
      select * into v from amocrm.record_event(r.user_id, r.lesson_id, 'reconcile', r.j->>'id');
      if v.created then v_created := v_created + 1; end if;
    end if;
  end loop;
  return jsonb_build_object('created', v_created);
end $$;

-- Events a replay would take: by ids, or by status and time range; ordered by id with a
-- cursor (p_after_id) so a large replay continues where the last call stopped.
create or replace function public.amocrm_select_events(
  p_ids bigint[] default null, p_statuses text[] default null,
  p_from timestamptz default null, p_to timestamptz default null,
  p_after_id bigint default 0, p_limit integer default 50)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', e.id, 'status', e.status, 'email', e.email, 'lesson_id', e.lesson_id,
           'attempts', e.attempts, 'lead_id', e.lead_id, 'last_error_code', e.last_error_code,
           'last_error', e.last_error, 'created_at', e.created_at, 'updated_at', e.updated_at)
         order by e.id), '[]'::jsonb)
    from (select * from amocrm.sync_events e
           where (p_ids is null or e.id = any(p_ids))
             and (p_statuses is null or e.status = any(p_statuses))
             and (p_from is null or e.created_at >= p_from)
             and (p_to is null or e.created_at < p_to)
             and e.id > coalesce(p_after_id, 0)
           order by e.id
           limit greatest(1, least(p_limit, 1000))) e
$$;

-- Everything GET /api/amocrm/status shows, in one round trip.
create or replace function public.amocrm_status(p_failures integer default 20)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'counts', coalesce((select jsonb_object_agg(status, n) from
                (select e.status, count(*) as n from amocrm.sync_events e group by e.status) c), '{}'::jsonb),
    'oldest_pending_age_seconds', (select floor(extract(epoch from now() - min(e.created_at)))
                                     from amocrm.sync_events e where e.status in ('pending', 'processing')),
    'last_success_at', (select max(e.finished_at) from amocrm.sync_events e where e.status = 'done'),
    'last_failure_at', (select max(e.updated_at) from amocrm.sync_events e
                         where e.status in ('failed', 'dead', 'parked') or (e.status = 'pending' and e.last_error_code is not null)),
    'token', (select jsonb_build_object('kind', s.value->>'kind', 'expires_at', s.value->>'expires_at',
                       'auth_state', coalesce(s.value->>'auth_state', 'ok'), 'auth_problem', s.value->>'auth_problem',
                       'updated_at', s.updated_at)
                from amocrm.system_settings s where s.key = 'amocrm_tokens'),
    'recent_failures', coalesce((select jsonb_agg(f order by f.updated_at desc) from (
        select e.id, e.status, e.email, e.lesson_id, e.attempts, e.last_error_code as code,
               e.last_error as reason, e.updated_at
          from amocrm.sync_events e
         where e.status in ('failed', 'dead', 'parked') or (e.status = 'pending' and e.last_error_code is not null)
         order by e.updated_at desc limit greatest(0, least(p_failures, 100))) f), '[]'::jsonb))
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
