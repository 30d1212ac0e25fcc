-- amocrm-lesson-sync, the mirror's order for hooks without a time: amoCRM sends some status
-- hooks in a short form (id, status_id, pipeline_id, old_status_id, old_pipeline_id), with
-- no modification time. Applied with now(), a redelivery more than 5 s later was a second
-- change (a second 'won' granted the course twice), and two of them applied in reverse
-- order left the mirror on the older state. Now such a change is never applied with a
-- guessed time: the applier claims its delivery, reads the deal from amoCRM (status,
-- pipeline, updated_at), and applies what amoCRM holds now, as of amoCRM's own time. A
-- delivery whose deal could not be read stays pending for the next applier.
-- Same rules as the earlier migrations.

-- resolve_holder/resolve_until: the applier that is reading this delivery's deals from
-- amoCRM, and until when. Others leave the delivery to it (one read, not one per applier);
-- an applier that died loses it when the time is up.
alter table amocrm.crm_deliveries add column if not exists resolve_holder text;
alter table amocrm.crm_deliveries add column if not exists resolve_until timestamptz;

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

-- The applier's calls now name themselves (p_holder) and pass the deals they read
-- (p_leads: {"<lead_id>": {pipeline_id, status_id, modified_at, modified_by, name}}).
drop function if exists public.amocrm_apply_deliveries(bigint, integer);

-- Applies pending deliveries, oldest first; SKIP LOCKED lets several appliers share them.
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

select amocrm.lock_down_functions();

-- PostgREST learns about the new functions (ignored where nobody listens).
notify pgrst, 'reload schema';
