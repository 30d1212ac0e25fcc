-- amocrm-lesson-sync 1.0.0, the reverse direction: amoCRM's stage changes reach the
-- platform. Raw hook deliveries are recorded first (the endpoint answers amoCRM at once),
-- then applied to a mirror of the deals that matter, ordered by amoCRM's modification
-- time, with an append-only history. amocrm.deal_changes is the platform's extension
-- point: one row per real change, exactly once, for its own trigger or Realtime
-- subscription. The scheduled run reads amoCRM's events feed for what the hooks missed.
-- Same rules as the sync's migration (20261208000100).

-- ---------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------
-- status: pending (to apply) → applied; flagged (authentic but unusable: kept for an
-- operator, never answered with an error, so amoCRM never disables the hook); ignored
-- (nothing about deals in it).
-- resolve_holder/resolve_until: the applier that is reading this delivery's deals from
-- amoCRM, and until when (amocrm_apply_deliveries). Others leave the delivery to it (one
-- read, not one per applier); an applier that died loses it when the time is up.
create table if not exists amocrm.crm_deliveries (
  id             bigint generated always as identity primary key,
  request_id     text unique,
  received_at    timestamptz not null default now(),
  account_id     bigint,
  subdomain      text,
  status         text not null default 'pending' check (status in ('pending', 'applied', 'flagged', 'ignored')),
  problem        text,
  changes        jsonb not null default '[]'::jsonb,
  body           text not null,
  body_bytes     integer not null,
  applied_at     timestamptz,
  resolve_holder text,
  resolve_until  timestamptz
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
-- Hooks
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

-- Hooks without a time: amoCRM sends some status hooks in a short form (id, status_id,
-- pipeline_id, old_status_id, old_pipeline_id), with no modification time. Applied with
-- now(), a redelivery more than 5 s later would be a second change (a second 'won' grants
-- the course twice), and two of them applied in reverse order would leave the mirror on
-- the older state. So such a change is never applied with a guessed time: the applier
-- claims its delivery, reads the deal from amoCRM (status, pipeline, updated_at), and
-- applies what amoCRM holds then, as of amoCRM's own time. A delivery whose deal could
-- not be read stays pending for the next applier.
--
-- A change that amoCRM sent without its modification time. A deletion carries only the id
-- in every form, and marking a deal deleted does not depend on the order.
create or replace function amocrm.change_lacks_time(c jsonb) returns boolean
language sql immutable set search_path = '' as $$
  select c->>'modified_at' is null and coalesce(c->>'action', 'update') <> 'delete'
$$;

create or replace function amocrm.delivery_lacks_time(p_changes jsonb) returns boolean
language sql immutable set search_path = '' as $$
  select exists (select 1 from jsonb_array_elements(p_changes) c where amocrm.change_lacks_time(c.value))
$$;

-- Applies pending deliveries, oldest first; SKIP LOCKED lets several appliers share them.
-- The applier names itself (p_holder) and passes the deals it read (p_leads:
-- {"<lead_id>": {pipeline_id, status_id, modified_at, modified_by, name}}).
-- A delivery with a change lacking amoCRM's time is applied only by the holder that
-- claimed it in an earlier call and then read its deals (p_leads): the read came after
-- the delivery was recorded, so it is at least as new as the change. Such a change is
-- applied as the deal's state in amoCRM, without old_* (what the mirror holds is the
-- "before"), so a redelivery finds the mirror already there and records nothing. A deal
-- the read did not return is gone from amoCRM: its change is skipped (a deletion is its
-- own hook). At the end, it claims up to p_limit deliveries that lack a time for p_holder
-- and answers their deals in to_read; the caller reads them and calls again.
create or replace function public.amocrm_apply_deliveries(
  p_pipeline_id bigint, p_limit integer default 100, p_holder text default null, p_leads jsonb default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d record;
  c jsonb;
  v_state jsonb;
  v_results jsonb := '[]'::jsonb;
  v_count integer := 0;
  v_to_read jsonb;
begin
  for d in
    select x.id, x.changes from amocrm.crm_deliveries x
     where x.status = 'pending'
       and (not amocrm.delivery_lacks_time(x.changes)
            or (p_leads is not null and p_holder is not null and x.resolve_holder = p_holder))
     order by x.id limit greatest(p_limit, 1)
     for update skip locked
  loop
    -- One delivery at a time in its own subtransaction: if applying it raises (say, the
    -- platform's own trigger on deal_changes does), it is flagged with the error and the
    -- others still apply.
    begin
      for c in select value from jsonb_array_elements(d.changes) loop
        if amocrm.change_lacks_time(c) then
          v_state := p_leads -> (c->>'lead_id');
          if v_state is null then
            v_results := v_results || jsonb_build_array(jsonb_build_object(
              'applied', false, 'reason', 'not_in_amocrm', 'lead_id', (c->>'lead_id')::bigint));
            continue;
          end if;
          c := v_state || jsonb_build_object('lead_id', c->'lead_id', 'action', c->'action');
        end if;
        v_results := v_results || jsonb_build_array(amocrm.apply_lead_change(c, 'hook', p_pipeline_id));
      end loop;
      update amocrm.crm_deliveries x set status = 'applied', applied_at = now() where x.id = d.id;
    exception when others then
      update amocrm.crm_deliveries x set status = 'flagged', problem = left('applying failed: ' || sqlerrm, 500) where x.id = d.id;
    end;
    v_count := v_count + 1;
  end loop;

  -- Claimed only now, so this call never applies what it claims: the read comes after.
  if p_holder is not null then
    with claimed as (
      update amocrm.crm_deliveries x set resolve_holder = p_holder, resolve_until = now() + interval '30 seconds'
       where x.id in (select y.id from amocrm.crm_deliveries y
                       where y.status = 'pending' and amocrm.delivery_lacks_time(y.changes)
                         and (y.resolve_until is null or y.resolve_until < now())
                       order by y.id limit greatest(p_limit, 1)
                       for update skip locked)
      returning x.changes)
    select jsonb_agg(distinct (e.value->>'lead_id')::bigint) into v_to_read
      from claimed, jsonb_array_elements(claimed.changes) e
     where amocrm.change_lacks_time(e.value);
  end if;
  return jsonb_build_object('deliveries', v_count, 'results', v_results, 'to_read', coalesce(v_to_read, '[]'::jsonb));
end $$;

-- ---------------------------------------------------------------------------
-- The events feed
-- ---------------------------------------------------------------------------
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

-- The scheduled run reads amoCRM's events feed in a fixed, resumable window, so a run cut
-- short never leaves reading stuck: the next run goes on where it stopped. The feed's lag
-- reported here is also what the console's health view shows.
--
-- The state, in amocrm.system_settings under 'events_feed_window':
--   {"read_through": T, "from": F, "to": W, "page": P}
-- read_through: unix seconds; every change created up to T has been read (the end of the
--   last window read in full), null before the first.
-- from/to/page: the window a run stopped inside: changes created F..W (both ends
--   inclusive), and the page the next run starts at. Null/null/1 between windows.
-- With `to` fixed, the changes of the window no longer change, so its page numbers stay
-- put whatever the feed's order; a change stamped later than it appears can only push
-- one already read onto a later page (read twice, recorded once), and the next window's
-- overlap re-reads it. Until the first window is stored, the older single cursor
-- (events_feed_cursor, below) is where reading goes on from.
create or replace function public.amocrm_get_feed_window()
returns jsonb
language sql stable security definer set search_path = '' as $$
  with st as (
    select s.value as v, s.updated_at from amocrm.system_settings s where s.key = 'events_feed_window'
    union all
    select jsonb_build_object('read_through', (s.value #>> '{}')::bigint, 'from', null, 'to', null, 'page', 1), null
      from amocrm.system_settings s
     where s.key = 'events_feed_cursor' and jsonb_typeof(s.value) = 'number'
       and not exists (select 1 from amocrm.system_settings w where w.key = 'events_feed_window'))
  select coalesce((
    select st.v || jsonb_build_object(
             'updated_at', st.updated_at,
             -- Unread may be anything since the last read-through (or the first window's start).
             'lag_seconds', greatest(0, floor(extract(epoch from now()))::bigint
                                      - coalesce((st.v->>'read_through')::bigint, (st.v->>'from')::bigint)))
      from st limit 1), 'null'::jsonb)
$$;

-- Stores the state a run reached, only forward: a run that is behind another (two runs at
-- once, or a late write) never takes the window back. Forward means a later window end,
-- or further into the same window; a window read through is ahead of any page of it.
-- Returns the state stored afterwards, as amocrm_get_feed_window does.
create or replace function public.amocrm_put_feed_window(p_read_through bigint, p_from bigint, p_to bigint, p_page integer)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_new jsonb;
begin
  if (p_to is null) <> (p_from is null) or p_page is null or p_page < 1
     or (p_to is not null and p_to < p_from) or (p_to is null and p_read_through is null) then
    raise exception 'amocrm_put_feed_window: a window needs from <= to and a page from 1; between windows, read_through'
      using errcode = '22023';
  end if;
  v_new := jsonb_build_object('read_through', p_read_through, 'from', p_from, 'to', p_to,
                              'page', case when p_to is null then 1 else p_page end);
  insert into amocrm.system_settings as t (key, value) values ('events_feed_window', v_new)
  on conflict (key) do update set value = excluded.value, updated_at = now()
   where (coalesce((excluded.value->>'to')::bigint, (excluded.value->>'read_through')::bigint),
          case when excluded.value->>'to' is null then 2147483647 else (excluded.value->>'page')::integer end)
       > (coalesce((t.value->>'to')::bigint, (t.value->>'read_through')::bigint, -1),
          case when t.value->>'to' is null then 2147483647 else (t.value->>'page')::integer end);
  return public.amocrm_get_feed_window();
end $$;

-- The older events feed cursor (unix seconds of the newest change read), a single value
-- that stays put when a run is cut short. Nothing in this repository calls these two any
-- more; amocrm_get_feed_window starts from the cursor when no window is stored.
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

-- ---------------------------------------------------------------------------
-- What a claimed event carries
-- ---------------------------------------------------------------------------
-- The JSON an invocation gets when it claims an event (amocrm_claim_event,
-- amocrm_claim_due). A remembered deal the mirror knows to be closed is skipped without a
-- read (cached_lead_closed).
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

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
