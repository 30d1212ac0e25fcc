-- amocrm-lesson-sync, after 1.0.0: alerts (issue 17, item 2). The scheduled run reads the
-- facts below, decides which conditions hold (lib/alerts/conditions.ts), and this
-- migration's state machine says which of them to announce: once when a condition starts,
-- again every remind_every_minutes while it lasts, once when it is over. A burst of a
-- thousand failures is one condition, so one alert.
--
-- Thresholds and cadence in amocrm.system_settings under 'alert_settings' (defaults below;
-- change a value with an update of that row, no deploy needed):
--   remind_every_minutes   360  a condition that lasts is told again this often
--   waiting_minutes         30  events waiting longer than this (pending or retrying)
--   drainer_start_minutes   10  the drainer rung but not started for this long
--   feed_lag_minutes       180  amoCRM's events feed read this far behind
--   hook_silent_minutes    180  no hook delivery for this long while the feed brings changes
--   hook_silent_changes      3  ... at least this many of them
--   storage_limit_mb       500  the database's size limit (Supabase Free: 500 MB)
--   storage_near_percent    80  alert at this share of the limit

create table if not exists amocrm.alerts (
  key          text primary key,
  started_at   timestamptz not null,
  last_sent_at timestamptz not null,
  ended_at     timestamptz,
  affected     integer,
  detail       jsonb,
  sent_count   integer not null default 1
);
alter table amocrm.alerts enable row level security;
revoke all on amocrm.alerts from public, anon, authenticated;
grant select, insert, update, delete on amocrm.alerts to service_role;

insert into amocrm.system_settings (key, value)
values ('alert_settings', '{"remind_every_minutes": 360, "waiting_minutes": 30, "drainer_start_minutes": 10,
         "feed_lag_minutes": 180, "hook_silent_minutes": 180, "hook_silent_changes": 3,
         "storage_limit_mb": 500, "storage_near_percent": 80}'::jsonb)
on conflict (key) do nothing;

-- The facts the conditions are decided from, in one read. Never a secret.
create or replace function public.amocrm_alert_facts()
returns jsonb
language sql stable security definer set search_path = '' as $$
  with st as (select coalesce((select s.value from amocrm.system_settings s where s.key = 'alert_settings'), '{}'::jsonb) as v),
  waiting as (
    select count(*) as n, count(distinct e.user_id) as students, min(e.created_at) as oldest
      from amocrm.sync_events e, st
     where e.status in ('pending', 'failed', 'processing') and (e.status <> 'failed' or e.retryable)
       and e.created_at < now() - make_interval(mins => coalesce((st.v->>'waiting_minutes')::int, 30))),
  all_waiting as (
    select count(distinct e.user_id) as students from amocrm.sync_events e
     where e.status in ('pending', 'failed', 'processing', 'parked') and (e.status <> 'failed' or e.retryable)),
  parked as (
    select coalesce(jsonb_object_agg(p.code, jsonb_build_object('count', p.n, 'students', p.students, 'since', p.since)), '{}'::jsonb) as by_code
      from (select coalesce(e.last_error_code, 'unknown') as code, count(*) as n, count(distinct e.user_id) as students, min(e.updated_at) as since
              from amocrm.sync_events e where e.status = 'parked' group by 1) p),
  dead as (
    select count(*) as n, count(distinct e.user_id) as students, min(e.updated_at) as since
      from amocrm.sync_events e where e.status = 'dead'),
  tok as (
    select s.value->>'auth_state' as auth_state, s.value->>'auth_problem' as auth_problem, s.updated_at
      from amocrm.system_settings s where s.key = 'amocrm_tokens'),
  feed as (
    select greatest(0, floor(extract(epoch from now()))::bigint
                    - coalesce((s.value->>'read_through')::bigint, (s.value->>'from')::bigint)) as lag_seconds
      from amocrm.system_settings s where s.key = 'events_feed_window'),
  hook as (
    select (select max(d.received_at) from amocrm.crm_deliveries d) as last_delivery_at,
           (select count(*) from amocrm.deal_changes c, st
             where c.source = 'feed'
               and c.created_at > now() - make_interval(mins => coalesce((st.v->>'hook_silent_minutes')::int, 180))) as feed_changes)
  select jsonb_build_object(
    'settings', st.v,
    'waiting', jsonb_build_object('count', w.n, 'students', w.students, 'oldest', w.oldest),
    'students_waiting', aw.students,
    'parked', p.by_code,
    'dead', jsonb_build_object('count', d.n, 'students', d.students, 'since', d.since),
    'tokens', (select jsonb_build_object('auth_state', coalesce(t.auth_state, 'ok'), 'auth_problem', t.auth_problem, 'updated_at', t.updated_at) from tok t),
    'drainer', (select jsonb_build_object('started_at', r.started_at, 'last_woken_at', r.last_woken_at, 'ring_failed_at', r.ring_failed_at,
                                          'held', coalesce(r.lease_until > now(), false)) from amocrm.drainer r where r.key = 'drain'),
    'feed_lag_seconds', (select f.lag_seconds from feed f),
    'hook', (select jsonb_build_object('last_delivery_at', h.last_delivery_at, 'feed_changes', h.feed_changes) from hook h),
    'database_bytes', pg_database_size(current_database()),
    'now', now())
  from st, waiting w, all_waiting aw, parked p, dead d
