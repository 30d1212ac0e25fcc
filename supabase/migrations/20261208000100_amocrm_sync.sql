-- amocrm-lesson-sync 1.0.0, the sync: the outbox of lesson events and the trigger that
-- fills it, claims and outcomes, the token store, the shared rate limiter, and the SQL
-- functions the Netlify functions call with supabase.rpc().
--
-- Migrations of 1.0.0, applied in order: this one (the sync), 20261208000200 (operations:
-- doctor, reconcile, replay, status), 20261208000300 (the drainer and look-ahead jobs),
-- 20261208000400 (the deal mirror: amoCRM's hooks and events feed), 20261208000500 (the
-- operator console). Released migrations never change: a change goes into a new migration
-- (supabase/migrations.sha256 lists the released ones). supabase/schema.sql shows the
-- database they make, each definition once (npm run schema).
--
-- Everything lives in schema `amocrm`, which is NOT in PostgREST's exposed schemas:
-- tokens and events cannot be reached over the Data API at all. The only doors are the
-- public.amocrm_* functions, executable by service_role alone. They are SECURITY DEFINER
-- with an empty search_path (every name schema-qualified), so service_role needs no
-- direct table access to use them; the table grants exist for operators who query the
-- outbox from the SQL editor or a service-role client.
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
--   lookahead_enabled true (the drainer migration)
--   events_feed_window / events_feed_cursor  where reading amoCRM's events feed stands
--                     (the mirror migration)
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
-- done_at: when the event's deal was first found in (or moved to) the lesson's stage. A
--   forced replay of a done event whose deal has since gone further must not turn it into
--   skipped: the move did happen. finish_event keeps such an event done (and says so in
--   its answer, which the invocation logs).
-- hold_until: a move of this event was sent and its answer never came (timeout, reset,
--   5xx): amoCRM may still apply it. Until then no other event of the student is claimed,
--   so no newer move can land before the late one. Never cleared: a retry that succeeds
--   does not stop the first request from landing late.
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
  done_at          timestamptz,
  hold_until       timestamptz,
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

-- ---------------------------------------------------------------------------
-- Shared limiter: every instance of every function takes its amoCRM request slot here.
-- ---------------------------------------------------------------------------
-- GCRA: next_free_at is the earliest time the next request may start. A slot is a promise
-- "start your request at T". A starved process or a slow network starts it late, and late
-- requests bunch up at amoCRM, which answers 429 and, when it keeps happening, blocks the
-- whole account with 403. Three rules keep the promise:
--   1. Reservations reach at most p_horizon_ms ahead (the functions pass 1 s; without it
--      the queue is unbounded up to p_max_wait_ms); a caller further back in the queue
--      is told to come back (granted=false, queued=true) instead of holding a slot it may
--      start long after the world has changed (a 429 pause, say).
--   2. The caller voids a slot it could not start on time and takes a new one (in
--      lib/amocrm/rate-limit.ts: the database cannot see when a request really left).
--   3. Any 429 pauses every instance (paused_until, honouring Retry-After) and halves
--      the shared rate (rate_factor, penalized_at); the rate then recovers linearly to
--      the full rate over 2 minutes. rate_limited_total counts the 429s.
-- recent_slots: the slots handed out in the last 2 s (ordinary, spare and priority ones),
--   which the token refresh counts (amocrm_take_rate_slot).
-- priority_next_at is no longer read or set (the refresh slot is counted instead).
create table if not exists amocrm.rate_limiter (
  key                text primary key,
  next_free_at       timestamptz not null default now(),
  paused_until       timestamptz,
  rate_factor        numeric not null default 1 check (rate_factor > 0 and rate_factor <= 1),
  penalized_at       timestamptz,
  priority_next_at   timestamptz,
  rate_limited_total bigint not null default 0,
  recent_slots       timestamptz[] not null default '{}'
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

-- ---------------------------------------------------------------------------
-- Claims and outcomes
-- ---------------------------------------------------------------------------
-- One student's events are processed one at a time, whoever claims them (webhook,
-- scheduled run, replay): a slow move of lesson 1 must never land after lesson 2's and
-- pull the deal back. A transaction-scoped advisory lock per student serializes the
-- claims themselves; a live lease on a sibling event, or a sibling's move whose answer
-- never came (hold_until), makes the claim wait its turn.
create or replace function amocrm.student_lock_key(p_user_id uuid) returns bigint
language sql immutable set search_path = '' as $$
  select hashtextextended(p_user_id::text, 4242)
$$;

create or replace function amocrm.student_busy(p_user_id uuid, p_except bigint) returns boolean
language sql stable set search_path = '' as $$
  select exists (select 1 from amocrm.sync_events o
                  where o.user_id = p_user_id and o.id <> p_except
                    and ((o.status = 'processing' and o.lease_until > now()) or o.hold_until > now()))
$$;

-- The claimed event as JSON (amocrm.event_json) is defined with the mirror
-- (20261208000400): it says whether the mirror knows the remembered deal to be closed.
-- The batch claim (amocrm_claim_due) and batch outcomes (amocrm_finish_events) are the
-- drainer's (20261208000300).
--
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

