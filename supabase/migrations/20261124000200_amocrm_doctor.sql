-- amocrm-lesson-sync: the facts `npm run doctor` checks a deployment against.
--
-- public.amocrm_doctor_facts() reports what is installed and configured, and NEVER a
-- secret value: tokens only as present/kind/expiry, the webhook secret only as set/length
-- and its sha256 (the doctor hashes AMOCRM_WEBHOOK_SECRET locally and compares), the
-- webhook URL only as scheme/host/path (no user info, no query string).
--
-- It must work on any academy database: the learning tables (lessons, modules) are read
-- through dynamic SQL guarded by to_regclass, and their columns generically through
-- to_jsonb(row), because the academy's tables may have other columns than ours.
-- SECURITY DEFINER with an empty search_path, executable by service_role only, like
-- every other public.amocrm_* door.

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

select amocrm.lock_down_functions();

-- PostgREST learns about the new function (ignored where nobody listens).
notify pgrst, 'reload schema';