$$;

-- The state machine. p_active: the conditions that hold now, [{key, since, affected,
-- detail}]. Answers what to announce: {alerts: [{key, state: started|reminder|ended,
-- started_at, affected, detail}]}. One caller at a time (two scheduled runs at once
-- announce each change once): a condition not yet open (or over) starts; an open one
-- is reminded when remind_every_minutes passed since it was last told; an open one no
-- longer in p_active ends. Announced means handed to the caller: a channel that fails
-- is not retried before the next reminder (an alert storm is worse than a lost alert,
-- and the log says the channel failed).
create or replace function public.amocrm_alert_transitions(p_active jsonb)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_remind interval;
  c        jsonb;
  a        amocrm.alerts;
  v_out    jsonb := '[]'::jsonb;
  v_keys   text[] := '{}'::text[];
  v_since  timestamptz;
begin
  perform pg_advisory_xact_lock(hashtextextended('amocrm.alerts', 0));
  select make_interval(mins => coalesce((s.value->>'remind_every_minutes')::int, 360)) into v_remind
    from amocrm.system_settings s where s.key = 'alert_settings';
  v_remind := coalesce(v_remind, interval '6 hours');
  for c in select * from jsonb_array_elements(coalesce(p_active, '[]'::jsonb)) loop
    v_keys := v_keys || (c->>'key');
    v_since := least(now(), coalesce((c->>'since')::timestamptz, now()));
    select * into a from amocrm.alerts t where t.key = c->>'key' for update;
    if not found or a.ended_at is not null then
      insert into amocrm.alerts as t (key, started_at, last_sent_at, ended_at, affected, detail, sent_count)
      values (c->>'key', v_since, now(), null, (c->>'affected')::int, c->'detail', 1)
      on conflict (key) do update set started_at = excluded.started_at, last_sent_at = now(), ended_at = null,
        affected = excluded.affected, detail = excluded.detail, sent_count = 1;
      v_out := v_out || jsonb_build_array(jsonb_build_object('key', c->>'key', 'state', 'started', 'started_at', v_since,
                                                             'affected', (c->>'affected')::int, 'detail', c->'detail'));
    elsif a.last_sent_at <= now() - v_remind then
      update amocrm.alerts t set last_sent_at = now(), affected = (c->>'affected')::int, detail = c->'detail', sent_count = t.sent_count + 1
       where t.key = a.key;
      v_out := v_out || jsonb_build_array(jsonb_build_object('key', a.key, 'state', 'reminder', 'started_at', a.started_at,
                                                             'affected', (c->>'affected')::int, 'detail', c->'detail'));
    else
      update amocrm.alerts t set affected = (c->>'affected')::int, detail = c->'detail' where t.key = a.key;
    end if;
  end loop;
  for a in select * from amocrm.alerts t where t.ended_at is null and not (t.key = any (v_keys)) for update loop
    update amocrm.alerts t set ended_at = now(), last_sent_at = now() where t.key = a.key;
    v_out := v_out || jsonb_build_array(jsonb_build_object('key', a.key, 'state', 'ended', 'started_at', a.started_at,
                                                           'affected', a.affected, 'detail', a.detail));
  end loop;
  return jsonb_build_object('alerts', v_out);
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the change (ignored where nobody listens).
notify pgrst, 'reload schema';
