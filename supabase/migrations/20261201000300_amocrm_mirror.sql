-- amocrm-lesson-sync, the reverse direction: amoCRM's stage changes reach the platform.
-- Raw hook deliveries are recorded first (the endpoint answers amoCRM at once), then
-- applied to a mirror of the deals that matter, ordered by amoCRM's modification time,
-- with an append-only history. amocrm.deal_changes is the platform's extension point: one
-- row per real change, exactly once, for its own trigger or Realtime subscription.
-- Same rules as the earlier migrations.

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------
-- status: pending (to apply) → applied; flagged (authentic but unusable: kept for an
-- operator, never answered with an error, so amoCRM never disables the hook); ignored
-- (nothing about deals in it).
create table if not exists amocrm.crm_deliveries (
  id          bigint generated always as identity primary key,
  request_id  text unique,
  received_at timestamptz not null default now(),
  account_id  bigint,
  subdomain   text,
  status      text not null default 'pending' check (status in ('pending', 'applied', 'flagged', 'ignored')),
  problem     text,
  changes     jsonb not null default '[]'::jsonb,
  body        text not null,
  body_bytes  integer not null,
  applied_at  timestamptz
);
create index if not exists crm_deliveries_pending_idx on amocrm.crm_deliveries (id) where status = 'pending';
create index if not exists crm_deliveries_flagged_idx on amocrm.crm_deliveries (received_at desc) where status = 'flagged';

-- The deals that matter: of known students, or in AMOCRM_PIPELINE_ID. modified_at is
-- amoCRM's own modification time: a delivery older than it never overwrites the row.
create table if not exists amocrm.deals (
  lead_id     bigint primary key,
  pipeline_id bigint,
  status_id   bigint,
  closed      text check (closed in ('won', 'lost')),
  deleted     boolean not null default false,
  name        text,
  modified_at timestamptz,
  modified_by bigint,
  source      text not null,
  updated_at  timestamptz not null default now()
);

create table if not exists amocrm.deal_stage_history (
  id              bigint generated always as identity primary key,
  lead_id         bigint not null,
  pipeline_id     bigint,
  status_id       bigint,
  old_pipeline_id bigint,
  old_status_id   bigint,
  changed_at      timestamptz not null,
  changed_by      bigint,
  source          text not null,
  recorded_at     timestamptz not null default now()
);
create index if not exists deal_stage_history_lead_idx on amocrm.deal_stage_history (lead_id, changed_at);

-- The extension point. kind: stage_changed | won | lost | deleted. user_id is the
-- student whose deal it is, when the sync knows them.
create table if not exists amocrm.deal_changes (
  id              bigint generated always as identity primary key,
  lead_id         bigint not null,
  user_id         uuid,
  kind            text not null check (kind in ('stage_changed', 'won', 'lost', 'deleted')),
  pipeline_id     bigint,
  status_id       bigint,
  old_pipeline_id bigint,
  old_status_id   bigint,
  changed_at      timestamptz not null,
  changed_by      bigint,
  source          text not null,
  created_at      timestamptz not null default now()
);
create index if not exists deal_changes_user_idx on amocrm.deal_changes (user_id, id);

alter table amocrm.crm_deliveries     enable row level security;
alter table amocrm.deals              enable row level security;
alter table amocrm.deal_stage_history enable row level security;
alter table amocrm.deal_changes       enable row level security;
revoke all on amocrm.crm_deliveries, amocrm.deals, amocrm.deal_stage_history, amocrm.deal_changes
  from public, anon, authenticated;
grant select, insert, update, delete on amocrm.crm_deliveries, amocrm.deals, amocrm.deal_stage_history, amocrm.deal_changes
  to service_role;

-- ---------------------------------------------------------------------------
-- Applying one change
-- ---------------------------------------------------------------------------
-- p_change: {lead_id, action: status|update|add|delete|restore, pipeline_id, status_id,
-- old_pipeline_id, old_status_id, modified_at (unix s), modified_by, name}. Serialized per
-- deal (advisory lock), so two deliveries of one change in parallel record it once.
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
  if not v_known and v_user is null and v_pipeline is distinct from p_pipeline_id and v_old_pipe is distinct from p_pipeline_id then
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

  -- Older than what the mirror holds: history only, the mirror keeps the newer state.
  if v_known and m.modified_at is not null and m.modified_at > v_at then
    return jsonb_build_object('applied', false, 'reason', 'older', 'lead_id', v_lead, 'history', v_new);
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
  -- A deal moved out of the Tripwire pipeline is no longer the student's Tripwire deal.
  if v_pipeline is distinct from p_pipeline_id then
    delete from amocrm.student_leads l where l.lead_id = v_lead;
  end if;
  return jsonb_build_object('applied', true, 'kind', v_kind, 'lead_id', v_lead, 'user_id', v_user,
                            'pipeline_id', v_pipeline, 'status_id', v_status, 'changed', v_new);
end $$;

