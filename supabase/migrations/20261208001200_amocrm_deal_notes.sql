-- amocrm-lesson-sync, after 1.0.0: what the sales manager sees in the deal. A funnel step
-- may ask for a note in the deal's timeline ("Студент прошёл урок 2 «…» 07.12 14:05") and a
-- task for the deal's responsible manager. Each is created in amoCRM exactly once per lesson
-- event, although amoCRM's notes and tasks endpoints are not idempotent (a repeated POST adds
-- a second one) and its request_id is only echoed, never kept:
--
-- * one row per (event, kind), queued when the event's move is made and before its outcome is
--   written: a replay, a retry or a duplicate webhook queues nothing new;
-- * a row is due only once its event is done (its deal is in the step's stage); an event that
--   ends skipped never gets one;
-- * a row is sent under a claim with a lease, like the events: a POST leaves only while the
--   claim outlives it;
-- * a POST whose answer never came (timeout, reset, 5xx), and a claim that expired while
--   sending (a killed drainer), make the row `uncertain`: before it is sent again, the deal's
--   notes or tasks are read and a match (the same text, and for a task the same deadline)
--   counts as sent.
--
-- The academy's time zone for the note's time: system_settings 'academy_time_zone' (a name
-- PostgreSQL knows, e.g. "Asia/Almaty", the default).

create table if not exists amocrm.deal_notes (
  event_id        bigint not null references amocrm.sync_events (id) on delete cascade,
  kind            text not null check (kind in ('note', 'task')),
  text            text not null check (length(text) between 1 and 2000),
  -- A task's deadline, fixed when it is queued: a re-sent task is the same task.
  complete_till   timestamptz,
  -- The deal it went to: the event's deal when first claimed.
  lead_id         bigint,
  status          text not null default 'pending' check (status in ('pending', 'sending', 'done', 'failed')),
  uncertain       boolean not null default false,
  attempts        integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  lease_holder    text,
  lease_until     timestamptz,
  amo_id          bigint,
  last_error      text,
  created_at      timestamptz not null default now(),
  updated_at      timestamptz not null default now(),
  done_at         timestamptz,
  primary key (event_id, kind),
  check (kind <> 'task' or complete_till is not null)
);
create index if not exists deal_notes_due_idx on amocrm.deal_notes (next_attempt_at) where status in ('pending', 'sending');
alter table amocrm.deal_notes enable row level security;
revoke all on amocrm.deal_notes from public, anon, authenticated;
grant select, insert, update, delete on amocrm.deal_notes to service_role;

-- The academy's time zone, or Asia/Almaty when unset or unknown to PostgreSQL.
create or replace function amocrm.academy_time_zone() returns text
language sql stable set search_path = '' as $$
  select coalesce((select s.value #>> '{}' from amocrm.system_settings s, pg_catalog.pg_timezone_names z
                    where s.key = 'academy_time_zone' and z.name = s.value #>> '{}' limit 1), 'Asia/Almaty');
$$;

-- Queues the notes and tasks of these events. p_items: [{event_id, note: bool, step_number,
-- task_text, task_due_minutes}]. The note's text is written here, once: the step's number, the
-- lesson's title (public.lessons) and the completion time in the academy's time zone. An
-- event already queued keeps its rows. Answers {queued: <rows added>}.
create or replace function public.amocrm_queue_deal_notes(p_items jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_tz    text := amocrm.academy_time_zone();
  v_count bigint;
begin
  if jsonb_typeof(p_items) is distinct from 'array' then
    raise exception 'p_items must be a json array' using errcode = '22023';
  end if;
  with items as (
    select (i->>'event_id')::bigint as event_id, coalesce((i->>'note')::boolean, false) as note,
           (i->>'step_number')::int as step_number, nullif(btrim(i->>'task_text'), '') as task_text,
           (i->>'task_due_minutes')::int as due_minutes
      from jsonb_array_elements(p_items) i),
  rows as (
    select it.event_id, 'note'::text as kind,
           format('Студент прошёл урок %s%s %s', coalesce(it.step_number, e.stage_number),
                  coalesce(' «' || l.title || '»', ''),
                  to_char(e.created_at at time zone v_tz, 'DD.MM HH24:MI')) as text,
           null::timestamptz as complete_till
      from items it join amocrm.sync_events e on e.id = it.event_id
      left join public.lessons l on l.id = e.lesson_id
     where it.note
    union all
    select it.event_id, 'task', left(it.task_text, 2000), now() + make_interval(mins => greatest(coalesce(it.due_minutes, 0), 0))
      from items it join amocrm.sync_events e on e.id = it.event_id
     where it.task_text is not null),
  added as (
    insert into amocrm.deal_notes (event_id, kind, text, complete_till)
    select r.event_id, r.kind, r.text, r.complete_till from rows r
    on conflict (event_id, kind) do nothing
    returning 1)
  select count(*) into v_count from added;
  return jsonb_build_object('queued', v_count);
end $$;

-- Claims up to p_limit due rows: pending and due, or sending under a claim that expired (its
-- POST may have left: uncertain). Only rows whose event is done, oldest first.
create or replace function public.amocrm_claim_deal_notes(p_holder text, p_limit integer default 100, p_lease_seconds integer default 90)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_rows jsonb;
begin
  if p_holder is null or p_holder = '' or p_limit is null or p_limit < 1 or p_lease_seconds is null or p_lease_seconds < 1 then
    raise exception 'p_holder, p_limit and p_lease_seconds are required' using errcode = '22023';
  end if;
  with due as (
    select d.event_id, d.kind, e.lead_id as event_lead
      from amocrm.deal_notes d join amocrm.sync_events e on e.id = d.event_id
     where ((d.status = 'pending' and d.next_attempt_at <= now()) or (d.status = 'sending' and d.lease_until < now()))
       and e.status = 'done' and coalesce(d.lead_id, e.lead_id) is not null
     order by d.created_at, d.event_id, d.kind
     limit least(p_limit, 500)
     for update of d skip locked),
  claimed as (
    update amocrm.deal_notes d
       set uncertain = d.uncertain or d.status = 'sending', status = 'sending', attempts = d.attempts + 1,
           lead_id = coalesce(d.lead_id, due.event_lead), lease_holder = p_holder,
           lease_until = now() + make_interval(secs => p_lease_seconds), updated_at = now()
      from due where d.event_id = due.event_id and d.kind = due.kind
    returning d.*)
  select coalesce(jsonb_agg(jsonb_build_object(
           'event_id', c.event_id, 'kind', c.kind, 'text', c.text, 'lead_id', c.lead_id, 'uncertain', c.uncertain,
           'attempts', c.attempts, 'complete_till', floor(extract(epoch from c.complete_till))::bigint)
           order by c.created_at, c.event_id, c.kind), '[]'::jsonb)
    into v_rows from claimed c;
  return v_rows;
end $$;

-- What became of claimed rows. p_results: [{event_id, kind, outcome, amo_id, error, retry_in_ms}]:
--   done     amoCRM has it (answered, or found when checked): recorded whoever holds the row
--   unknown  sent, no answer: may be applied; checked before it is sent again
--   retry    not applied (refused before amoCRM took it: 429, no slot, token); again later
--   release  not tried at all (no spare slot): due again, the attempt not counted
--   failed   refused for good (the deal is gone, amoCRM rejects the item)
-- A row retried p_max_attempts times is failed. Answers {recorded: <rows changed>}.
create or replace function public.amocrm_finish_deal_notes(p_holder text, p_results jsonb, p_max_attempts integer default 8)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_count bigint;
begin
  if jsonb_typeof(p_results) is distinct from 'array' then
    raise exception 'p_results must be a json array' using errcode = '22023';
  end if;
  with r as (
    select (x->>'event_id')::bigint as event_id, x->>'kind' as kind, x->>'outcome' as outcome,
           (x->>'amo_id')::bigint as amo_id, left(x->>'error', 500) as error, coalesce((x->>'retry_in_ms')::int, 0) as retry_in_ms
      from jsonb_array_elements(p_results) x),
  changed as (
    update amocrm.deal_notes d set
      status = case when r.outcome = 'done' then 'done'
                    when r.outcome = 'failed' then 'failed'
                    when r.outcome in ('retry', 'unknown') and d.attempts >= p_max_attempts then 'failed'
                    else 'pending' end,
      uncertain = case when r.outcome = 'done' then false else d.uncertain or r.outcome = 'unknown' end,
      attempts = case when r.outcome = 'release' then greatest(d.attempts - 1, 0) else d.attempts end,
      amo_id = coalesce(r.amo_id, d.amo_id),
      done_at = case when r.outcome = 'done' then now() else d.done_at end,
      last_error = case when r.outcome = 'done' then d.last_error else coalesce(r.error, d.last_error) end,
      next_attempt_at = now() + make_interval(secs => r.retry_in_ms / 1000.0),
      lease_holder = null, lease_until = null, updated_at = now()
      from r
     where d.event_id = r.event_id and d.kind = r.kind
       and r.outcome in ('done', 'unknown', 'retry', 'release', 'failed')
       and ((r.outcome = 'done' and d.status <> 'done')
            or (d.status = 'sending' and d.lease_holder = p_holder))
    returning 1)
  select count(*) into v_count from changed;
  return jsonb_build_object('recorded', v_count);
end $$;

select amocrm.lock_down_functions();

notify pgrst, 'reload schema';
