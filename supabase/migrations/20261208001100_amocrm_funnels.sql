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
  v_keys text[] := '{}';
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
       or jsonb_array_length(f->'steps') > 50 then
      return format('funnel %s needs 1 to 50 steps', f->>'key');
    end if;
    v_lessons := '{}';
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
-- As in 20261208000100, but the WHEN list is every lesson of the funnels in force; while
-- none is saved, the `tripwire_lessons` setting's. Saving a version re-creates it, so a new
-- funnel's lessons are recorded from the next completion on.
create or replace function amocrm.install_lesson_trigger() returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_funnels jsonb := amocrm.current_funnels();
  v_lessons integer[];
begin
  if v_funnels is not null then
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

-- Remembered deals per pipeline. 0: remembered before funnels existed, in the one pipeline
-- of the time; the first saved version takes them over (amocrm.save_funnels).
alter table amocrm.student_leads add column if not exists pipeline_id bigint not null default 0;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
