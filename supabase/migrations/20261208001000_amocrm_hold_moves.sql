-- amocrm-lesson-sync, after 1.0.0: a move is not sent to a deal a manager closed after the
-- sync read it. amoCRM has no conditional update, so between the read and the PATCH a
-- manager's "won" or "lost" could be overwritten. Right before each PATCH the claims are
-- renewed (by amocrm_hold_events) and the mirror is asked: a deal its hooks say was
-- closed at or after the time the sync read it is left alone.

-- p_moves: [{event_id, lead_id, read_at (unix s: the deal's updated_at as the sync read it)}].
-- Answers held (event ids whose claims this holder still holds, renewed) and closed
-- ({event_id, closed: won|lost} whose deal the mirror knows closed since the read).
create or replace function public.amocrm_hold_moves(
  p_holder text, p_moves jsonb, p_lease_seconds integer default 90, p_drain_lease_seconds integer default 60)
returns jsonb
language sql security definer set search_path = '' as $$
  with m as (
    select x.event_id, x.lead_id, x.read_at
      from jsonb_to_recordset(coalesce(p_moves, '[]'::jsonb)) as x(event_id bigint, lead_id bigint, read_at double precision)),
  held as (
    select public.amocrm_hold_events(p_holder, (select array_agg(m.event_id) from m), p_lease_seconds, p_drain_lease_seconds) as r),
  closed as (
    select m.event_id, d.closed from m join amocrm.deals d on d.lead_id = m.lead_id
     where d.closed is not null and not d.deleted and d.modified_at >= to_timestamp(coalesce(m.read_at, 0)))
  select (select h.r from held h) || jsonb_build_object(
    'closed', coalesce((select jsonb_agg(jsonb_build_object('event_id', c.event_id, 'closed', c.closed) order by c.event_id) from closed c), '[]'::jsonb))
$$;

select amocrm.lock_down_functions();

-- PostgREST learns about the new function (ignored where nobody listens).
notify pgrst, 'reload schema';
