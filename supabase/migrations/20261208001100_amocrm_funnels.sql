-- amocrm-lesson-sync, after 1.0.0: funnels as data. A funnel is an amoCRM pipeline and an
-- ordered list of steps, each step the platform lessons that move a student's deal to one
-- stage of that pipeline (lib/funnels/model.ts describes the JSON). Several funnels at
-- once, each forward only within its own order, each finding the student's deal in its
-- own pipeline.
--
-- The configuration is kept in versions (amocrm.funnel_versions): who changed it, when,
-- and why; the newest version is the one in force, and a rollback is an older version's
-- funnels saved as a new version. Until a version is saved, the configuration is today's:
-- the `tripwire_lessons` setting with the stages of AMOCRM_STAGE_LESSON_1..3 in
-- AMOCRM_PIPELINE_ID, which the functions save as version 1 on first use
-- (amocrm_ensure_funnels, changed_by 'env').
--
-- Events are per funnel: a lesson in two funnels records two events, one per funnel
-- (unique per student, lesson and funnel), each claimed, moved, retried and replayed on
-- its own. Remembered deals are per pipeline (amocrm.student_leads keyed by student and
-- pipeline): each funnel finds the student's deal in its own pipeline.

-- ---------------------------------------------------------------------------
-- The configuration, in versions
-- ---------------------------------------------------------------------------
create table if not exists amocrm.funnel_versions (
  version    integer primary key check (version > 0),
  funnels    jsonb not null check (jsonb_typeof(funnels) = 'array'),
  changed_by text not null,
  changed_at timestamptz not null default now(),
  note       text
);
alter table amocrm.funnel_versions enable row level security;
revoke all on amocrm.funnel_versions from public, anon, authenticated;
grant select, insert, update, delete on amocrm.funnel_versions to service_role;

-- The funnels in force (a JSON array), or null while no version is saved.
create or replace function amocrm.current_funnels() returns jsonb
language sql stable set search_path = '' as $$
  select v.funnels from amocrm.funnel_versions v order by v.version desc limit 1
$$;

-- The pipeline of the first funnel in force: deals remembered without a pipeline belong to
-- it. 0 while no version is saved (one pipeline then, today's).
create or replace function amocrm.default_pipeline() returns bigint
language sql stable security definer set search_path = '' as $$
  select coalesce((amocrm.current_funnels()->0->>'pipelineId')::bigint, 0)
$$;

-- The pipeline of funnel p_key in force (0 while no version is saved; null for a funnel
-- no longer configured: its events find no remembered deal).
create or replace function amocrm.funnel_pipeline(p_key text) returns bigint
language sql stable set search_path = '' as $$
  select case when c.funnels is null then 0
              else (select (f->>'pipelineId')::bigint from jsonb_array_elements(c.funnels) f where f->>'key' = p_key limit 1) end
    from (select amocrm.current_funnels() as funnels) c
$$;

-- ---------------------------------------------------------------------------
-- Events per funnel, deals per pipeline
-- ---------------------------------------------------------------------------
-- funnel_key: the funnel whose step the lesson is (today's single funnel is 'tripwire').
-- stage_number: the step's position in that funnel when the event was recorded (1..9, as
-- before: a funnel has at most 9 steps).
alter table amocrm.sync_events add column if not exists funnel_key text not null default 'tripwire';
alter table amocrm.sync_events drop constraint if exists sync_events_user_id_lesson_id_key;
create unique index if not exists sync_events_user_lesson_funnel_key on amocrm.sync_events (user_id, lesson_id, funnel_key);

-- pipeline_id: the pipeline the deal was found in. A row written without one (an operator's
-- insert) belongs to the first funnel's pipeline; 0 while no version is saved, and the
-- first saved version takes those over (amocrm.save_funnels).
alter table amocrm.student_leads add column if not exists pipeline_id bigint not null default 0;
alter table amocrm.student_leads drop constraint if exists student_leads_pkey;
alter table amocrm.student_leads add constraint student_leads_pkey primary key (user_id, pipeline_id);
alter table amocrm.student_leads alter column pipeline_id set default amocrm.default_pipeline();

-- Whether the lessons come from the `tripwire_lessons` setting: no version is saved, or the
-- one in force was taken from the environment (changed_by 'env') and nobody has edited
-- the funnels since. Until then the setting works as it always has: editing it changes
-- which lessons are recorded, and at which step, at once.
create or replace function amocrm.lessons_from_setting() returns boolean
language sql stable set search_path = '' as $$
  select coalesce((select v.changed_by = 'env' from amocrm.funnel_versions v order by v.version desc limit 1), true)
$$;

-- Saving a version and taking the first one from the environment are serialized by this
-- lock: two editors who read the same version cannot both save on top of it.
create or replace function amocrm.funnels_lock_key() returns bigint
language sql immutable set search_path = '' as $$
  select 7020389867052674674::bigint -- 'amocrm.r' as eight bytes: a key of its own
$$;

-- The first problem of a configuration's shape, or null. The full checks (the pipelines
-- and stages in amoCRM, the lessons in public.lessons) are made before saving by the
-- callers (lib/funnels/check.ts); this keeps a broken shape out of the table whoever calls.
create or replace function amocrm.funnels_shape_problem(p_funnels jsonb) returns text
language plpgsql immutable set search_path = '' as $$
declare
  f jsonb;
  s jsonb;
  v_keys text[] := '{}'::text[];
  v_lessons bigint[];
  v_lesson jsonb;
