-- amocrm-lesson-sync, the refresh slot is counted: the token refresh still goes ahead of
-- the queue, but it takes a slot that keeps amoCRM's 7 requests in any second.
-- Same rules as the earlier migrations: SECURITY DEFINER, empty search_path, executable
-- by service_role only (the lock-down call at the end).
--
-- Before: a priority request (the refresh) was granted "now" whatever was reserved. The
-- limiter reserves up to 1 s ahead at 6/s, and a start may be up to 60 ms late (voided
-- beyond that, lib/amocrm/rate-limit.ts), so a busy queue already fills a window of
-- 1 s + 60 ms with 7 slots: the one amoCRM allows above 6/s is the late start's. The
-- refresh landed beside them as an 8th (4 instances, 20 students, a token amoCRM had
-- expired: one 429, issue item 8). Pushing next_free_at back by one slot moved only the
-- slots nobody held yet.
--
-- Now the limiter remembers the slots it handed out in the last 2 s (recent_slots: ordinary,
-- spare and priority ones). The refresh takes the earliest time T from now such that
-- every window of 1 s + 60 ms containing T holds at most 6 other slots: those handed out,
-- and the ones the queue will still be given (from next_free_at, pushed back by one slot,
-- assumed back to back at the full rate). When nothing is reserved that is now; when a
-- full second is reserved it is the first time free of them, at the latest next_free_at,
-- which is still ahead of every request waiting without a slot (beyond the horizon). It
-- respects the pause and the caller's patience, like any slot. Counted, a refresh needs no
-- separate "one priority start per second" rule: priority_next_at is no longer read or set.

alter table amocrm.rate_limiter
  add column if not exists recent_slots timestamptz[] not null default '{}';

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

-- Look-ahead requests: as in 20261201000200_amocrm_drain.sql, and their slots are
-- remembered too (a refresh must not land beside a second of look-ahead requests).
create or replace function public.amocrm_take_spare_slot(p_per_second numeric default 6)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  r      amocrm.rate_limiter;
  v_now  timestamptz;
  v_rate numeric;
  v_gap  interval;
  v_slot timestamptz;
begin
  if p_per_second is null or p_per_second <= 0 then
    raise exception 'p_per_second must be positive' using errcode = '22023';
  end if;
  select * into r from amocrm.rate_limiter t where t.key = 'amocrm' for update;
  if not found then
    return jsonb_build_object('granted', false);
  end if;
  v_now  := clock_timestamp();
  v_rate := p_per_second * amocrm.effective_rate_factor(r, v_now);
  v_gap  := make_interval(secs => 1.0 / v_rate);
  v_slot := greatest(v_now, r.next_free_at);
  if v_slot > v_now + v_gap or coalesce(r.paused_until, v_now) > v_now
     or amocrm.due_lesson_events()
     or exists (select 1 from amocrm.sync_events s where s.status = 'processing' and s.lease_until >= now()) then
    return jsonb_build_object('granted', false);
  end if;
  update amocrm.rate_limiter t
     set next_free_at = v_slot + v_gap,
         recent_slots = amocrm.remember_slot(r, v_now, v_slot)
   where t.key = 'amocrm';
  return jsonb_build_object('granted', true, 'wait_ms', ceil(extract(epoch from (v_slot - v_now)) * 1000), 'rate', v_rate,
                            'now_ms', floor(extract(epoch from v_now) * 1000),
                            'slot_ms', floor(extract(epoch from v_slot) * 1000));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