-- ---------------------------------------------------------------------------
-- RPC
-- ---------------------------------------------------------------------------
-- Records one delivery as it came (the body truncated to 256 KB); a retry carrying the
-- same X-Amocrm-Requestid is the same delivery.
create or replace function public.amocrm_record_delivery(
  p_request_id text, p_body text, p_body_bytes integer, p_changes jsonb,
  p_status text, p_problem text default null, p_account_id bigint default null, p_subdomain text default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_id bigint;
begin
  if p_status not in ('pending', 'flagged', 'ignored') then
    raise exception 'amocrm_record_delivery: unknown status %', p_status using errcode = '22023';
  end if;
  insert into amocrm.crm_deliveries (request_id, body, body_bytes, changes, status, problem, account_id, subdomain)
  values (nullif(p_request_id, ''), left(coalesce(p_body, ''), 262144), coalesce(p_body_bytes, 0),
          coalesce(p_changes, '[]'::jsonb), p_status, left(p_problem, 500), p_account_id, left(p_subdomain, 100))
  on conflict (request_id) do nothing
  returning id into v_id;
  if v_id is null then
    select d.id into v_id from amocrm.crm_deliveries d where d.request_id = p_request_id;
    return jsonb_build_object('id', v_id, 'duplicate', true);
  end if;
  return jsonb_build_object('id', v_id, 'duplicate', false);
end $$;

-- Applies pending deliveries, oldest first; SKIP LOCKED lets several appliers share them.
create or replace function public.amocrm_apply_deliveries(p_pipeline_id bigint, p_limit integer default 100)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d record;
  c jsonb;
  v_results jsonb := '[]'::jsonb;
  v_count integer := 0;
begin
  for d in
    select x.id, x.changes from amocrm.crm_deliveries x
     where x.status = 'pending' order by x.id limit greatest(p_limit, 1)
     for update skip locked
  loop
    -- One delivery at a time in its own subtransaction: if applying it raises (say, the
    -- platform's own trigger on deal_changes does), it is flagged with the error and the
    -- others still apply.
    begin
      for c in select value from jsonb_array_elements(d.changes) loop
        v_results := v_results || jsonb_build_array(amocrm.apply_lead_change(c, 'hook', p_pipeline_id));
      end loop;
      update amocrm.crm_deliveries x set status = 'applied', applied_at = now() where x.id = d.id;
    exception when others then
      update amocrm.crm_deliveries x set status = 'flagged', problem = left('applying failed: ' || sqlerrm, 500) where x.id = d.id;
    end;
    v_count := v_count + 1;
  end loop;
  return jsonb_build_object('deliveries', v_count, 'results', v_results);
end $$;

-- Changes read from amoCRM's events feed (what the hooks missed).
create or replace function public.amocrm_apply_changes(p_changes jsonb, p_source text, p_pipeline_id bigint)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  c jsonb;
  v_results jsonb := '[]'::jsonb;
begin
  for c in select value from jsonb_array_elements(coalesce(p_changes, '[]'::jsonb)) loop
    v_results := v_results || jsonb_build_array(amocrm.apply_lead_change(c, p_source, p_pipeline_id));
  end loop;
  return jsonb_build_object('results', v_results);
end $$;

-- "Where is student X's deal now": the remembered deal and what the mirror knows of it.
create or replace function public.amocrm_student_deal(p_user_id uuid)
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce((
    select jsonb_build_object(
      'user_id', l.user_id, 'lead_id', l.lead_id, 'mirrored', d.lead_id is not null,
      'pipeline_id', d.pipeline_id, 'status_id', d.status_id, 'closed', d.closed, 'deleted', coalesce(d.deleted, false),
      'modified_at', d.modified_at, 'modified_by', d.modified_by)
      from amocrm.student_leads l left join amocrm.deals d on d.lead_id = l.lead_id
     where l.user_id = p_user_id),
    jsonb_build_object('user_id', p_user_id, 'lead_id', null))
$$;

-- The events feed cursor: unix seconds of the newest change read.
create or replace function public.amocrm_get_feed_cursor()
returns jsonb
language sql stable security definer set search_path = '' as $$
  select coalesce((select s.value from amocrm.system_settings s where s.key = 'events_feed_cursor'), 'null'::jsonb)
$$;

create or replace function public.amocrm_put_feed_cursor(p_from bigint)
returns jsonb
language sql security definer set search_path = '' as $$
  insert into amocrm.system_settings as t (key, value) values ('events_feed_cursor', to_jsonb(p_from))
  on conflict (key) do update set value = to_jsonb(greatest((t.value #>> '{}')::bigint, p_from)), updated_at = now()
  returning t.value
$$;

-- A remembered deal the mirror knows to be closed is skipped without a read.
create or replace function amocrm.event_json(e amocrm.sync_events) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object(
    'id', e.id, 'user_id', e.user_id, 'email', e.email, 'lesson_id', e.lesson_id,
    'stage_number', e.stage_number, 'status', e.status, 'attempts', e.attempts,
    'lead_id', e.lead_id, 'created_at', e.created_at,
    'cached_lead_id', (select l.lead_id from amocrm.student_leads l where l.user_id = e.user_id),
    'cached_lead_closed', (select d.closed from amocrm.student_leads l join amocrm.deals d on d.lead_id = l.lead_id
                            where l.user_id = e.user_id and not d.deleted))
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