begin
  if p_funnels is null or jsonb_typeof(p_funnels) <> 'array' then
    return 'funnels must be a JSON array';
  end if;
  for f in select x from jsonb_array_elements(p_funnels) x loop
    if jsonb_typeof(f) <> 'object' or coalesce(f->>'key', '') !~ '^[a-z0-9][a-z0-9_-]{0,62}$' then
      return format('a funnel needs a key (a slug): %s', left(f::text, 80));
    end if;
    if f->>'key' = any(v_keys) then
      return format('funnel key %s is used twice', f->>'key');
    end if;
    v_keys := v_keys || (f->>'key');
    if coalesce(btrim(f->>'name'), '') = '' then
      return format('funnel %s needs a name', f->>'key');
    end if;
    if jsonb_typeof(f->'pipelineId') <> 'number' or (f->>'pipelineId') !~ '^[1-9][0-9]{0,15}$' then
      return format('funnel %s needs a pipelineId (a positive integer)', f->>'key');
    end if;
    if jsonb_typeof(f->'steps') is distinct from 'array' or jsonb_array_length(f->'steps') = 0
       or jsonb_array_length(f->'steps') > 9 then
      return format('funnel %s needs 1 to 9 steps', f->>'key');
    end if;
    v_lessons := '{}'::bigint[];
    for s in select x from jsonb_array_elements(f->'steps') x loop
      if jsonb_typeof(s->'stageId') is distinct from 'number' or (s->>'stageId') !~ '^[1-9][0-9]{0,15}$' then
        return format('funnel %s: every step needs a stageId (a positive integer)', f->>'key');
      end if;
      if jsonb_typeof(s->'lessons') is distinct from 'array' or jsonb_array_length(s->'lessons') = 0 then
        return format('funnel %s: every step needs at least one lesson', f->>'key');
      end if;
      for v_lesson in select x from jsonb_array_elements(s->'lessons') x loop
        if jsonb_typeof(v_lesson) <> 'number' or v_lesson::text !~ '^[1-9][0-9]{0,8}$' then
          return format('funnel %s: lesson %s is not a positive integer', f->>'key', v_lesson::text);
        end if;
        if (v_lesson::text)::bigint = any(v_lessons) then
          return format('funnel %s: lesson %s is in more than one step', f->>'key', v_lesson::text);
        end if;
        v_lessons := v_lessons || (v_lesson::text)::bigint;
      end loop;
    end loop;
  end loop;
  return null;
end $$;

-- One version row as the functions answer it.
create or replace function amocrm.funnel_version_json(v amocrm.funnel_versions) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object('version', v.version, 'funnels', v.funnels, 'changed_by', v.changed_by,
                            'changed_at', v.changed_at, 'note', v.note)
$$;