-- Records the outcome of a claimed event. Only the holder of a live claim may record it:
-- a lost or expired lease answers recorded=false (the event belongs to whoever claims it
-- next, who reads the deal afresh). p_outcome:
--   done | skipped       final; the deal found is remembered for the student's next lessons.
--                        A skipped event whose move already happened (done_at) stays done.
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

-- ---------------------------------------------------------------------------
-- What an invocation learns is kept the moment it is learned
-- ---------------------------------------------------------------------------
-- The deal found for a student by a search: stored before the move is even tried, so an
-- event deferred for want of a rate slot, retried or failed never pays the search again.
create or replace function public.amocrm_remember_lead(
  p_user_id uuid, p_lead_id bigint, p_contact_id bigint default null, p_email text default null)
returns jsonb
language sql security definer set search_path = '' as $$
  insert into amocrm.student_leads as l (user_id, email, lead_id, contact_id)
  values (p_user_id, p_email, p_lead_id, p_contact_id)
  on conflict (user_id) do update
     set lead_id = excluded.lead_id,
         contact_id = coalesce(excluded.contact_id, l.contact_id),
         email = coalesce(excluded.email, l.email),
         updated_at = now()
  returning jsonb_build_object('remembered', true)
$$;

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

-- The rate factor in force at p_now: the last penalty recovering by 1/240 per second
-- (0.5 → 1 in two minutes).
create or replace function amocrm.effective_rate_factor(r amocrm.rate_limiter, p_now timestamptz)
returns numeric
language sql immutable set search_path = '' as $$
  select least(1.0, r.rate_factor
               + coalesce(extract(epoch from (p_now - r.penalized_at)), 1e9)::numeric / 240.0)
$$;

-- The slots of the last 2 s with `p_slot` added, oldest first. Entries at or after
-- next_free_at that are not past cannot have been handed out (only a hand-set
-- next_free_at, as tests do, leaves them): they are dropped.
create or replace function amocrm.remember_slot(r amocrm.rate_limiter, p_now timestamptz, p_slot timestamptz)
returns timestamptz[]
language sql stable set search_path = '' as $$
  select coalesce(array_agg(s order by s), '{}')
    from (select s from unnest(r.recent_slots) s
           where s > p_now - interval '2 seconds' and (s <= p_now or s < r.next_free_at)
          union all select p_slot) x
$$;

-- The earliest time from p_from, before p_before, at which one more request keeps every
-- window of p_window holding at most p_cap slots, counting p_slots and the queue's future
-- slots (from p_queue_from, p_min_gap apart). Null: none before p_before.
create or replace function amocrm.counted_priority_slot(
  p_slots timestamptz[], p_from timestamptz, p_before timestamptz, p_queue_from timestamptz,
  p_min_gap interval, p_window interval, p_cap integer)
returns timestamptz
language plpgsql stable set search_path = '' as $$
declare
  v_at      timestamptz;
  v_others  timestamptz[];
  v_busiest bigint;
begin
  -- Candidates: now, and each moment a handed-out slot leaves the windows ending there
  -- (1 ms after, so callers that see whole milliseconds see it outside too).
  for v_at in
    select c from (select p_from as c
                   union select s + p_window + interval '1 millisecond' from unnest(p_slots) s) x
     where c >= p_from and c < p_before
     order by c
  loop
    -- Everything that may share a window with v_at.
    select coalesce(array_agg(o), '{}') into v_others
      from (select s as o from unnest(p_slots) s where s between v_at - p_window and v_at + p_window
            union all
            select p_queue_from + p_min_gap * k
              from generate_series(0, ceil(extract(epoch from (v_at + p_window - p_queue_from))
                                           / extract(epoch from p_min_gap))::integer) k
             where p_queue_from + p_min_gap * k <= v_at + p_window) y;
    -- The fullest window containing v_at ends at v_at or at one of the slots after it.
    select max((select count(*) from unnest(v_others) o where o between q - p_window and q))
      into v_busiest
      from (select v_at as q union all select o from unnest(v_others) o where o > v_at and o <= v_at + p_window) w;
    if coalesce(v_busiest, 0) < p_cap then
      return v_at;
    end if;
  end loop;
  return null;
end $$;

