-- amocrm-lesson-sync, issue 17 item 4: the trigger stays quiet while a drainer holds the
-- queue. A webinar of 10,000 completions used to ring 10,000 webhooks (10,000 function
-- invocations, 10,000 pg_net requests) while the drainer already worked the queue, and
-- each webhook only handed its event to it. Now, while a drainer holds the lease, a
-- completion costs its outbox row alone: the event is made due at once (the drainer claims
-- due events) and nothing is rung. Once the drain ends the trigger rings again.
--
-- Nothing is lost at the boundary. The trigger reads amocrm.drainer without a lock (the
-- student's INSERT never waits on the drainer's row), but before it reads, it takes a
-- shared transaction-scoped advisory lock, without waiting: if it cannot have it (a
-- drainer is ending at this very moment), it rings as before. amocrm_end_drain ends the
-- drain only if it can take that lock exclusively, without waiting: while a quiet
-- completion is still uncommitted (its event invisible to the drainer), the drainer does
-- not end but looks again; once it has ended, a trigger sees no lease and rings. The
-- budget's release says a successor is needed in that case too. A drainer that is killed
-- leaves the trigger quiet until its lease expires (at most 60 s): those events are due at
-- once, for the next drainer or the scheduled run (every 2 minutes), the backstop.

-- The key of the lock between quiet completions (shared) and a drain's end (exclusive).
create or replace function amocrm.quiet_lock_key() returns bigint
language sql immutable set search_path = '' as $$
  select 7020389867052674673::bigint -- 'amocrm.q' as eight bytes: a key of its own
$$;

-- Whether this completion may stay quiet: a drainer holds the lease, and no drain is ending
-- right now. Never waits; the shared lock, taken only while a drainer holds the lease, is
-- held to the student's commit.
create or replace function amocrm.drain_takes_completions() returns boolean
language plpgsql security definer set search_path = '' as $$
begin
  -- Nobody drains (most completions): ring, and take no lock at all.
  if not coalesce((select d.lease_until >= now() from amocrm.drainer d where d.key = 'drain'), false) then
    return false;
  end if;
  -- A drain is ending right now: ring.
  if not pg_try_advisory_xact_lock_shared(amocrm.quiet_lock_key()) then
    return false;
  end if;
  -- Read again under the lock: a drain that ended in between is seen here.
  return coalesce((select d.lease_until >= now() from amocrm.drainer d where d.key = 'drain'), false);
end $$;

-- The trigger: as in 20261208000100, but while a drainer holds the queue the event is left
-- to it, due now, and no webhook is rung.
create or replace function amocrm.on_lesson_progress() returns trigger
language plpgsql security definer set search_path = '' as $$
declare
  v_new jsonb := to_jsonb(new);
  v_old jsonb := case when tg_op = 'UPDATE' then to_jsonb(old) end;
  v_event record;
  v_quiet boolean := false;
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
      v_quiet := amocrm.drain_takes_completions();
      if v_quiet then
        update amocrm.sync_events s set next_attempt_at = least(s.next_attempt_at, now())
         where s.id = v_event.event_id and s.status = 'pending';
      end if;
    exception when others then
      v_quiet := false; -- in doubt, ring
    end;
    if v_quiet then
      return null;
    end if;
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

-- As in 20261208000300, and: a drain does not end while a quiet completion is uncommitted
-- (the exclusive lock is not free): the drainer looks again.
create or replace function public.amocrm_end_drain(p_holder text, p_drained integer default 0, p_linger_ms integer default 0)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d amocrm.drainer;
  v_counted bigint;
begin
  select * into d from amocrm.drainer t where t.key = 'drain' for update;
  if d.holder is distinct from p_holder then
    return jsonb_build_object('ended', true, 'held', false);
  end if;
  v_counted := case when d.drained_holder = p_holder then d.drained_counted else 0 end;
  update amocrm.drainer t
     set drained_total = t.drained_total + greatest(greatest(p_drained, 0) - v_counted, 0),
         drained_holder = p_holder,
         drained_counted = greatest(greatest(p_drained, 0), v_counted)
   where t.key = 'drain';
  if amocrm.due_lesson_events(greatest(p_linger_ms, 0))
     or not pg_try_advisory_xact_lock(amocrm.quiet_lock_key()) then
    return jsonb_build_object('ended', false, 'held', true);
  end if;
  update amocrm.drainer t set holder = null, lease_until = null where t.key = 'drain';
  return jsonb_build_object('ended', true, 'held', true);
end $$;

-- As in 20261208000300, and: a quiet completion still uncommitted wants a successor too.
create or replace function public.amocrm_release_drain(p_holder text)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_released boolean;
begin
  update amocrm.drainer t set holder = null, lease_until = null
   where t.key = 'drain' and t.holder = p_holder;
  v_released := found;
  return jsonb_build_object('released', v_released,
                            'due', amocrm.due_lesson_events() or amocrm.due_lookahead_jobs()
                                   or not pg_try_advisory_xact_lock(amocrm.quiet_lock_key()));
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