-- Saves p_funnels as the next version, under the lock; the caller has checked the version.
-- The first version also takes over the deals remembered before funnels existed (one per
-- student, in the first funnel's pipeline), and every version re-creates the lesson
-- trigger with its lessons.
create or replace function amocrm.save_funnels(p_funnels jsonb, p_changed_by text, p_note text)
returns integer
language plpgsql security definer set search_path = '' as $$
declare
  v_version integer;
  v_first bigint;
begin
  select coalesce(max(v.version), 0) + 1 into v_version from amocrm.funnel_versions v;
  insert into amocrm.funnel_versions (version, funnels, changed_by, note)
  values (v_version, p_funnels, coalesce(nullif(btrim(p_changed_by), ''), 'unknown'), p_note);
  if v_version = 1 then
    v_first := (p_funnels->0->>'pipelineId')::bigint;
    if v_first is not null then
      delete from amocrm.student_leads l
       where l.pipeline_id = 0
         and exists (select 1 from amocrm.student_leads o where o.user_id = l.user_id and o.pipeline_id = v_first);
      update amocrm.student_leads l set pipeline_id = v_first where l.pipeline_id = 0;
    end if;
  end if;
  perform amocrm.install_lesson_trigger();
  return v_version;
end $$;

-- ---------------------------------------------------------------------------
-- RPC: the configuration
-- ---------------------------------------------------------------------------

-- The configuration in force: {version, funnels, changed_by, changed_at, note}, or null
-- while none is saved.
create or replace function public.amocrm_funnels()
returns jsonb
language sql stable security definer set search_path = '' as $$
  select amocrm.funnel_version_json(v) from amocrm.funnel_versions v order by v.version desc limit 1
$$;

-- The configuration in force; while none is saved, today's is saved as version 1 first
-- (changed_by 'env'): the lessons of `tripwire_lessons` (lesson id -> step number) with
-- the stages p_stage_ids (AMOCRM_STAGE_LESSON_1..3) of p_pipeline_id
-- (AMOCRM_PIPELINE_ID). Whoever comes first (the scheduled run, the first event) saves it;
-- the others find it saved.
create or replace function public.amocrm_ensure_funnels(p_pipeline_id bigint, p_stage_ids bigint[])
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_map jsonb;
  v_funnels jsonb;
begin
  if exists (select 1 from amocrm.funnel_versions) then
    return public.amocrm_funnels();
  end if;
  perform pg_advisory_xact_lock(amocrm.funnels_lock_key());
  if exists (select 1 from amocrm.funnel_versions) then
    return public.amocrm_funnels();
  end if;
  if p_pipeline_id is null or coalesce(cardinality(p_stage_ids), 0) = 0 then
    raise exception 'amocrm_ensure_funnels: no funnel is saved and no pipeline and stages were given'
      using errcode = '22023';
  end if;
  select coalesce(s.value, '{}'::jsonb) into v_map from amocrm.system_settings s where s.key = 'tripwire_lessons';
  select jsonb_build_array(jsonb_build_object(
           'key', 'tripwire', 'name', 'Tripwire', 'pipelineId', p_pipeline_id,
           'steps', jsonb_agg(jsonb_build_object(
              'stageId', st.stage_id,
              'lessons', coalesce((select jsonb_agg(k::integer order by k::integer)
                                     from jsonb_each_text(coalesce(v_map, '{}'::jsonb)) as m(k, n)
                                    where m.n ~ '^[0-9]{1,4}$' and m.n::integer = st.n and k ~ '^[0-9]{1,9}$'), '[]'::jsonb))
              order by st.n)))
    into v_funnels
    from unnest(p_stage_ids) with ordinality as st(stage_id, n);
  perform amocrm.save_funnels(v_funnels, 'env', 'из переменных окружения AMOCRM_PIPELINE_ID и AMOCRM_STAGE_LESSON_*');
  return public.amocrm_funnels();
end $$;

-- Saves a new version when p_expected_version is the one in force (0 or null: none saved
-- yet). Answers {saved: true, version} or {saved: false, reason, current_version}: a
-- stale version (someone saved since the editor read it) or a broken shape changes
-- nothing.
create or replace function public.amocrm_set_funnels(
  p_funnels jsonb, p_changed_by text, p_expected_version integer, p_note text default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_current integer;
  v_problem text;
begin
  v_problem := amocrm.funnels_shape_problem(p_funnels);
  if v_problem is not null then
    return jsonb_build_object('saved', false, 'reason', 'invalid', 'problem', v_problem);
  end if;
  perform pg_advisory_xact_lock(amocrm.funnels_lock_key());
  select coalesce(max(v.version), 0) into v_current from amocrm.funnel_versions v;
  if v_current <> coalesce(p_expected_version, 0) then
    return jsonb_build_object('saved', false, 'reason', 'version_conflict', 'current_version', v_current,
      'problem', format('конфигурация уже изменена: сейчас версия %s, правка сделана к версии %s', v_current, coalesce(p_expected_version, 0)));
  end if;
  return jsonb_build_object('saved', true, 'version', amocrm.save_funnels(p_funnels, p_changed_by, p_note));
end $$;

-- The versions, newest first.
create or replace function public.amocrm_funnel_history(p_limit integer default 20)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce(jsonb_agg(amocrm.funnel_version_json(v) order by v.version desc), '[]'::jsonb)
    from (select * from amocrm.funnel_versions v order by v.version desc
           limit greatest(1, least(coalesce(p_limit, 20), 1000))) v
$$;

-- A rollback: the funnels of version p_version saved as a new version. Answers as
-- amocrm_set_funnels; an unknown version is {saved: false, reason: 'unknown_version'}.
create or replace function public.amocrm_rollback_funnels(p_version integer, p_changed_by text)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_funnels jsonb;
begin
  perform pg_advisory_xact_lock(amocrm.funnels_lock_key());
  select v.funnels into v_funnels from amocrm.funnel_versions v where v.version = p_version;
  if v_funnels is null then
    return jsonb_build_object('saved', false, 'reason', 'unknown_version',
                              'problem', format('нет версии %s', p_version));
  end if;
  return jsonb_build_object('saved', true, 'version',
    amocrm.save_funnels(v_funnels, p_changed_by, format('откат к версии %s', p_version)));
end $$;

-- What the academy's lessons table says of each lesson: [{id, exists, title,
-- is_archived}], in p_lessons' order. Read through to_jsonb(row) like amocrm_doctor_facts,
-- because the academy's table may have other columns than ours; without the table every
-- lesson is exists=false.
create or replace function public.amocrm_lesson_facts(p_lessons integer[])
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_table regclass := to_regclass('public.lessons');
  v_id integer;
  v_row jsonb;
  v_out jsonb := '[]'::jsonb;
begin
  foreach v_id in array coalesce(p_lessons, '{}'::integer[]) loop
    v_row := null;
    if v_table is not null then
      execute format('select to_jsonb(l) from %s l where l.id = $1 limit 1', v_table) into v_row using v_id;
    end if;
    v_out := v_out || jsonb_build_array(jsonb_build_object(
      'id', v_id,
      'exists', v_row is not null,
      'title', coalesce(v_row->>'title', v_row->>'name'),
      'is_archived', case when v_row is null then null else
                       coalesce(v_row->>'is_archived', 'false') = 'true'
                       or coalesce(v_row->>'archived', 'false') = 'true'
                       or (v_row ? 'archived_at' and v_row->>'archived_at' is not null) end));
  end loop;
  return v_out;
end $$;

