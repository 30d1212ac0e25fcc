-- amocrm-lesson-sync, the operator console's reads: every attempt kept, and one query per
-- view, each served by an index (the console must answer within 300 ms with a million
-- events). Same rules as the earlier migrations.

-- ---------------------------------------------------------------------------
-- Every attempt of every event
-- ---------------------------------------------------------------------------
-- Written by a trigger whenever an event leaves `processing`, so every path that records
-- an outcome (webhook, drainer, scheduled run, replay) is covered without knowing of it.
create table if not exists amocrm.event_attempts (
  event_id bigint not null references amocrm.sync_events (id) on delete cascade,
  attempt  integer not null,
  at       timestamptz not null default now(),
  outcome  text not null,
  code     text,
  message  text,
  primary key (event_id, attempt, at)
);
-- Covering: the health view counts outcomes per bucket from the index alone.
create index if not exists event_attempts_at_idx on amocrm.event_attempts (at) include (outcome, code);
alter table amocrm.event_attempts enable row level security;
revoke all on amocrm.event_attempts from public, anon, authenticated;
grant select, insert, update, delete on amocrm.event_attempts to service_role;

create or replace function amocrm.on_event_finished() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  insert into amocrm.event_attempts (event_id, attempt, outcome, code, message)
  values (new.id, new.attempts,
          case when new.status = 'pending' then 'deferred' else new.status end,
          case when new.status = 'done' then null else new.last_error_code end,
          case when new.status = 'done' then null else left(new.last_error, 500) end)
  on conflict do nothing;
  return null;
end $$;

drop trigger if exists amocrm_event_finished on amocrm.sync_events;
create trigger amocrm_event_finished after update of status on amocrm.sync_events
  for each row when (old.status = 'processing' and new.status <> 'processing')
  execute function amocrm.on_event_finished();

-- ---------------------------------------------------------------------------
-- Indexes for the console's queries
-- ---------------------------------------------------------------------------
-- Covering indexes: the funnel and the latency of a week (a quarter of a million events
-- at a million in the outbox) are read from the index alone, not from the table.
create index if not exists sync_events_created_idx on amocrm.sync_events (created_at) include (stage_number, lesson_id, status, last_error_code);
create index if not exists sync_events_done_idx on amocrm.sync_events (done_at) include (created_at) where done_at is not null;
create index if not exists sync_events_status_id_idx on amocrm.sync_events (status, id desc);
create index if not exists sync_events_code_id_idx on amocrm.sync_events (last_error_code, id desc) where last_error_code is not null;
create index if not exists sync_events_email_idx on amocrm.sync_events (email text_pattern_ops, id desc);
create index if not exists deal_changes_kind_at_idx on amocrm.deal_changes (kind, changed_at);

-- ---------------------------------------------------------------------------
-- Views
-- ---------------------------------------------------------------------------
-- The funnel and the health view read hourly rollups: see 20261201000500_amocrm_console_rollup.sql.

create or replace function amocrm.console_item(e amocrm.sync_events) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object('id', e.id, 'status', e.status, 'email', e.email, 'user_id', e.user_id,
    'lesson_id', e.lesson_id, 'stage_number', e.stage_number, 'attempts', e.attempts,
    'code', e.last_error_code, 'reason', e.last_error, 'lead_id', e.lead_id,
    'created_at', e.created_at, 'updated_at', e.updated_at, 'done_at', e.done_at)
$$;

-- The event list, newest first, filtered, paged by id (p_before_id).
create or replace function public.amocrm_console_events(
  p_status text default null, p_code text default null, p_lesson integer default null,
  p_from timestamptz default null, p_to timestamptz default null, p_q text default null,
  p_before_id bigint default null, p_limit integer default 50)
returns jsonb
language plpgsql stable security definer set search_path = '' as $$
declare
  v_limit integer := greatest(1, least(coalesce(p_limit, 50), 200));
  v_q text := nullif(lower(btrim(p_q)), '');
  v_user uuid;
  v_items jsonb;
