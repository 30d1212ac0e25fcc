-- amocrm-lesson-sync: outbox of lesson events, token store, shared rate limiter,
-- and the SQL functions the Netlify functions call with supabase.rpc().
--
-- Everything lives in schema `amocrm`, which is NOT in PostgREST's exposed schemas:
-- tokens and events cannot be reached over the Data API at all. The only doors are the
-- public.amocrm_* functions below, executable by service_role alone. They are
-- SECURITY DEFINER with an empty search_path (every name schema-qualified), so
-- service_role needs no direct table access to use them; the table grants exist for
-- operators who query the outbox from the SQL editor or a service-role client.
--
-- Every RPC returns jsonb: PostgREST hands back a jsonb result as-is, so the
-- supabase-js adapter and the plain SQL adapters (PGlite, pg) see the same shape.

create schema if not exists extensions;
create extension if not exists pgcrypto with schema extensions;

create schema if not exists amocrm;
revoke all on schema amocrm from public;
grant usage on schema amocrm to service_role;

-- ---------------------------------------------------------------------------
-- Settings and tokens
-- ---------------------------------------------------------------------------
-- One row per setting. Rows the sync uses:
--   amocrm_tokens     {kind: oauth|long_lived, access_token, refresh_token, expires_at,
--                      auth_state: ok|needs_reauth, auth_problem}
--                     `version` is the compare-and-swap guard of the token chain and
--                     `lease_*` the refresh lease (one refresher at a time).
--   tripwire_lessons  {"67":1,"68":2,"69":3}: lesson id -> stage number
--   webhook_url       "https://<site>/api/amocrm/lesson-completed" (set per deployment)
--   webhook_secret    "whsec_..." shared with AMOCRM_WEBHOOK_SECRET (set per deployment)
--   webhook_timeout_ms 10000
--   pipeline:<id>     cached stage order of a pipeline {statuses:[{id,sort,name}], fetched_at}
create table if not exists amocrm.system_settings (
  key          text primary key,
  value        jsonb not null,
  version      bigint not null default 1,
  lease_holder text,
  lease_until  timestamptz,
  updated_at   timestamptz not null default now()
);

insert into amocrm.system_settings (key, value)
values ('tripwire_lessons', '{"67": 1, "68": 2, "69": 3}'::jsonb),
       ('webhook_timeout_ms', '10000'::jsonb)
on conflict (key) do nothing;

-- ---------------------------------------------------------------------------
-- Outbox: one row per (student, Tripwire lesson). Also the monitoring log.
-- ---------------------------------------------------------------------------
-- status:
--   pending     recorded, waiting for the webhook or the scheduled run
--   processing  claimed by an invocation until lease_until (an expired lease is reclaimable)
--   done        the deal is in the lesson's stage (moved, or found already there)
--   skipped     deliberately not moved (would go backwards, deal won/lost, pushed past Tripwire)
--   failed      last attempt failed; retried at next_attempt_at (retryable) or never (permanent)
--   parked      needs an operator (tokens revoked, account blocked); resumes by itself once fixed
--   dead        retryable failures exhausted the attempts; kept for replay
create table if not exists amocrm.sync_events (
  id               bigint generated always as identity primary key,
  user_id          uuid not null,
  email            text,
  lesson_id        integer not null,
  stage_number     smallint not null check (stage_number between 1 and 9),
  progress_id      text,
  source           text not null default 'trigger',
  status           text not null default 'pending'
                   check (status in ('pending','processing','done','skipped','failed','parked','dead')),
  attempts         integer not null default 0,
  next_attempt_at  timestamptz not null default now() + interval '60 seconds',
  lease_holder     text,
  lease_until      timestamptz,
  retryable        boolean,
  last_error_code  text,
  last_error       text,
  lead_id          bigint,
  contact_id       bigint,
  status_id        bigint,
  created_at       timestamptz not null default now(),
  updated_at       timestamptz not null default now(),
  finished_at      timestamptz,
  -- A second completion of the same lesson by the same student is not a second event.
  unique (user_id, lesson_id)
);
create index if not exists sync_events_due_idx
  on amocrm.sync_events (next_attempt_at) where status in ('pending','failed','processing');
