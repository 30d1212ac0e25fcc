-- amocrm-lesson-sync, the events feed always catches up: the scheduled run reads amoCRM's
-- events feed in a fixed, resumable window instead of from a cursor that stayed put when a
-- run was cut short (and so, once the window held more changes than one run reads, never
-- moved again). Holds amocrm_get_feed_window and amocrm_put_feed_window; the feed's lag
-- they report is also what the console's health view shows. Same rules as the earlier
-- migrations.
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
-- overlap re-reads it.
--
-- amocrm_get_feed_cursor / amocrm_put_feed_cursor (20261201000300) stay for code deployed
-- before this migration; nothing here calls them. Until the first window is stored, the
-- old cursor is where reading goes on from.

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

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