-- Reserves the next amoCRM request slot for whoever calls, across all instances.
-- granted=true: start the request after wait_ms. granted=false: the queue is longer than
-- p_max_wait_ms, or (queued=true) the slot is beyond p_horizon_ms: nothing was reserved,
-- come back later.
--
-- The token refresh goes ahead of the queue (p_priority): a starved refresh would stall
-- every request behind it. Its slot is counted: the limiter reserves up to 1 s ahead at
-- 6/s and a start may be up to 60 ms late (voided beyond that, lib/amocrm/rate-limit.ts),
-- so a busy queue already fills a window of 1 s + 60 ms with 7 slots, amoCRM's limit. The
-- refresh takes the earliest time T from now such that every window of 1 s + 60 ms
-- containing T holds at most 6 other slots: those handed out (recent_slots), and the ones
-- the queue will still be given (from next_free_at, pushed back by one slot, assumed back
-- to back at the full rate). When nothing is reserved that is now; when a full second is
-- reserved it is the first time free of them, at the latest next_free_at, which is still
-- ahead of every request waiting without a slot (beyond the horizon). It respects the
-- pause and the caller's patience, like any slot.
create or replace function public.amocrm_take_rate_slot(
  p_per_second numeric default 6, p_max_wait_ms integer default 2000,
  p_priority boolean default false, p_horizon_ms integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r        amocrm.rate_limiter;
  v_now    timestamptz;
  v_rate   numeric;
  v_gap    interval;
  v_start  timestamptz;
  v_slot   timestamptz;
  v_wait   numeric;
begin
  if p_per_second is null or p_per_second <= 0 then
    raise exception 'p_per_second must be positive' using errcode = '22023';
  end if;
  select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  if not found then
    -- The row is created by the first migration; if someone deleted it, recreate it
    -- rather than hand out unlimited slots.
    insert into amocrm.rate_limiter (key) values ('amocrm') on conflict (key) do nothing;
    select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  end if;
  -- The clock is read once the row lock is ours: a caller that queued behind others
  -- measures its wait from when it gets its answer.
  v_now   := clock_timestamp();
  v_rate  := p_per_second * amocrm.effective_rate_factor(r, v_now);
  v_gap   := make_interval(secs => 1.0 / v_rate);
  v_start := greatest(v_now, coalesce(r.paused_until, v_now));
  v_slot  := greatest(v_start, r.next_free_at);

  if p_priority and v_start < r.next_free_at then
    -- Ahead of the queue, counted: 1 s + 60 ms (LATE_TOLERANCE_MS in rate-limit.ts) is the
    -- window a late start can squeeze into amoCRM's second; in it at most AMOCRM_MAX_RPS + 1
    -- slots (amoCRM's 7). The queue's own slots are assumed back to back at the full rate.
    v_slot := coalesce(
      amocrm.counted_priority_slot(
        (select coalesce(array_agg(s), '{}') from unnest(r.recent_slots) s where s < r.next_free_at),
        v_start, r.next_free_at, r.next_free_at + v_gap,
        make_interval(secs => 1.0 / p_per_second), interval '1060 milliseconds',
        least(7, floor(p_per_second)::integer + 1)),
      v_slot);
  end if;
  v_wait := extract(epoch from (v_slot - v_now)) * 1000;

  if v_wait > p_max_wait_ms then
    return jsonb_build_object('granted', false, 'queued', false, 'wait_ms', ceil(v_wait), 'rate', v_rate);
  end if;
  if not p_priority and p_horizon_ms is not null and v_wait > p_horizon_ms then
    -- Come back when the slot is within the horizon; nothing is reserved meanwhile.
    return jsonb_build_object('granted', false, 'queued', true, 'wait_ms', ceil(v_wait),
                              'retry_in_ms', ceil(v_wait - p_horizon_ms / 2.0), 'rate', v_rate);
  end if;

  -- A slot ahead of next_free_at (the refresh) pushes the queue back by one slot; any
  -- other slot is the queue's next one.
  update amocrm.rate_limiter t
     set next_free_at = greatest(t.next_free_at, v_slot) + v_gap,
         recent_slots = amocrm.remember_slot(r, v_now, v_slot)
   where t.key = 'amocrm';
  -- now_ms/slot_ms let the caller map the slot onto its own clock (see rate-limit.ts).
  return jsonb_build_object('granted', true, 'wait_ms', ceil(v_wait), 'rate', v_rate,
                            'now_ms', floor(extract(epoch from v_now) * 1000),
                            'slot_ms', floor(extract(epoch from v_slot) * 1000));
end $$;

-- amoCRM answered 429: every instance pauses (at least 1 s, or what amoCRM asked) and
-- the shared rate halves, once per second however many instances report the same storm.
create or replace function public.amocrm_report_rate_limited(p_retry_after_ms integer default null)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r       amocrm.rate_limiter;
  v_now   timestamptz := clock_timestamp();
  v_pause timestamptz;
  v_penalize boolean;
begin
  select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  if not found then
    return jsonb_build_object('paused_until', null);
  end if;
  v_pause := greatest(coalesce(r.paused_until, v_now),
                      v_now + make_interval(secs => greatest(coalesce(p_retry_after_ms, 0), 1000) / 1000.0));
  v_penalize := r.penalized_at is null or r.penalized_at < v_now - interval '1 second';
  update amocrm.rate_limiter t
     set paused_until = v_pause,
         next_free_at = greatest(t.next_free_at, v_pause),
         rate_factor = case when v_penalize
                            then greatest(0.25, amocrm.effective_rate_factor(r, v_now) / 2)
                            else t.rate_factor end,
         penalized_at = case when v_penalize then v_now else t.penalized_at end,
         rate_limited_total = t.rate_limited_total + 1
   where t.key = 'amocrm'
  returning * into r;
  return jsonb_build_object('paused_until', r.paused_until, 'rate_factor', r.rate_factor,
                            'rate_limited_total', r.rate_limited_total);
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