-- ---------------------------------------------------------------------------
-- The lesson trigger follows the funnels
-- ---------------------------------------------------------------------------
-- As in 20261208000100, but the WHEN list is every lesson of the funnels in force (the
-- `tripwire_lessons` setting's while amocrm.lessons_from_setting()). Saving a version
-- re-creates it, so a new funnel's lessons are recorded from the next completion on.
create or replace function amocrm.install_lesson_trigger() returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_funnels jsonb := amocrm.current_funnels();
  v_lessons integer[];
begin
  if not amocrm.lessons_from_setting() then
    select coalesce(array_agg(distinct l::text::integer order by l::text::integer), '{}') into v_lessons
      from jsonb_array_elements(v_funnels) f, jsonb_array_elements(f->'steps') s, jsonb_array_elements(s->'lessons') l;
  else
    select coalesce(array_agg(k::integer order by k::integer), '{}') into v_lessons
      from amocrm.system_settings s, jsonb_object_keys(s.value) k where s.key = 'tripwire_lessons';
  end if;
  drop trigger if exists amocrm_lesson_completed on public.lesson_progress;
  execute format('create trigger amocrm_lesson_completed after insert or update on public.lesson_progress '
                 'for each row when (new.lesson_id = any (%L::integer[])) '
                 'execute function amocrm.on_lesson_progress()', v_lessons);
end $$;

-- ---------------------------------------------------------------------------
-- Recording: one event per funnel the lesson is in
-- ---------------------------------------------------------------------------
-- The funnels' steps lesson p_lesson_id is in: (funnel_key, stage_number = the step's
-- position), in the funnels' order. While amocrm.lessons_from_setting(), the
-- `tripwire_lessons` setting's (lesson id -> step number of funnel 'tripwire').
create or replace function amocrm.lesson_steps(p_lesson_id integer)
returns table (funnel_key text, stage_number smallint)
language plpgsql stable set search_path = '' as $$
declare
  v_funnels jsonb := amocrm.current_funnels();
begin
  if amocrm.lessons_from_setting() then
    return query select 'tripwire'::text, (s.value ->> p_lesson_id::text)::smallint
                   from amocrm.system_settings s
                  where s.key = 'tripwire_lessons' and s.value ? p_lesson_id::text;
    return;
  end if;
  return query
    select f.funnel->>'key', st.n::smallint
      from jsonb_array_elements(v_funnels) with ordinality as f(funnel, fo),
           jsonb_array_elements(f.funnel->'steps') with ordinality as st(step, n)
     where st.step->'lessons' @> to_jsonb(p_lesson_id)
     order by f.fo, st.n;
end $$;

-- As in 20261208000100, for every funnel the lesson is in: one event per funnel, idempotent
-- on (user_id, lesson_id, funnel_key). Answers the first funnel's event (no row for a
-- lesson in no funnel); the trigger finds the others its transaction created.
create or replace function amocrm.record_event(
  p_user_id uuid, p_lesson_id integer, p_source text, p_progress_id text,
  out event_id bigint, out created boolean, out stage_number smallint)
returns record
language plpgsql security definer set search_path = '' as $$
declare
  v_email text;
  v_step record;
  v_id bigint;
begin
  for v_step in select * from amocrm.lesson_steps(p_lesson_id) loop
    if v_email is null then
      select lower(btrim(u.email)) into v_email from auth.users u where u.id = p_user_id;
    end if;
    v_id := null;
    insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, progress_id, source, funnel_key)
    values (p_user_id, v_email, p_lesson_id, v_step.stage_number, p_progress_id, p_source, v_step.funnel_key)
    on conflict (user_id, lesson_id, funnel_key) do nothing
    returning id into v_id;
    if event_id is null then
      created := v_id is not null;
      stage_number := v_step.stage_number;
      event_id := coalesce(v_id, (select e.id from amocrm.sync_events e
                                   where e.user_id = p_user_id and e.lesson_id = p_lesson_id and e.funnel_key = v_step.funnel_key));
    end if;
  end loop;
end $$;

-- As in 20261208000900, and: a lesson in several funnels rings (or leaves to the drainer)
-- each funnel's event this transaction created.
create or replace function amocrm.on_lesson_progress() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_new jsonb := to_jsonb(new);
  v_old jsonb := case when tg_op = 'UPDATE' then to_jsonb(old) end;
  v_event record;
  v_ids bigint[];
  v_id bigint;
  v_quiet boolean := false;
begin
  if not amocrm.row_is_completed(v_new) or amocrm.row_is_completed(v_old) then
    return null;
  end if;
  begin
    select * into v_event
      from amocrm.record_event((v_new->>'user_id')::uuid, (v_new->>'lesson_id')::integer,
                               'trigger', v_new->>'id');
    -- Events this transaction created for this completion: created_at is the transaction's
    -- start, and (user, lesson, funnel) is unique.
    select array_agg(e.id order by e.id) into v_ids from amocrm.sync_events e
     where e.user_id = (v_new->>'user_id')::uuid and e.lesson_id = (v_new->>'lesson_id')::integer
       and e.created_at = now() and e.status = 'pending';
  exception when others then
    raise warning '[AmoCRM] event not recorded for lesson_progress %: % (the scheduled reconcile picks it up)',
      v_new->>'id', sqlerrm;
    return null;
  end;
  if not coalesce(v_event.created, false) and v_ids is null then
    return null;
  end if;
  v_ids := coalesce(v_ids, array[v_event.event_id]);
  begin
    v_quiet := amocrm.drain_takes_completions();
    if v_quiet then
      update amocrm.sync_events s set next_attempt_at = least(s.next_attempt_at, now())
       where s.id = any(v_ids) and s.status = 'pending';
    end if;
  exception when others then
    v_quiet := false; -- in doubt, ring
  end;
  if v_quiet then
    return null;
  end if;
  foreach v_id in array v_ids loop
    begin
      perform amocrm.ring_webhook(v_id, jsonb_build_object(
        'type', tg_op, 'table', tg_table_name, 'schema', tg_table_schema,
        'record', v_new, 'old_record', v_old, 'event_id', v_id));
    exception when others then
      raise warning '[AmoCRM] webhook not queued for event %: % (the scheduled run delivers it)',
        v_id, sqlerrm;
    end;
  end loop;
  return null;
end $$;

