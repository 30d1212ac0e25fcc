-- amocrm-lesson-sync, the drained total counts each event once. amocrm_end_drain's
-- p_drained is the caller's running total ("claimed by this drain so far"), and a drainer
-- that lingers calls it once per pass; 20261201000200 added the running total again on
-- every pass, so the console's "разобрано всего" (drainer.drained_total) grew by it each
-- time. Now the row remembers how much of which holder's running total it has counted,
-- and adds only the part not counted yet. Holds amocrm_end_drain (same arguments, same
-- answer) and two columns of amocrm.drainer. Same rules as the earlier migrations.

-- drained_counted: how much of drained_holder's running total drained_total already holds.
alter table amocrm.drainer add column if not exists drained_holder text;
alter table amocrm.drainer add column if not exists drained_counted bigint not null default 0;

-- Ends the drain unless lesson events are due, or will be within p_linger_ms (events given
-- back to wait for a slot or a pause): then the drainer goes on (and waits for them). The
-- row lock orders this against amocrm_route_event: an event handed to the drainer before
-- the end is seen here; one routed after it finds no drainer and is moved by its own webhook.
-- p_drained is what this holder has drained so far: only what it adds since its last call
-- is counted (a new holder's count starts at zero).
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
  if amocrm.due_lesson_events(greatest(p_linger_ms, 0)) then
    return jsonb_build_object('ended', false, 'held', true);
  end if;
  update amocrm.drainer t set holder = null, lease_until = null where t.key = 'drain';
  return jsonb_build_object('ended', true, 'held', true);
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