begin
  -- A user id searches by user; anything else is an e-mail prefix.
  if v_q ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
    v_user := v_q::uuid;
    v_q := null;
  end if;
  select coalesce(jsonb_agg(amocrm.console_item(e) order by e.id desc), '[]'::jsonb) into v_items
    from (select * from amocrm.sync_events e
           where (p_status is null or e.status = p_status)
             and (p_code is null or e.last_error_code = p_code)
             and (p_lesson is null or e.lesson_id = p_lesson)
             and (p_from is null or e.created_at >= p_from)
             and (p_to is null or e.created_at < p_to)
             and (v_user is null or e.user_id = v_user)
             and (v_q is null or e.email like replace(replace(replace(v_q, '\', '\\'), '%', '\%'), '_', '\_') || '%')
             and (p_before_id is null or e.id < p_before_id)
           order by e.id desc
           limit v_limit + 1) e;
  return jsonb_build_object(
    'items', coalesce((select jsonb_agg(x) from (select x from jsonb_array_elements(v_items) with ordinality t(x, n) where n <= v_limit) y), '[]'::jsonb),
    'next_before_id', case when jsonb_array_length(v_items) > v_limit then (v_items -> (v_limit - 1) ->> 'id')::bigint end);
end $$;

create or replace function amocrm.console_deal(p_lead_id bigint) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object('lead_id', d.lead_id, 'pipeline_id', d.pipeline_id, 'status_id', d.status_id,
                            'closed', d.closed, 'deleted', d.deleted, 'modified_at', d.modified_at)
    from amocrm.deals d where d.lead_id = p_lead_id
$$;

create or replace function amocrm.console_history(p_lead_id bigint) returns jsonb
language sql stable set search_path = '' as $$
  select coalesce(jsonb_agg(jsonb_build_object('pipeline_id', h.pipeline_id, 'status_id', h.status_id,
           'old_status_id', h.old_status_id, 'changed_at', h.changed_at, 'changed_by', h.changed_by, 'source', h.source)
           order by h.changed_at, h.id), '[]'::jsonb)
    from amocrm.deal_stage_history h where h.lead_id = p_lead_id
$$;

-- One event: everything about it, its attempts, its deal and the deal's stage changes.
create or replace function public.amocrm_console_event(p_id bigint)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select jsonb_build_object(
    'event', amocrm.console_item(e) || jsonb_build_object('next_attempt_at', e.next_attempt_at,
               'retryable', e.retryable, 'contact_id', e.contact_id, 'status_id', e.status_id),
    'attempts', coalesce((select jsonb_agg(jsonb_build_object('attempt', a.attempt, 'at', a.at, 'outcome', a.outcome,
                  'code', a.code, 'message', a.message) order by a.at) from amocrm.event_attempts a where a.event_id = e.id), '[]'::jsonb),
    'deal', amocrm.console_deal(coalesce(e.lead_id, (select l.lead_id from amocrm.student_leads l where l.user_id = e.user_id))),
    'history', amocrm.console_history(coalesce(e.lead_id, (select l.lead_id from amocrm.student_leads l where l.user_id = e.user_id))))
  from amocrm.sync_events e where e.id = p_id
$$;

-- One student's story, by exact e-mail or user id.
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
  select l.lead_id into v_lead from amocrm.student_leads l where l.user_id = v_user;
  if v_lead is null then
    select e.lead_id into v_lead from amocrm.sync_events e where e.user_id = v_user and e.lead_id is not null order by e.id desc limit 1;
  end if;
  return jsonb_build_object(
    'user_id', v_user, 'email', v_email,
    'events', coalesce((select jsonb_agg(amocrm.console_item(e) order by e.id) from amocrm.sync_events e where e.user_id = v_user), '[]'::jsonb),
    'attempts', coalesce((select jsonb_agg(jsonb_build_object('event_id', a.event_id, 'attempt', a.attempt, 'at', a.at,
                  'outcome', a.outcome, 'code', a.code, 'message', a.message) order by a.at)
                  from amocrm.event_attempts a join amocrm.sync_events e on e.id = a.event_id where e.user_id = v_user), '[]'::jsonb),
    'remembered_lead_id', (select l.lead_id from amocrm.student_leads l where l.user_id = v_user),
    'deal', amocrm.console_deal(v_lead),
    'history', amocrm.console_history(v_lead));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
