-- amocrm-lesson-sync, after 1.0.0: every real change of a deal reaches the platform once,
-- in whatever order amoCRM's hooks and feed bring them. A change older than what the
-- mirror holds (the feed brings a deal's changes newest first; a hook comes late) used to
-- go into the history only, so the platform never heard of it.

create or replace function amocrm.apply_lead_change(p_change jsonb, p_source text, p_pipeline_id bigint)
returns jsonb
language plpgsql security definer set search_path = '' as $$
declare
  v_lead      bigint := (p_change->>'lead_id')::bigint;
  v_action    text := coalesce(p_change->>'action', 'update');
  v_at        timestamptz := coalesce(to_timestamp((p_change->>'modified_at')::double precision), now());
  v_by        bigint := (p_change->>'modified_by')::bigint;
  m           amocrm.deals;
  v_known     boolean;
  v_pipeline  bigint;
  v_status    bigint;
  v_old_pipe  bigint;
  v_old_stat  bigint;
  v_user      uuid;
  v_kind      text;
  v_new       boolean;
begin
  if v_lead is null then
    return jsonb_build_object('applied', false, 'reason', 'no_lead_id');
  end if;
  perform pg_advisory_xact_lock(hashtextextended('amocrm.deal:' || v_lead, 0));
  select * into m from amocrm.deals d where d.lead_id = v_lead;
  v_known := found;
  select l.user_id into v_user from amocrm.student_leads l where l.lead_id = v_lead limit 1;
  v_pipeline := coalesce((p_change->>'pipeline_id')::bigint, m.pipeline_id);
  v_status   := coalesce((p_change->>'status_id')::bigint, m.status_id);
  v_old_pipe := coalesce((p_change->>'old_pipeline_id')::bigint, m.pipeline_id);
  v_old_stat := coalesce((p_change->>'old_status_id')::bigint, m.status_id);

  -- Only the deals that matter: known students', the Tripwire pipeline's, or mirrored.
  if not v_known and v_user is null and v_pipeline is distinct from p_pipeline_id and v_old_pipe is distinct from p_pipeline_id then
    return jsonb_build_object('applied', false, 'reason', 'not_relevant', 'lead_id', v_lead);
  end if;

  if v_action = 'delete' then
    if v_known and m.deleted then
      return jsonb_build_object('applied', false, 'reason', 'duplicate', 'lead_id', v_lead);
    end if;
    insert into amocrm.deals as d (lead_id, pipeline_id, status_id, deleted, modified_at, modified_by, source)
    values (v_lead, v_pipeline, v_status, true, v_at, v_by, p_source)
    on conflict (lead_id) do update set deleted = true, modified_at = greatest(d.modified_at, excluded.modified_at),
      modified_by = excluded.modified_by, source = excluded.source, updated_at = now();
    insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, changed_at, changed_by, source)
    values (v_lead, v_user, 'deleted', v_pipeline, v_status, v_at, v_by, p_source);
    -- The student's remembered deal follows: their next lesson searches afresh.
    delete from amocrm.student_leads l where l.lead_id = v_lead;
    return jsonb_build_object('applied', true, 'kind', 'deleted', 'lead_id', v_lead, 'user_id', v_user);
  end if;

  -- Is this a stage change? Known from the delivery (old_* fields, a status hook) or from
  -- the mirror. One already in the history (a duplicate delivery, or the feed repeating a
  -- hook: their timestamps may differ by a second or two) is recorded once.
  v_new := v_status is not null
    and ((p_change ? 'old_status_id' and v_old_stat is distinct from v_status)
         or (p_change ? 'old_pipeline_id' and v_old_pipe is distinct from v_pipeline)
         or (v_known and (m.status_id is distinct from v_status or m.pipeline_id is distinct from v_pipeline))
         or (not v_known and v_action = 'status'))
    and not exists (select 1 from amocrm.deal_stage_history h
                     where h.lead_id = v_lead and h.pipeline_id is not distinct from v_pipeline
                       and h.status_id is not distinct from v_status
                       and h.changed_at between v_at - interval '5 seconds' and v_at + interval '5 seconds');
  if v_new then
    insert into amocrm.deal_stage_history (lead_id, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
    values (v_lead, v_pipeline, v_status, v_old_pipe, v_old_stat, v_at, v_by, p_source);
  end if;

  -- Older than what the mirror holds: the mirror keeps the newer state, but a change the
  -- delivery itself says happened (a status hook, or one that names the stage before) is
  -- still a real change, and reaches the platform once like any other. One that is a change
  -- only by comparison with the newer mirror is not evidence of one: history only.
  if v_known and m.modified_at is not null and m.modified_at > v_at then
    if v_new and (v_action = 'status' or p_change ? 'old_status_id' or p_change ? 'old_pipeline_id') then
      v_kind := case v_status when 142 then 'won' when 143 then 'lost' else 'stage_changed' end;
      insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
      values (v_lead, v_user, v_kind, v_pipeline, v_status, v_old_pipe, v_old_stat, v_at, v_by, p_source);
    end if;
    return jsonb_build_object('applied', false, 'reason', 'older', 'lead_id', v_lead, 'history', v_new,
                              'kind', v_kind, 'user_id', v_user, 'pipeline_id', v_pipeline, 'status_id', v_status, 'changed', v_kind is not null);
  end if;

  insert into amocrm.deals as d (lead_id, pipeline_id, status_id, closed, deleted, name, modified_at, modified_by, source)
  values (v_lead, v_pipeline, v_status,
          case v_status when 142 then 'won' when 143 then 'lost' end, false,
          left(p_change->>'name', 500), v_at, v_by, p_source)
  on conflict (lead_id) do update set pipeline_id = excluded.pipeline_id, status_id = excluded.status_id,
    closed = excluded.closed, deleted = false, name = coalesce(excluded.name, d.name),
    modified_at = excluded.modified_at, modified_by = excluded.modified_by, source = excluded.source, updated_at = now();

  if v_new then
    v_kind := case v_status when 142 then 'won' when 143 then 'lost' else 'stage_changed' end;
    insert into amocrm.deal_changes (lead_id, user_id, kind, pipeline_id, status_id, old_pipeline_id, old_status_id, changed_at, changed_by, source)
    values (v_lead, v_user, v_kind, v_pipeline, v_status, v_old_pipe, v_old_stat, v_at, v_by, p_source);
  end if;
  -- A deal moved out of the Tripwire pipeline is no longer the student's Tripwire deal.
  if v_pipeline is distinct from p_pipeline_id then
    delete from amocrm.student_leads l where l.lead_id = v_lead;
  end if;
  return jsonb_build_object('applied', true, 'kind', v_kind, 'lead_id', v_lead, 'user_id', v_user,
                            'pipeline_id', v_pipeline, 'status_id', v_status, 'changed', v_new);
end $$;

select amocrm.lock_down_functions();

-- PostgREST learns about the change (ignored where nobody listens).
notify pgrst, 'reload schema';
