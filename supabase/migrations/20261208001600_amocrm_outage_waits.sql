-- amocrm-lesson-sync, after 1.0.0: alerts that end only when their condition is really over.
-- The facts (as in 20261208000800) also say which alerts are open and since when
-- ('open': {key: started_at}) and how many events wait however young ('waiting_any'), so the
-- conditions (lib/alerts/conditions.ts) can hold an open alert until the evidence of its end:
-- hook_silent until a hook delivery arrives (a quiet spell in the feed is not a hook), and
-- events_waiting until no event waits (a younger one still waiting is the same outage).
-- Events that wait for amoCRM itself no longer go dead (lib/sync/outcome.ts, no SQL), so
-- events_waiting no longer ends while amoCRM is still down.

create or replace function public.amocrm_alert_facts()
returns jsonb
language sql stable security definer set search_path = '' as $$
  with st as (select coalesce((select s.value from amocrm.system_settings s where s.key = 'alert_settings'), '{}'::jsonb) as v),
  waiting as (
    select count(*) as n, count(distinct e.user_id) as students, min(e.created_at) as oldest
      from amocrm.sync_events e, st
     where e.status in ('pending', 'failed', 'processing') and (e.status <> 'failed' or e.retryable)
       and e.created_at < now() - make_interval(mins => coalesce((st.v->>'waiting_minutes')::int, 30))),
  -- Every event waiting, however young: an events_waiting alert once open lasts until none is.
  waiting_any as (
    select count(*) as n, count(distinct e.user_id) as students, min(e.created_at) as oldest
      from amocrm.sync_events e
     where e.status in ('pending', 'failed', 'processing') and (e.status <> 'failed' or e.retryable)),
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
    'waiting_any', jsonb_build_object('count', wa.n, 'students', wa.students, 'oldest', wa.oldest),
    'students_waiting', aw.students,
    'parked', p.by_code,
    'dead', jsonb_build_object('count', d.n, 'students', d.students, 'since', d.since),
    'tokens', (select jsonb_build_object('auth_state', coalesce(t.auth_state, 'ok'), 'auth_problem', t.auth_problem, 'updated_at', t.updated_at) from tok t),
    'drainer', (select jsonb_build_object('started_at', r.started_at, 'last_woken_at', r.last_woken_at, 'ring_failed_at', r.ring_failed_at,
                                          'held', coalesce(r.lease_until > now(), false)) from amocrm.drainer r where r.key = 'drain'),
    'feed_lag_seconds', (select f.lag_seconds from feed f),
    'hook', (select jsonb_build_object('last_delivery_at', h.last_delivery_at, 'feed_changes', h.feed_changes) from hook h),
    'database_bytes', pg_database_size(current_database()),
    'open', (select coalesce(jsonb_object_agg(a.key, a.started_at), '{}'::jsonb) from amocrm.alerts a where a.ended_at is null),
    'now', now())
  from st, waiting w, waiting_any wa, all_waiting aw, parked p, dead d
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the change (ignored where nobody listens).
notify pgrst, 'reload schema';