-- As in 20261208000100; 'tripwire' now says the lesson is in some funnel, and, for a lesson
-- in several funnels, event_ids lists every funnel's event (event_id is the first's).
create or replace function public.amocrm_record_event(
  p_user_id uuid, p_lesson_id integer, p_progress_id text default null, p_source text default 'webhook')
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v record;
  v_ids jsonb;
begin
  if not exists (select 1 from auth.users u where u.id = p_user_id) then
    return jsonb_build_object('tripwire', exists (select 1 from amocrm.lesson_steps(p_lesson_id)), 'unknown_user', true);
  end if;
  select * into v from amocrm.record_event(p_user_id, p_lesson_id, p_source, p_progress_id);
  if v.event_id is null then
    return jsonb_build_object('tripwire', false);
  end if;
  select jsonb_agg(e.id order by e.id) into v_ids from amocrm.sync_events e
   where e.user_id = p_user_id and e.lesson_id = p_lesson_id;
  return jsonb_build_object('tripwire', true, 'event_id', v.event_id, 'created', v.created,
                            'stage_number', v.stage_number)
         || case when jsonb_array_length(v_ids) > 1 then jsonb_build_object('event_ids', v_ids) else '{}'::jsonb end;
end $$;

-- As in 20261208000200, per funnel: a completion missing the event of any funnel its
-- lesson is in gets it.
create or replace function public.amocrm_reconcile(p_limit integer default 500)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_lessons integer[];
  v_created integer := 0;
  v_before bigint;
  r record;
begin
  select array_agg(distinct x.lesson) into v_lessons
    from (select l::text::integer as lesson
            from jsonb_array_elements(amocrm.current_funnels()) f, jsonb_array_elements(f->'steps') s,
                 jsonb_array_elements(s->'lessons') l
           where not amocrm.lessons_from_setting()
          union all
          select k::integer from amocrm.system_settings s, jsonb_object_keys(s.value) k
           where s.key = 'tripwire_lessons' and amocrm.lessons_from_setting()) x;
  if v_lessons is null or to_regclass('public.lesson_progress') is null then
    return jsonb_build_object('created', 0);
  end if;
  for r in execute
    'select lp.user_id, lp.lesson_id, to_jsonb(lp) as j from public.lesson_progress lp
      where lp.lesson_id = any($1)
        and exists (select 1 from amocrm.lesson_steps(lp.lesson_id) st
                     where not exists (select 1 from amocrm.sync_events e where e.user_id = lp.user_id
                                          and e.lesson_id = lp.lesson_id and e.funnel_key = st.funnel_key))
      limit $2' using v_lessons, p_limit
  loop
    if amocrm.row_is_completed(r.j) then
      select count(*) into v_before from amocrm.sync_events e where e.user_id = r.user_id and e.lesson_id = r.lesson_id;
      perform amocrm.record_event(r.user_id, r.lesson_id, 'reconcile', r.j->>'id');
      select (v_created + count(*) - v_before)::integer into v_created from amocrm.sync_events e
       where e.user_id = r.user_id and e.lesson_id = r.lesson_id;
    end if;
  end loop;
  return jsonb_build_object('created', v_created);
end $$;

-- ---------------------------------------------------------------------------
-- Claims and outcomes: each event finds the deal remembered in its funnel's pipeline
-- ---------------------------------------------------------------------------
-- The version in force (null: none saved): a claimed event carries it, so an invocation
-- that cached the funnels knows when to read them again.
create or replace function amocrm.funnels_version() returns integer
language sql stable set search_path = '' as $$
  select max(v.version) from amocrm.funnel_versions v
$$;

-- As in 20261208000400, and: the event's funnel, the funnels' version, and the deal
-- remembered in the funnel's pipeline.
create or replace function amocrm.event_json(e amocrm.sync_events) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object(
    'id', e.id, 'user_id', e.user_id, 'email', e.email, 'lesson_id', e.lesson_id,
    'stage_number', e.stage_number, 'status', e.status, 'attempts', e.attempts,
    'lead_id', e.lead_id, 'created_at', e.created_at,
    'funnel_key', e.funnel_key, 'funnels_version', amocrm.funnels_version(),
    'cached_lead_id', l.lead_id,
    'cached_lead_closed', (select d.closed from amocrm.deals d where d.lead_id = l.lead_id and not d.deleted))
  from (select amocrm.funnel_pipeline(e.funnel_key) as pipeline_id) p
  left join amocrm.student_leads l on l.user_id = e.user_id and l.pipeline_id = p.pipeline_id
$$;

-- As in 20261208000300; a student is unknown to an event's funnel without a deal
-- remembered in its pipeline.
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
  v_funnels jsonb := amocrm.current_funnels();
begin
  for r in
    select s.id, s.user_id, s.status,
           not exists (select 1 from amocrm.student_leads l
                        where l.user_id = s.user_id
                          and l.pipeline_id = case when v_funnels is null then 0 else
                                (select (f->>'pipelineId')::bigint from jsonb_array_elements(v_funnels) f
                                  where f->>'key' = s.funnel_key limit 1) end) as unknown
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

-- As in 20261208000100; the deal found is remembered in the event's funnel's pipeline.
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
  v_pipeline bigint;
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

  v_pipeline := amocrm.funnel_pipeline(e.funnel_key);
  if p_lead_id is not null and v_status in ('done','skipped') and v_pipeline is not null then
    insert into amocrm.student_leads as l (user_id, pipeline_id, email, lead_id, contact_id)
    values (e.user_id, v_pipeline, e.email, p_lead_id, p_contact_id)
    on conflict (user_id, pipeline_id) do update
      set lead_id = excluded.lead_id, contact_id = coalesce(excluded.contact_id, l.contact_id),
          email = excluded.email, updated_at = now();
  end if;

  return jsonb_build_object('recorded', true, 'status', v_status,
                            'became_dead', v_status = 'dead', 'attempts', e.attempts);
