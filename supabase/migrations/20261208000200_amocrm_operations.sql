-- amocrm-lesson-sync 1.0.0, operating the sync: the facts `npm run doctor` checks a
-- deployment against, the scheduled run's upkeep (resume parked events, reconcile missed
-- completions), replay selection and the status summary. Same rules as the sync's
-- migration (20261208000100): SECURITY DEFINER, empty search_path, executable by
-- service_role only (the lock-down call at the end).

-- ---------------------------------------------------------------------------
-- The doctor's facts
-- ---------------------------------------------------------------------------
-- public.amocrm_doctor_facts() reports what is installed and configured, and NEVER a
-- secret value: tokens only as present/kind/expiry, the webhook secret only as set/length
-- and its sha256 (the doctor hashes AMOCRM_WEBHOOK_SECRET locally and compares), the
-- webhook URL only as scheme/host/path (no user info, no query string).
--
-- It must work on any academy database: the learning tables (lessons, modules) are read
-- through dynamic SQL guarded by to_regclass, and their columns generically through
-- to_jsonb(row), because the academy's tables may have other columns than ours.
create or replace function public.amocrm_doctor_facts()
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_schema      boolean := exists (select 1 from pg_catalog.pg_namespace n where n.nspname = 'amocrm');
  v_settings    boolean := to_regclass('amocrm.system_settings') is not null;
  v_events_tbl  boolean := to_regclass('amocrm.sync_events') is not null;
  v_progress    regclass := to_regclass('public.lesson_progress');
  v_lessons_tbl regclass := to_regclass('public.lessons');
  v_modules_tbl regclass := to_regclass('public.modules');
  v_tables      jsonb;
  v_functions   jsonb;
  v_trigger     jsonb;
  v_url         text;
  v_secret      text;
  v_host        text;
  v_tokens      jsonb := jsonb_build_object('present', false);
  v_map         jsonb;
  v_lessons     jsonb := '[]'::jsonb;
  v_lesson_id   text;
  v_lesson      jsonb;
  v_module      jsonb;
  v_rls         jsonb;
  v_events      jsonb := '{}'::jsonb;