create index if not exists sync_events_status_idx on amocrm.sync_events (status, updated_at desc);

-- The deal found for a student, so later lessons cost no contact search.
create table if not exists amocrm.student_leads (
  user_id    uuid primary key,
  email      text,
  lead_id    bigint not null,
  contact_id bigint,
  updated_at timestamptz not null default now()
);

-- Shared limiter: every instance of every function takes its amoCRM request slot here.
-- GCRA: next_free_at is the earliest time the next request may start.
create table if not exists amocrm.rate_limiter (
  key          text primary key,
  next_free_at timestamptz not null default now()
);
insert into amocrm.rate_limiter (key) values ('amocrm') on conflict (key) do nothing;

-- "What happened to student X": the academy's amocrm_logs.
create or replace view amocrm.amocrm_logs with (security_invoker = true) as
  select e.id as event_id, e.email, e.user_id, e.lesson_id, e.stage_number, e.status,
         e.attempts, e.lead_id, e.status_id, e.last_error_code, e.last_error,
         e.next_attempt_at, e.created_at, e.updated_at, e.finished_at
    from amocrm.sync_events e;

alter table amocrm.system_settings enable row level security;
alter table amocrm.sync_events     enable row level security;
alter table amocrm.student_leads   enable row level security;
alter table amocrm.rate_limiter    enable row level security;

revoke all on all tables in schema amocrm from public, anon, authenticated;
grant select, insert, update, delete on all tables in schema amocrm to service_role;

-- ---------------------------------------------------------------------------
-- Internal helpers (schema amocrm, not callable over the API)
-- ---------------------------------------------------------------------------

-- Whether a lesson_progress row (as jsonb) is a completion. The platform inserts a row
-- on completion today; if the table carries a flag or timestamp, it decides.
create or replace function amocrm.row_is_completed(r jsonb) returns boolean
language sql immutable set search_path = '' as $$
  select case
    when r is null then false
    when r ? 'is_completed' then coalesce((r->>'is_completed')::boolean, false)
    when r ? 'completed'    then coalesce((r->>'completed')::boolean, false)
    when r ? 'completed_at' then r->>'completed_at' is not null
    else true
  end
$$;

create or replace function amocrm.setting_text(p_key text) returns text
language sql stable set search_path = '' as $$
  select s.value #>> '{}' from amocrm.system_settings s where s.key = p_key
$$;

-- Records the event for a completion; returns (event_id, created). Idempotent on
-- (user_id, lesson_id). Returns no row for a lesson outside the Tripwire set.
create or replace function amocrm.record_event(
  p_user_id uuid, p_lesson_id integer, p_source text, p_progress_id text,
  out event_id bigint, out created boolean, out stage_number smallint)
returns record
language plpgsql security definer set search_path = '' as $$
declare
  v_email text;
begin
  select (s.value ->> p_lesson_id::text)::smallint into stage_number
    from amocrm.system_settings s where s.key = 'tripwire_lessons';
  if stage_number is null then
    return;
  end if;
  select lower(btrim(u.email)) into v_email from auth.users u where u.id = p_user_id;

  insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, progress_id, source)
  values (p_user_id, v_email, p_lesson_id, stage_number, p_progress_id, p_source)
  on conflict (user_id, lesson_id) do nothing
  returning id into event_id;

  created := event_id is not null;
  if not created then
    select e.id into event_id from amocrm.sync_events e
     where e.user_id = p_user_id and e.lesson_id = p_lesson_id;
  end if;
end $$;

-- Rings the webhook function through pg_net, signed the Standard Webhooks way.
-- Returns the pg_net request id, or null when not configured / pg_net is absent.
-- pg_net only queues the request; it is sent after commit by a background worker, so
-- the student's transaction never waits on the network.
create or replace function amocrm.ring_webhook(p_event_id bigint, p_body jsonb) returns bigint
language plpgsql security definer set search_path = '' as $$
declare
  v_url     text;
  v_secret  text;
  v_timeout integer;
  v_msg_id  text := 'evt_' || p_event_id;
  v_ts      text := floor(extract(epoch from clock_timestamp()))::bigint::text;
  v_key     bytea;
  v_headers jsonb;
  v_request bigint;