end $$;

-- As in 20261208000100, in the first funnel's pipeline.
create or replace function public.amocrm_remember_lead(
  p_user_id uuid, p_lead_id bigint, p_contact_id bigint default null, p_email text default null)
returns jsonb
language sql security definer set search_path = '' as $$
  insert into amocrm.student_leads as l (user_id, pipeline_id, email, lead_id, contact_id)
  values (p_user_id, amocrm.default_pipeline(), p_email, p_lead_id, p_contact_id)
  on conflict (user_id, pipeline_id) do update
     set lead_id = excluded.lead_id,
         contact_id = coalesce(excluded.contact_id, l.contact_id),
         email = coalesce(excluded.email, l.email),
         updated_at = now()
  returning jsonb_build_object('remembered', true)
$$;

-- As in 20261208000300, per pipeline: [{user_id, lead_id, pipeline_id?, contact_id?,
-- email?, keep_existing?}], one row per student and pipeline (no pipeline_id: the first
-- funnel's). keep_existing: a deal already remembered there is kept (the look-ahead's
-- finds give way to a lesson's).
create or replace function public.amocrm_remember_leads(p_leads jsonb)
returns jsonb
language sql security definer set search_path = '' as $$
  with found as (
    select distinct on (x.user_id, coalesce(x.pipeline_id, amocrm.default_pipeline()))
           x.user_id, coalesce(x.pipeline_id, amocrm.default_pipeline()) as pipeline_id,
           x.lead_id, x.contact_id, x.email, coalesce(x.keep_existing, false) as keep_existing
      from jsonb_to_recordset(coalesce(p_leads, '[]'::jsonb))
             as x(user_id uuid, pipeline_id bigint, lead_id bigint, contact_id bigint, email text, keep_existing boolean)
     where x.user_id is not null and x.lead_id is not null),
  kept as (
    insert into amocrm.student_leads as l (user_id, pipeline_id, email, lead_id, contact_id)
    select f.user_id, f.pipeline_id, f.email, f.lead_id, f.contact_id from found f
    on conflict (user_id, pipeline_id) do update
       set lead_id = excluded.lead_id,
           contact_id = coalesce(excluded.contact_id, l.contact_id),
           email = coalesce(excluded.email, l.email),
           updated_at = now()
     where not exists (select 1 from found f where f.user_id = l.user_id and f.pipeline_id = l.pipeline_id and f.keep_existing)
    returning 1)
  select jsonb_build_object('remembered', (select count(*) from kept))
$$;

-- As in 20261208000300; the deal found is remembered in the first funnel's pipeline (the
-- other funnels' deals go through amocrm_remember_leads with keep_existing).
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
    insert into amocrm.student_leads as l (user_id, pipeline_id, email, lead_id, contact_id)
    values (p_user_id, amocrm.default_pipeline(), j.email, p_lead_id, p_contact_id)
    on conflict (user_id, pipeline_id) do nothing; -- a lesson that found the deal meanwhile knows better
  end if;
  return jsonb_build_object('recorded', true);
end $$;

-- ---------------------------------------------------------------------------
-- What the platform and the console read: a student may have a deal per pipeline
-- ---------------------------------------------------------------------------
-- The remembered deal of a student the platform means: the first funnel's pipeline's, else
-- the most recently remembered.
create or replace function amocrm.main_lead(p_user_id uuid) returns bigint
language sql stable set search_path = '' as $$
  select l.lead_id from amocrm.student_leads l where l.user_id = p_user_id
   order by (l.pipeline_id = amocrm.default_pipeline()) desc, l.updated_at desc limit 1
$$;

-- As in 20261208000400, with the first funnel's deal (a student may have one per pipeline).
create or replace function public.amocrm_student_deal(p_user_id uuid)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce((
    select jsonb_build_object(
      'user_id', l.user_id, 'lead_id', l.lead_id, 'mirrored', d.lead_id is not null,
      'pipeline_id', d.pipeline_id, 'status_id', d.status_id, 'closed', d.closed, 'deleted', coalesce(d.deleted, false),
      'modified_at', d.modified_at, 'modified_by', d.modified_by)
      from amocrm.student_leads l left join amocrm.deals d on d.lead_id = l.lead_id
     where l.user_id = p_user_id and l.lead_id = amocrm.main_lead(p_user_id)),
    jsonb_build_object('user_id', p_user_id, 'lead_id', null))
$$;

-- As in 20261208000500, with the event's funnel.
create or replace function amocrm.console_item(e amocrm.sync_events) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object('id', e.id, 'status', e.status, 'email', e.email, 'user_id', e.user_id,
    'lesson_id', e.lesson_id, 'stage_number', e.stage_number, 'attempts', e.attempts,
    'code', e.last_error_code, 'reason', e.last_error, 'lead_id', e.lead_id,
    'created_at', e.created_at, 'updated_at', e.updated_at, 'done_at', e.done_at,
    'funnel_key', e.funnel_key)
$$;

-- As in 20261208000500; an event without a deal of its own shows the one remembered in
-- its funnel's pipeline.
create or replace function public.amocrm_console_event(p_id bigint)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'event', amocrm.console_item(e) || jsonb_build_object('next_attempt_at', e.next_attempt_at,
               'retryable', e.retryable, 'contact_id', e.contact_id, 'status_id', e.status_id),
    'attempts', coalesce((select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'at', a.at, 'outcome', a.outcome,
                  'code', a.code, 'message', a.message) order by a.at) from amocrm.event_attempts a where a.event_id = e.id), '[]'::jsonb),
    'deal', amocrm.console_deal(coalesce(e.lead_id, (select l.lead_id from amocrm.student_leads l
                  where l.user_id = e.user_id and l.pipeline_id = amocrm.funnel_pipeline(e.funnel_key)))),
    'history', amocrm.console_history(coalesce(e.lead_id, (select l.lead_id from amocrm.student_leads l
                  where l.user_id = e.user_id and l.pipeline_id = amocrm.funnel_pipeline(e.funnel_key)))))
  from amocrm.sync_events e where e.id = p_id
