-- What a Supabase project already has before our migrations run, for the embedded
-- default and the tests: Supabase's roles, a minimal auth.users, and the academy's
-- learning tables (lessons, modules, lesson_progress) as the platform has them.
-- Never applied to a real Supabase project.

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
end $$;

create schema if not exists auth;
create table if not exists auth.users (
  id         uuid primary key default gen_random_uuid(),
  email      text unique,
  created_at timestamptz not null default now()
);
-- auth.uid() as Supabase defines it: the JWT's subject, set per request by PostgREST.
create or replace function auth.uid() returns uuid language sql stable as $$
  select nullif(current_setting('request.jwt.claim.sub', true), '')::uuid
$$;
grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.uid() to anon, authenticated, service_role;

create table if not exists public.modules (
  id          integer primary key,
  title       text not null,
  is_archived boolean not null default false
);
create table if not exists public.lessons (
  id          integer primary key,
  module_id   integer references public.modules (id),
  title       text not null,
  is_archived boolean not null default false
);
create table if not exists public.lesson_progress (
  id           uuid primary key default gen_random_uuid(),
  user_id      uuid not null references auth.users (id),
  lesson_id    integer not null references public.lessons (id),
  is_completed boolean not null default true,
  completed_at timestamptz default now(),
  created_at   timestamptz not null default now()
);

-- Students write their own progress through the API, under RLS.
alter table public.lesson_progress enable row level security;
alter table public.lessons enable row level security;
alter table public.modules enable row level security;
drop policy if exists own_progress on public.lesson_progress;
create policy own_progress on public.lesson_progress
  for all to authenticated using (user_id = auth.uid()) with check (user_id = auth.uid());
drop policy if exists read_lessons on public.lessons;
create policy read_lessons on public.lessons for select to authenticated using (true);
drop policy if exists read_modules on public.modules;
create policy read_modules on public.modules for select to authenticated using (true);
grant select, insert, update on public.lesson_progress to authenticated, service_role;
grant select on public.lessons, public.modules to authenticated, service_role;

insert into public.modules (id, title) values (12, 'Tripwire: первые шаги в AI') on conflict do nothing;
insert into public.lessons (id, module_id, title) values
  (66, 12, 'Вводный урок'),
  (67, 12, 'Урок 1. Что умеет AI'),
  (68, 12, 'Урок 2. Первый ассистент'),
  (69, 12, 'Урок 3. Автоматизация'),
  (70, 12, 'Бонус')
on conflict do nothing;
