-- A drainer that hands over (out of budget, or on an error) counts what it drained, as
-- one that ends does: "разобрано всего" is every event a drainer claimed, counted once.
-- Without it, a long burst showed only its last drainer's share.

drop function if exists public.amocrm_release_drain(text);

-- As in 20261208000900, and: p_drained is this holder's running total, counted the way
-- amocrm_end_drain counts it (only what it adds since its last report).
create or replace function public.amocrm_release_drain(p_holder text, p_drained integer default 0)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  d amocrm.drainer;
  v_counted bigint;
  v_released boolean := false;
begin
  select * into d from amocrm.drainer t where t.key = 'drain' for update;
  if d.holder = p_holder then
    v_counted := case when d.drained_holder = p_holder then d.drained_counted else 0 end;
    update amocrm.drainer t
       set holder = null, lease_until = null,
           drained_total = t.drained_total + greatest(greatest(p_drained, 0) - v_counted, 0),
           drained_holder = p_holder,
           drained_counted = greatest(greatest(p_drained, 0), v_counted)
     where t.key = 'drain';
    v_released := true;
  end if;
  return jsonb_build_object('released', v_released,
                            'due', amocrm.due_lesson_events() or amocrm.due_lookahead_jobs()
                                   or not pg_try_advisory_xact_lock(amocrm.quiet_lock_key()));
end $$;

select amocrm.lock_down_functions();

notify pgrst, 'reload schema';