$$;

-- As in 20261208000500, and: the funnels the student is in (their events' funnels, with
-- the deal remembered in each funnel's pipeline). deal/history stay the first funnel's.
create or replace function public.amocrm_console_student(p_q text)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_q text := lower(btrim(coalesce(p_q, '')));
  v_user uuid;
  v_email text;
  v_lead bigint;
begin
  if v_q ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    v_user := v_q::uuid;
    select lower(u.email) into v_email from auth.users u where u.id = v_user;
    if not found then
      select e.email into v_email from amocrm.sync_events e where e.user_id = v_user limit 1;
    end if;
  else
    -- Events keep the e-mail lower-cased (indexed); auth.users by its own (exact) index.
    select e.user_id, e.email into v_user, v_email from amocrm.sync_events e where e.email = v_q limit 1;
    if v_user is null then
      select u.id, lower(u.email) into v_user, v_email from auth.users u where u.email = v_q limit 1;
    end if;
  end if;
  if v_user is null then
    return null;
  end if;
  v_lead := amocrm.main_lead(v_user);
  if v_lead is null then
    select e.lead_id into v_lead from amocrm.sync_events e where e.user_id = v_user and e.lead_id is not null order by e.id desc limit 1;
  end if;
  return jsonb_build_object(
    'user_id', v_user, 'email', v_email,
    'events', coalesce((select jsonb_agg(amocrm.console_item(e) order by e.id) from amocrm.sync_events e where e.user_id = v_user), '[]'::jsonb),
    'attempts', coalesce((select jsonb_agg(jsonb_build_object('event_id', a.event_id, 'attempt', a.attempt, 'at', a.at,
                  'outcome', a.outcome, 'code', a.code, 'message', a.message) order by a.at)
                  from amocrm.event_attempts a join amocrm.sync_events e on e.id = a.event_id where e.user_id = v_user), '[]'::jsonb),
    'remembered_lead_id', amocrm.main_lead(v_user),
    'funnels', coalesce((select jsonb_agg(jsonb_build_object(
                  'key', k.funnel_key, 'pipeline_id', amocrm.funnel_pipeline(k.funnel_key),
                  'lead_id', (select l.lead_id from amocrm.student_leads l
                               where l.user_id = v_user and l.pipeline_id = amocrm.funnel_pipeline(k.funnel_key)))
                  order by k.first_id)
                  from (select e.funnel_key, min(e.id) as first_id from amocrm.sync_events e
                         where e.user_id = v_user group by e.funnel_key) k), '[]'::jsonb),
    'deal', amocrm.console_deal(v_lead),
    'history', amocrm.console_history(v_lead));
end $$;

-- ---------------------------------------------------------------------------
-- The mirror: a deal matters in any funnel's pipeline
-- ---------------------------------------------------------------------------
-- Whether p_pipeline_id is a funnel's pipeline in force (while none is saved: p_default,
-- AMOCRM_PIPELINE_ID as the caller passes it).
create or replace function amocrm.is_funnel_pipeline(p_pipeline_id bigint, p_default bigint) returns boolean
language sql stable set search_path = '' as $$
  select p_pipeline_id is not null and (
    p_pipeline_id = p_default
    or exists (select 1 from jsonb_array_elements(amocrm.current_funnels()) f where (f->>'pipelineId')::bigint = p_pipeline_id))
$$;

-- As in 20261208000600, with funnels: a change matters in any funnel's pipeline, and a
-- remembered deal is forgotten only when it leaves the pipeline it was remembered in.
create or replace function amocrm.apply_lead_change(p_change jsonb, p_source text, p_pipeline_id bigint)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_lead      bigint := (p_change->>'lead_id')::bigint;
  v_action    text := coalesce(p_change->>'action', 'update');
  v_at        timestamptz := coalesce(to_timestamp((p_change->>'modified_at')::double precision), now());
  v_by        bigint := (p_change->>'modified_by')::bigint;
  m           amocrm.deals;
  v_known     boolean;
  v_pipeline  bigint;
  v_status    bigint;
  v_old_pipe  bigint;
  v_old_stat  bigint;
  v_user      uuid;
  v_kind      text;
  v_new       boolean;