begin
  -- One read for all three settings: this runs inside the student's INSERT.
  select max(s.value #>> '{}') filter (where s.key = 'webhook_url'),
         max(s.value #>> '{}') filter (where s.key = 'webhook_secret'),
         coalesce(max((s.value #>> '{}')::integer) filter (where s.key = 'webhook_timeout_ms'), 10000)
    into v_url, v_secret, v_timeout
    from amocrm.system_settings s where s.key in ('webhook_url', 'webhook_secret', 'webhook_timeout_ms');
  if coalesce(v_url, '') = '' or coalesce(v_secret, '') = ''
     or to_regprocedure('net.http_post(text,jsonb,jsonb,jsonb,integer)') is null then
    return null;
  end if;
  -- whsec_<base64> secrets are keyed by their decoded bytes, as Standard Webhooks says.
  v_key := case when v_secret like 'whsec\_%' then decode(substr(v_secret, 7), 'base64')
                else convert_to(v_secret, 'UTF8') end;
  -- pg_net sends body::text, so the signature is computed over exactly those bytes.
  v_headers := jsonb_build_object(
    'Content-Type', 'application/json',
    'webhook-id', v_msg_id,
    'webhook-timestamp', v_ts,
    'webhook-signature', 'v1,' || encode(extensions.hmac(
        convert_to(v_msg_id || '.' || v_ts || '.' || p_body::text, 'UTF8'), v_key, 'sha256'), 'base64'));
  -- A static call: PL/pgSQL resolves it only when it runs (after the check above, so a
  -- database without pg_net never reaches it) and then keeps its plan, where EXECUTE
  -- would parse and plan on every student's INSERT.
  v_request := net.http_post(url => v_url, body => p_body, headers => v_headers, timeout_milliseconds => v_timeout);
  return v_request;
end $$;

-- The trigger. Whatever goes wrong in here is a WARNING, never an error: the student's
-- write must not fail because of the integration. The event insert and the webhook ring
-- are guarded separately, so a broken pg_net cannot cost the event itself.
create or replace function amocrm.on_lesson_progress() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_new jsonb := to_jsonb(new);
  v_old jsonb := case when tg_op = 'UPDATE' then to_jsonb(old) end;
  v_event record;
begin
  if not amocrm.row_is_completed(v_new) or amocrm.row_is_completed(v_old) then
    return null;
  end if;
  begin
    select * into v_event
      from amocrm.record_event((v_new->>'user_id')::uuid, (v_new->>'lesson_id')::integer,
                               'trigger', v_new->>'id');
  exception when others then
    raise warning '[AmoCRM] event not recorded for lesson_progress %: % (the scheduled reconcile picks it up)',
      v_new->>'id', sqlerrm;
    return null;
  end;
  if v_event.created then
    begin
      perform amocrm.ring_webhook(v_event.event_id, jsonb_build_object(
        'type', tg_op, 'table', tg_table_name, 'schema', tg_table_schema,
        'record', v_new, 'old_record', v_old, 'event_id', v_event.event_id));
    exception when others then
      raise warning '[AmoCRM] webhook not queued for event %: % (the scheduled run delivers it)',
        v_event.event_id, sqlerrm;
    end;
  end if;
  return null;
end $$;

-- The trigger carries a WHEN clause with the Tripwire lesson ids, so a student's write of
-- any other lesson never even enters PL/pgSQL: the check runs in the executor. The ids
-- come from the tripwire_lessons setting; changing the setting re-creates the trigger.
create or replace function amocrm.install_lesson_trigger() returns void
language plpgsql security definer set search_path = '' as $$
declare
  v_lessons integer[];
begin
  select coalesce(array_agg(k::integer order by k::integer), '{}') into v_lessons
    from amocrm.system_settings s, jsonb_object_keys(s.value) k where s.key = 'tripwire_lessons';
  drop trigger if exists amocrm_lesson_completed on public.lesson_progress;
  execute format('create trigger amocrm_lesson_completed after insert or update on public.lesson_progress '
                 'for each row when (new.lesson_id = any (%L::integer[])) '
                 'execute function amocrm.on_lesson_progress()', v_lessons);
end $$;

create or replace function amocrm.on_tripwire_setting() returns trigger
language plpgsql security definer set search_path = '' as $$
begin
  perform amocrm.install_lesson_trigger();
  return null;
end $$;

drop trigger if exists amocrm_tripwire_lessons_changed on amocrm.system_settings;
create trigger amocrm_tripwire_lessons_changed
  after insert or update of value on amocrm.system_settings
  for each row when (new.key = 'tripwire_lessons')
  execute function amocrm.on_tripwire_setting();

select amocrm.install_lesson_trigger();

-- The JSON an invocation gets when it claims an event.
create or replace function amocrm.event_json(e amocrm.sync_events) returns jsonb
language sql stable set search_path = '' as $$
  select jsonb_build_object(
    'id', e.id, 'user_id', e.user_id, 'email', e.email, 'lesson_id', e.lesson_id,
    'stage_number', e.stage_number, 'status', e.status, 'attempts', e.attempts,
    'lead_id', e.lead_id, 'created_at', e.created_at,
    'cached_lead_id', (select l.lead_id from amocrm.student_leads l where l.user_id = e.user_id))
$$;

-- ---------------------------------------------------------------------------
-- RPC: events
-- ---------------------------------------------------------------------------

-- The plain Supabase Database Webhook path: the function records the event itself.
create or replace function public.amocrm_record_event(
  p_user_id uuid, p_lesson_id integer, p_progress_id text default null, p_source text default 'webhook')
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v record;
begin
  -- The trigger's rows reference auth.users already; a webhook body may name anyone, and
  -- an event for a user who does not exist could never succeed: refuse it instead.
  if not exists (select 1 from auth.users u where u.id = p_user_id) then
    return jsonb_build_object('tripwire', (select s.value ? p_lesson_id::text from amocrm.system_settings s where s.key = 'tripwire_lessons'),
                              'unknown_user', true);
  end if;
  select * into v from amocrm.record_event(p_user_id, p_lesson_id, p_source, p_progress_id);
  if v.event_id is null then
    return jsonb_build_object('tripwire', false);
  end if;
  return jsonb_build_object('tripwire', true, 'event_id', v.event_id, 'created', v.created,
                            'stage_number', v.stage_number);
end $$;

-- One student's events are processed one at a time, whoever claims them (webhook,
-- scheduled run, replay): a slow move of lesson 1 must never land after lesson 2's and
-- pull the deal back. A transaction-scoped advisory lock per student serializes the
-- claims themselves; a live lease on a sibling event makes the claim wait its turn.
create or replace function amocrm.student_lock_key(p_user_id uuid) returns bigint
language sql immutable set search_path = '' as $$
  select hashtextextended(p_user_id::text, 4242)
$$;

create or replace function amocrm.student_busy(p_user_id uuid, p_except bigint) returns boolean
language sql stable set search_path = '' as $$
  select exists (select 1 from amocrm.sync_events o
                  where o.user_id = p_user_id and o.id <> p_except
                    and o.status = 'processing' and o.lease_until > now())
$$;

-- Claims one event for this invocation with a lease. Only events in p_statuses (or a
-- processing event whose lease expired) can be claimed; anything else answers why not,
-- so a duplicate delivery of a done, failed or in-flight event does no second amoCRM
-- work. The webhook claims pending events only: failed ones belong to the scheduled run
-- (when due) and to replay, which pass their statuses explicitly. While another event of
-- the same student is in flight the answer is reason=student_busy.
create or replace function public.amocrm_claim_event(
  p_event_id bigint, p_holder text, p_lease_seconds integer default 60,
  p_statuses text[] default array['pending'])
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  e amocrm.sync_events;
begin
  select * into e from amocrm.sync_events s where s.id = p_event_id;
  if not found then
    return jsonb_build_object('claimed', false, 'reason', 'not_found');
  end if;
  perform pg_advisory_xact_lock(amocrm.student_lock_key(e.user_id));
  if (e.status = any(p_statuses) or (e.status = 'processing' and e.lease_until < now()))
     and amocrm.student_busy(e.user_id, e.id) then
    return jsonb_build_object('claimed', false, 'reason', 'student_busy', 'event', amocrm.event_json(e));
  end if;
  update amocrm.sync_events s
     set status = 'processing', lease_holder = p_holder,
         lease_until = now() + make_interval(secs => p_lease_seconds),
         attempts = s.attempts + 1, updated_at = now()
   where s.id = p_event_id
     and (s.status = any(p_statuses) or (s.status = 'processing' and s.lease_until < now()))
  returning * into e;
  if found then
    return jsonb_build_object('claimed', true, 'event', amocrm.event_json(e));
  end if;
  select * into e from amocrm.sync_events s where s.id = p_event_id;
  return jsonb_build_object('claimed', false,
    'reason', case when e.status = 'processing' then 'in_flight' else 'status' end,
    'event', amocrm.event_json(e));
end $$;

-- Claims up to p_limit due events for the scheduled run: pending or failed-retryable whose
-- next_attempt_at has come, and processing ones whose lease expired (a killed invocation).
-- SKIP LOCKED: overlapping runs never claim the same event. At most one event per student,
-- and none of a student whose other event is in flight (see amocrm_claim_event).
create or replace function public.amocrm_claim_due(
  p_holder text, p_limit integer default 20, p_lease_seconds integer default 60)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r record;
  e amocrm.sync_events;
  v_users uuid[] := '{}'::uuid[];
  v_out jsonb := '[]'::jsonb;
begin
  for r in
    select s.id, s.user_id from amocrm.sync_events s
     where (s.status = 'pending' and s.next_attempt_at <= now())
        or (s.status = 'failed' and s.retryable and s.next_attempt_at <= now())
        or (s.status = 'processing' and s.lease_until < now())
     order by s.next_attempt_at, s.id
     limit greatest(p_limit, 1) * 4
     for update skip locked
  loop
    exit when jsonb_array_length(v_out) >= p_limit;
    continue when r.user_id = any(v_users);
    -- Another transaction is claiming for this student right now: leave it to them.
    continue when not pg_try_advisory_xact_lock(amocrm.student_lock_key(r.user_id));
    continue when amocrm.student_busy(r.user_id, r.id);
    update amocrm.sync_events s
       set status = 'processing', lease_holder = p_holder,
           lease_until = now() + make_interval(secs => p_lease_seconds),
           attempts = s.attempts + 1, updated_at = now()
     where s.id = r.id
    returning * into e;
    v_users := v_users || r.user_id;
    v_out := v_out || jsonb_build_array(amocrm.event_json(e));
  end loop;
  return v_out;
end $$;

-- Records the outcome of a claimed event. Only the lease holder may record it (a lost
-- lease answers recorded=false). p_outcome:
--   done | skipped       final; the deal found is remembered for the student's next lessons
--   retry                retryable failure: failed with next_attempt_at, or dead after
--                        p_max_attempts attempts (became_dead=true exactly once)
--   failed               permanent failure (no contact, no deal, stage rejected)
--   parked               needs an operator; resumed when tokens are stored
--   deferred             no amoCRM work was done (no rate slot): back to pending, the
--                        attempt does not count
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
begin
  if p_outcome not in ('done','skipped','retry','failed','parked','deferred') then
    raise exception 'amocrm_finish_event: unknown outcome %', p_outcome using errcode = '22023';
  end if;
  select * into e from amocrm.sync_events s where s.id = p_event_id for update;
  if not found or e.status <> 'processing' or e.lease_holder is distinct from p_holder then
    return jsonb_build_object('recorded', false, 'status', e.status);
  end if;

  v_status := case p_outcome
    when 'retry' then case when e.attempts >= p_max_attempts then 'dead' else 'failed' end
    when 'deferred' then 'pending'
    else p_outcome end;

  update amocrm.sync_events s set
    status = v_status,
    attempts = case when p_outcome = 'deferred' then greatest(s.attempts - 1, 0) else s.attempts end,
    retryable = case when v_status = 'failed' then p_outcome = 'retry' else null end,
    next_attempt_at = case when p_outcome in ('retry','deferred')
                           then now() + make_interval(secs => coalesce(p_retry_in_ms, 0) / 1000.0)
                           else s.next_attempt_at end,
    lease_holder = null, lease_until = null,
    last_error_code = case when v_status in ('done') then null else coalesce(p_error_code, s.last_error_code) end,
    last_error = case when v_status in ('done') then null else coalesce(p_error, s.last_error) end,
    lead_id = coalesce(p_lead_id, s.lead_id),
    contact_id = coalesce(p_contact_id, s.contact_id),
    status_id = coalesce(p_status_id, s.status_id),
    updated_at = now(),
    finished_at = case when v_status in ('done','skipped','dead') or (v_status = 'failed' and p_outcome = 'failed')
                       then now() else null end
  where s.id = p_event_id;

  if p_lead_id is not null and v_status in ('done','skipped') then
    insert into amocrm.student_leads (user_id, email, lead_id, contact_id)
    values (e.user_id, e.email, p_lead_id, p_contact_id)
    on conflict (user_id) do update
      set lead_id = excluded.lead_id, contact_id = coalesce(excluded.contact_id, amocrm.student_leads.contact_id),
          email = excluded.email, updated_at = now();
  end if;

  return jsonb_build_object('recorded', true, 'status', v_status,
                            'became_dead', v_status = 'dead', 'attempts', e.attempts);
end $$;

-- Forgets the remembered deal of a student (it was deleted or left the pipeline).
create or replace function public.amocrm_forget_lead(p_user_id uuid, p_lead_id bigint)
returns jsonb
language sql security definer set search_path = '' as $$
  with d as (delete from amocrm.student_leads l where l.user_id = p_user_id and l.lead_id = p_lead_id returning 1)
  select jsonb_build_object('forgotten', exists (select 1 from d))
$$;

-- ---------------------------------------------------------------------------
-- RPC: tokens
-- ---------------------------------------------------------------------------

-- The token an invocation should use now. Never returns the refresh token.
create or replace function public.amocrm_get_tokens()
returns jsonb
language sql security definer set search_path = '' as $$
  select coalesce((
    select jsonb_build_object(
      'present', true,
      'kind', s.value->>'kind',
      'access_token', s.value->>'access_token',
      'expires_at', s.value->>'expires_at',
      'has_refresh_token', coalesce(s.value->>'refresh_token', '') <> '',
      'auth_state', coalesce(s.value->>'auth_state', 'ok'),
      'auth_problem', s.value->>'auth_problem',
      'version', s.version,
      'refreshing', s.lease_until is not null and s.lease_until > now(),
      'updated_at', s.updated_at)
    from amocrm.system_settings s where s.key = 'amocrm_tokens'),
    jsonb_build_object('present', false))
$$;

-- Seeds the token row from the environment, only when it does not exist yet: the
-- database, not the env, is the source of truth once the chain has started.
create or replace function public.amocrm_seed_tokens(
  p_kind text, p_access_token text, p_refresh_token text, p_expires_at timestamptz)
returns jsonb
language plpgsql security definer set search_path = '' as $$
begin
  if p_kind not in ('oauth', 'long_lived') then
    raise exception 'token kind must be oauth or long_lived' using errcode = '22023';
  end if;
  insert into amocrm.system_settings (key, value)
  values ('amocrm_tokens', jsonb_build_object('kind', p_kind, 'access_token', p_access_token,
          'refresh_token', p_refresh_token, 'expires_at', p_expires_at, 'auth_state', 'ok'))
  on conflict (key) do nothing;
  return jsonb_build_object('seeded', found);
end $$;

-- Takes the refresh lease. Exactly one caller gets acquired=true (and the refresh token);
-- the others get the version to wait on.
create or replace function public.amocrm_begin_refresh(p_holder text, p_lease_seconds integer default 30)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  s amocrm.system_settings;
begin
  update amocrm.system_settings t
     set lease_holder = p_holder, lease_until = now() + make_interval(secs => p_lease_seconds)
   where t.key = 'amocrm_tokens' and t.value->>'kind' = 'oauth'
     and coalesce(t.value->>'auth_state', 'ok') = 'ok'
     and (t.lease_until is null or t.lease_until < now())
  returning * into s;
  if found then
    return jsonb_build_object('acquired', true, 'version', s.version,
                              'refresh_token', s.value->>'refresh_token');
  end if;
  select * into s from amocrm.system_settings t where t.key = 'amocrm_tokens';
  return jsonb_build_object('acquired', false, 'version', s.version,
                            'kind', s.value->>'kind', 'auth_state', s.value->>'auth_state');
end $$;

-- Stores the rotated pair (compare-and-swap on version) and releases the lease. Called
-- the moment amoCRM answers, before the new access token is used.
-- p_holder is deliberately not checked: the version compare-and-swap is the guard. A pair
-- amoCRM has just issued must be stored even when the caller's lease ran out meanwhile
-- (its refresh token is spent), provided nobody stored another pair since. The parameter
-- stays because callers name it (RPC named arguments); plpgsql_check's "unused
-- parameter" warning for it is allowed in tests/sql/plpgsql-check.test.ts.
create or replace function public.amocrm_finish_refresh(
  p_holder text, p_expected_version bigint,
  p_access_token text, p_refresh_token text, p_expires_at timestamptz)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_version bigint;
begin
  update amocrm.system_settings t
     set value = t.value || jsonb_build_object('access_token', p_access_token,
                   'refresh_token', p_refresh_token, 'expires_at', p_expires_at,
                   'auth_state', 'ok', 'auth_problem', null),
         version = t.version + 1, lease_holder = null, lease_until = null, updated_at = now()
   where t.key = 'amocrm_tokens' and t.version = p_expected_version
  returning t.version into v_version;
  if not found then
    return jsonb_build_object('stored', false);
  end if;
  return jsonb_build_object('stored', true, 'version', v_version);
end $$;

-- Gives the refresh lease back after a failed refresh. With p_needs_reauth the chain is
-- marked broken (refresh token revoked, client credentials rejected): nobody refreshes
-- again until an operator stores new tokens. became_broken is true only for the caller
-- that made the change, so the operator alert is logged once.
create or replace function public.amocrm_abort_refresh(
  p_holder text, p_needs_reauth boolean default false, p_problem text default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_before text;
begin
  select coalesce(t.value->>'auth_state', 'ok') into v_before
    from amocrm.system_settings t where t.key = 'amocrm_tokens' for update;
  update amocrm.system_settings t
     set lease_holder = null, lease_until = null,
         value = case when p_needs_reauth
                      then t.value || jsonb_build_object('auth_state', 'needs_reauth', 'auth_problem', p_problem)
                      else t.value end,
         updated_at = now()
   where t.key = 'amocrm_tokens' and (t.lease_holder = p_holder or p_needs_reauth);
  return jsonb_build_object('became_broken', coalesce(p_needs_reauth and v_before = 'ok', false));
end $$;

-- Marks the chain broken without holding the lease (a long-lived token rejected with 401).
create or replace function public.amocrm_mark_needs_reauth(p_problem text)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_before text;
begin
  select coalesce(t.value->>'auth_state', 'ok') into v_before
    from amocrm.system_settings t where t.key = 'amocrm_tokens' for update;
  update amocrm.system_settings t
     set value = t.value || jsonb_build_object('auth_state', 'needs_reauth', 'auth_problem', p_problem),
         updated_at = now()
   where t.key = 'amocrm_tokens';
  return jsonb_build_object('became_broken', coalesce(v_before = 'ok', false));
end $$;

-- Stores a fresh pair from an operator (authorization code exchange, new long-lived
-- token), repairs the chain and resumes the events parked on it.
create or replace function public.amocrm_store_tokens(
  p_kind text, p_access_token text, p_refresh_token text, p_expires_at timestamptz)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_version bigint;
  v_resumed integer;
begin
  if p_kind not in ('oauth', 'long_lived') then
    raise exception 'token kind must be oauth or long_lived' using errcode = '22023';
  end if;
  insert into amocrm.system_settings as t (key, value)
  values ('amocrm_tokens', jsonb_build_object('kind', p_kind, 'access_token', p_access_token,
          'refresh_token', p_refresh_token, 'expires_at', p_expires_at, 'auth_state', 'ok'))
  on conflict (key) do update
     set value = excluded.value, version = t.version + 1,
         lease_holder = null, lease_until = null, updated_at = now()
  returning t.version into v_version;

  update amocrm.sync_events s
     set status = 'pending', next_attempt_at = now(), updated_at = now()
   where s.status = 'parked';
  get diagnostics v_resumed = row_count;
  return jsonb_build_object('stored', true, 'version', v_version, 'resumed_events', v_resumed);
end $$;

-- ---------------------------------------------------------------------------
-- RPC: shared rate limit and pipeline cache
-- ---------------------------------------------------------------------------

-- Reserves the next amoCRM request slot for whoever calls, across all instances.
-- granted=true: start the request after wait_ms. granted=false: the queue is longer
-- than p_max_wait_ms; nothing was reserved, leave the work for later.
create or replace function public.amocrm_take_rate_slot(
  p_per_second numeric default 6, p_max_wait_ms integer default 2000)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_now  timestamptz;
  v_next timestamptz;
  v_slot timestamptz;
  v_wait numeric;
begin
  if p_per_second is null or p_per_second <= 0 then
    raise exception 'p_per_second must be positive' using errcode = '22023';
  end if;
  select r.next_free_at into v_next
    from amocrm.rate_limiter r where r.key = 'amocrm' for update;
  if not found then
    -- The row is created by this migration; if someone deleted it, recreate it rather
    -- than hand out unlimited slots.
    insert into amocrm.rate_limiter (key) values ('amocrm') on conflict (key) do nothing;
    select r.next_free_at into v_next from amocrm.rate_limiter r where r.key = 'amocrm' for update;
  end if;
  -- Read the clock only once the row lock is ours: a caller that queued behind others
  -- must measure its wait from when it gets its answer, not from when it started waiting
  -- (a stale clock overstates the wait and lets requests start closer than 1/rate).
  v_now  := clock_timestamp();
  v_slot := greatest(v_next, v_now);
  v_wait := extract(epoch from (v_slot - v_now)) * 1000;
  if v_wait > p_max_wait_ms then
    return jsonb_build_object('granted', false, 'wait_ms', ceil(v_wait));
  end if;
  update amocrm.rate_limiter r
     set next_free_at = v_slot + make_interval(secs => 1.0 / p_per_second)
   where r.key = 'amocrm';
  return jsonb_build_object('granted', true, 'wait_ms', ceil(v_wait));
end $$;

create or replace function public.amocrm_get_pipeline(p_pipeline_id bigint, p_max_age_seconds integer default 3600)
returns jsonb
language sql security definer set search_path = '' as $$
  select s.value from amocrm.system_settings s
   where s.key = 'pipeline:' || p_pipeline_id
     and s.updated_at > now() - make_interval(secs => p_max_age_seconds)
$$;

create or replace function public.amocrm_put_pipeline(p_pipeline_id bigint, p_value jsonb)
returns jsonb
language sql security definer set search_path = '' as $$
  insert into amocrm.system_settings as t (key, value) values ('pipeline:' || p_pipeline_id, p_value)
  on conflict (key) do update set value = excluded.value, updated_at = now()
  returning jsonb_build_object('stored', true)
$$;

-- ---------------------------------------------------------------------------
-- Grants: functions are executable by PUBLIC by default. Only service_role may call the
-- public.amocrm_* functions; nobody but their owner calls the internal amocrm.* ones.
-- Every migration of this integration ends by calling this, so no later function is
-- left open by accident.
-- ---------------------------------------------------------------------------
create or replace function amocrm.lock_down_functions() returns void
language plpgsql set search_path = '' as $$
declare
  f record;
begin
  for f in
    select p.oid::regprocedure as sig, n.nspname = 'public' as rpc
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace
     where (n.nspname = 'public' and p.proname like 'amocrm\_%') or n.nspname = 'amocrm'
  loop
    execute format('revoke all on function %s from public, anon, authenticated', f.sig);
    if f.rpc then
      execute format('grant execute on function %s to service_role', f.sig);
    end if;
  end loop;
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
