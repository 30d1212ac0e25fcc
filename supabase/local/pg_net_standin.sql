-- A stand-in for the pg_net extension (not available in PGlite or Debian's PostgreSQL):
-- the same net.http_post signature, and the same behaviour that matters here: it only
-- queues the request in net.http_request_queue and returns an id, never touching the
-- network inside the caller's transaction. The embedded runner's worker sends queued
-- requests after commit, as pg_net's background worker does, and never retries.
create schema if not exists net;
create table if not exists net.http_request_queue (
  id           bigserial primary key,
  method       text not null,
  url          text not null,
  headers      jsonb not null,
  body         bytea,
  timeout_milliseconds integer not null,
  created_at   timestamptz not null default now()
);
create table if not exists net._http_response (
  id           bigint primary key,
  status_code  integer,
  content      text,
  timed_out    boolean,
  error_msg    text,
  created      timestamptz not null default now()
);
create or replace function net.http_post(
  url text, body jsonb default '{}'::jsonb, params jsonb default '{}'::jsonb,
  headers jsonb default '{"Content-Type": "application/json"}'::jsonb,
  timeout_milliseconds integer default 5000)
returns bigint language sql volatile as $$
  insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
  values ('POST', url, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds)
  returning id
$$;