begin
  if v_lead is null then
    return jsonb_build_object('applied', false, 'reason', 'no_lead_id');
  end if;
  perform pg_advisory_xact_lock(hashtextextended('amocrm.deal:' || v_lead, 0));
  select * into m from amocrm.deals d where d.lead_id = v_lead;
  v_known := found;
  select l.user_id into v_user from amocrm.student_leads l where l.lead_id = v_lead limit 1;
  v_pipeline := coalesce((p_change->>'pipeline_id')::bigint, m.pipeline_id);
  v_status   := coalesce((p_change->>'status_id')::bigint, m.status_id);
  v_old_pipe := coalesce((p_change->>'old_pipeline_id')::bigint, m.pipeline_id);
  v_old_stat := coalesce((p_change->>'old_status_id')::bigint, m.status_id);

  -- Only the deals that matter: known students', the Tripwire pipeline's, or mirrored.
  if not v_known and v_user is null and not amocrm.is_funnel_pipeline(v_pipeline, p_pipeline_id)
     and not amocrm.is_funnel_pipeline(v_old_pipe, p_pipeline_id) then
    return jsonb_build_object('applied', false, 'reason', 'not_relevant', 'lead_id', v_lead);
  end if;

  if v_action = 'delete' then
    if v_known and m.deleted then
      return jsonb_build_object('applied', false, 'reason', 'duplicate', 'lead_id', v_lead);
    end if;
    insert into amocrm.deals as d (lead_id, pipeline_id, status_id, deleted, modified_at, modified_by, source)
    values (v_lead, v_pipeline, v_status, true, v_at, v_by, p_source)
    on conflict (lead_id) do update set deleted = true, modified_at = greatest(d.modified_at, excluded.modified_at),
      modified_by = excluded.modified_by, source = excluded.source, updated_at = now();
    insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, changed_at, changed_by, source)
    values (v_lead, v_user, 'deleted', v_pipeline, v_status, v_at, v_by, p_source);
    -- The student's remembered deal follows: their next lesson searches afresh.
    delete from amocrm.student_leads l where l.lead_id = v_lead;
    return jsonb_build_object('applied', true, 'kind', 'deleted', 'lead_id', v_lead, 'user_id', v_user);
  end if;

  -- Is this a stage change? Known from the delivery (old_* fields, a status hook) or from
  -- the mirror. One already in the history (a duplicate delivery, or the feed repeating a
  -- hook: their timestamps may differ by a second or two) is recorded once.
  v_new := v_status is not null
    and ((p_change ? 'old_status_id' and v_old_stat is distinct from v_status)
         or (p_change ? 'old_pipeline_id' and v_old_pipe is distinct from v_pipeline)
         or (v_known and (m.status_id is distinct from v_status or m.pipeline_id is distinct from v_pipeline))
         or (not v_known and v_action = 'status'))
    and not exists (select 1 from amocrm.deal_stage_history h
                     where h.lead_id = v_lead and h.pipeline_id is not distinct from v_pipeline
                       and h.status_id is not distinct from v_status
                       and h.changed_at between v_at - interval '5 seconds' and v_at + interval '5 seconds');
  if v_new then
    insert into amocrm.deal_stage_history (lead_id, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
    values (v_lead, v_pipeline, v_status, v_old_pipe, v_old_stat, v_at, v_by, p_source);
  end if;

  -- Older than what the mirror holds: the mirror keeps the newer state, but a change the
  -- delivery itself says happened (a status hook, or one that names the stage before) is
  -- still a real change, and reaches the platform once like any other. One that is a change
  -- only by comparison with the newer mirror is not evidence of one: history only.
  if v_known and m.modified_at is not null and m.modified_at > v_at then
    if v_new and (v_action = 'status' or p_change ? 'old_status_id' or p_change ? 'old_pipeline_id') then
      v_kind := case v_status when 142 then 'won' when 143 then 'lost' else 'stage_changed' end;
      insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
      values (v_lead, v_user, v_kind, v_pipeline, v_status, v_old_pipe, v_old_stat, v_at, v_by, p_source);
    end if;
    return jsonb_build_object('applied', false, 'reason', 'older', 'lead_id', v_lead, 'history', v_new,
                              'kind', v_kind, 'user_id', v_user, 'pipeline_id', v_pipeline, 'status_id', v_status, 'changed', v_kind is not null);
  end if;

  insert into amocrm.deals as d (lead_id, pipeline_id, status_id, closed, deleted, name, modified_at, modified_by, source)
  values (v_lead, v_pipeline, v_status,
          case v_status when 142 then 'won' when 143 then 'lost' end, false,
          left(p_change->>'name', 500), v_at, v_by, p_source)
  on conflict (lead_id) do update set pipeline_id = excluded.pipeline_id, status_id = excluded.status_id,
    closed = excluded.closed, deleted = false, name = coalesce(excluded.name, d.name),
    modified_at = excluded.modified_at, modified_by = excluded.modified_by, source = excluded.source, updated_at = now();

  if v_new then
    v_kind := case v_status when 142 then 'won' when 143 then 'lost' else 'stage_changed' end;
    insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
    values (v_lead, v_user, v_kind, v_pipeline, v_status, v_old_pipe, v_old_stat, v_at, v_by, p_source);
  end if;
  -- A deal moved out of the pipeline it was remembered in is no longer the student's deal
  -- there (0: remembered before funnels, in p_pipeline_id).
  delete from amocrm.student_leads l
   where l.lead_id = v_lead
     and (case when l.pipeline_id = 0 then p_pipeline_id else l.pipeline_id end) is distinct from v_pipeline;
  return jsonb_build_object('applied', true, 'kind', v_kind, 'lead_id', v_lead, 'user_id', v_user,
                            'pipeline_id', v_pipeline, 'status_id', v_status, 'changed', v_new);
end $$;

select amocrm.lock_down_functions();
-- An operator's own insert into amocrm.student_leads (service_role) computes the column's
-- default.
grant execute on function amocrm.default_pipeline() to service_role;

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