begin
  select coalesce(jsonb_agg(c.relname::text order by c.relname), '[]'::jsonb) into v_tables
    from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
   where n.nspname = 'amocrm' and c.relkind in ('r', 'p');

  select coalesce(jsonb_agg(distinct p.proname::text), '[]'::jsonb) into v_functions
    from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
   where n.nspname = 'public' and p.proname like 'amocrm\_%';

  -- tgenabled: O = origin (normal), A = always, R = replica only, D = disabled.
  select jsonb_build_object('present', count(*) > 0,
                            'enabled', coalesce(bool_or(t.tgenabled in ('O', 'A')), false))
    into v_trigger
    from pg_catalog.pg_trigger t
   where v_progress is not null and t.tgrelid = v_progress
     and t.tgname = 'amocrm_lesson_completed' and not t.tgisinternal;

  if v_settings then
    select nullif(btrim(s.value #>> '{}'), '') into v_url
      from amocrm.system_settings s where s.key = 'webhook_url';
    select nullif(s.value #>> '{}', '') into v_secret
      from amocrm.system_settings s where s.key = 'webhook_secret';
    select s.value into v_map from amocrm.system_settings s where s.key = 'tripwire_lessons';
    select jsonb_build_object(
             'present', true,
             'kind', s.value->>'kind',
             'expires_at', s.value->>'expires_at',
             'auth_state', coalesce(s.value->>'auth_state', 'ok'),
             'auth_problem', s.value->>'auth_problem',
             'has_access_token', coalesce(s.value->>'access_token', '') <> '',
             'has_refresh_token', coalesce(s.value->>'refresh_token', '') <> '',
             'updated_at', s.updated_at)
      into v_tokens
      from amocrm.system_settings s where s.key = 'amocrm_tokens';
    v_tokens := coalesce(v_tokens, jsonb_build_object('present', false));
  end if;

  -- Host only: drop the scheme, any user:password@ and everything from the path on.
  v_host := substring(v_url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]+)');

  -- Each lesson of the Tripwire map, as the academy's own tables describe it.
  for v_lesson_id in select k from jsonb_object_keys(coalesce(v_map, '{}'::jsonb)) as k order by k
  loop
    v_lesson := null;
    v_module := null;
    if v_lessons_tbl is not null and v_lesson_id ~ '^[0-9]{1,9}$' then
      execute format('select to_jsonb(l) from %s l where l.id = $1::integer', v_lessons_tbl)
        into v_lesson using v_lesson_id;
    end if;
    if v_lesson is not null and v_modules_tbl is not null and (v_lesson->>'module_id') ~ '^[0-9]{1,18}$' then
      execute format('select to_jsonb(m) from %s m where m.id = $1::bigint', v_modules_tbl)
        into v_module using v_lesson->>'module_id';
    end if;
    v_lessons := v_lessons || jsonb_build_array(jsonb_build_object(
      'id', v_lesson_id::integer,
      'stage_number', v_map->v_lesson_id,
      'table_present', v_lessons_tbl is not null,
      'exists', v_lesson is not null,
      'title', coalesce(v_lesson->>'title', v_lesson->>'name'),
      'module_id', v_lesson->'module_id',
      'module_title', coalesce(v_module->>'title', v_module->>'name'),
      'module_exists', v_module is not null,
      'archived', v_lesson is not null and (
                    coalesce(v_lesson->>'is_archived', 'false') = 'true'
                    or coalesce(v_lesson->>'archived', 'false') = 'true'
                    or (v_lesson ? 'archived_at' and v_lesson->>'archived_at' is not null)),
      'module_archived', v_module is not null and (
                    coalesce(v_module->>'is_archived', 'false') = 'true'
                    or coalesce(v_module->>'archived', 'false') = 'true'
                    or (v_module ? 'archived_at' and v_module->>'archived_at' is not null))));
  end loop;

  select coalesce(jsonb_agg(jsonb_build_object('table', r.name, 'exists', r.present, 'enabled', r.enabled)
                            order by r.name), '[]'::jsonb)
    into v_rls
    from (
      select format('%I.%I', n.nspname, c.relname) as name, true as present, c.relrowsecurity as enabled
        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
       where n.nspname = 'amocrm' and c.relkind in ('r', 'p')
      union all
      select 'public.lesson_progress', v_progress is not null,
             coalesce((select c.relrowsecurity from pg_catalog.pg_class c where c.oid = v_progress), false)
    ) r;

  if v_events_tbl then
    select coalesce(jsonb_object_agg(x.status, x.n), '{}'::jsonb) into v_events
      from (select e.status, count(*) as n from amocrm.sync_events e group by e.status) x;
  end if;

  return jsonb_build_object(
    'migrations', jsonb_build_object('schema_amocrm', v_schema, 'tables', v_tables, 'functions', v_functions),
    'trigger', v_trigger,
    'pg_net', jsonb_build_object(
      'installed', to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is not null),
    'webhook', jsonb_build_object(
      'url_set', v_url is not null,
      'url_scheme', lower(substring(v_url from '^([A-Za-z][A-Za-z0-9+.-]*)://')),
      'url_host', v_host,
      'url_path', substring(v_url from '^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*(/[^?#]*)'),
      'secret_set', v_secret is not null,
      'secret_length', length(v_secret),
      'secret_sha256', case when v_secret is null then null
                            else encode(extensions.digest(convert_to(v_secret, 'UTF8'), 'sha256'), 'hex') end),
    'tokens', v_tokens,
    'tripwire_lessons', v_map,
    'lessons', v_lessons,
    'lessons_table', v_lessons_tbl is not null,
    'modules_table', v_modules_tbl is not null,
    'rls', v_rls,
    'events', v_events,
    'checked_at', now());
end $$;

-- ---------------------------------------------------------------------------
-- The scheduled run's upkeep
-- ---------------------------------------------------------------------------
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

-- The scheduled run asks every two minutes whether events wait on the account; an index
-- lookup, not the status page's aggregate over the whole outbox.
create or replace function public.amocrm_count_parked(p_codes text[] default null)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object('parked', count(*))
    from amocrm.sync_events e
   where e.status = 'parked' and (p_codes is null or e.last_error_code = any(p_codes))
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

-- ---------------------------------------------------------------------------
-- Replay and status
-- ---------------------------------------------------------------------------
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

-- Replay by ids: ids that do not exist come back as such.
create or replace function public.amocrm_missing_event_ids(p_ids bigint[])
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(i order by i), '[]'::jsonb)
    from unnest(p_ids) as i
   where not exists (select 1 from amocrm.sync_events e where e.id = i)
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
