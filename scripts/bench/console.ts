// The operator console at scale: 1,000,000 events in the outbox (30 days of them, with
// their attempts, deals and changes), then every console read timed (median of 5 after a
// warm-up). Target: every request ≤ 300 ms on PostgreSQL 15.
import { openStackDatabase } from '../../dev/stack/index.ts';
import { consoleEvent, consoleEvents, consoleFunnel, consoleHealth, consoleStudent } from '../../lib/db/console.ts';

export interface ConsoleFigure { view: string; medianMs: number; worstMs: number }

export async function measureConsole(opts: { databaseUrl?: string; events?: number; log?: (line: string) => void } = {}): Promise<{ events: number; seedSeconds: number; figures: ConsoleFigure[] }> {
  const events = opts.events ?? 1_000_000;
  const log = opts.log ?? (() => undefined);
  const database = await openStackDatabase({ serverUrl: opts.databaseUrl, connections: 2 });
  try {
    const seeded = performance.now();
    const students = Math.ceil(events / 3);
    await database.sql(`insert into auth.users (email) select 'console' || g || '@bench.kz' from generate_series(1, $1::int) g`, [students]);
    // Three lessons per student over the last 30 days; most done, a tail of every other status.
    // r1/r2 are per row (they reference the row), so each event gets its own time and status.
    await database.sql(`
      insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, status, attempts, last_error_code, last_error,
                                      lead_id, created_at, updated_at, done_at, next_attempt_at)
      select x.id, x.email, 66 + x.l, x.l, x.status, 1, x.code, case when x.code is not null then 'amoCRM: ' || x.code end,
             40000000 + x.n, x.at, x.at + interval '1 second',
             case when x.status = 'done' then x.at + interval '700 milliseconds' end, x.at
        from (select u.id, u.email, u.n, l, now() - ((random() + u.n * 0) * interval '30 days') as at,
                     case when r < 0.90 then 'done' when r < 0.95 then 'skipped' when r < 0.98 then 'failed' else 'dead' end as status,
                     case when r < 0.90 then null when r < 0.95 then 'would_move_backwards' when r < 0.98 then 'contact_not_found' else 'server_error' end as code
                from (select id, email, row_number() over (order by id) as n from auth.users where email like 'console%@bench.kz') u
                cross join generate_series(1, 3) l
                cross join lateral (select random() + u.n * 0 + l * 0 as r) rr
               limit $1) x`, [events]);
    await database.sql(`insert into amocrm.event_attempts (event_id, attempt, at, outcome, code, message)
                        select id, 1, updated_at, status, last_error_code, last_error from amocrm.sync_events`);
    await database.sql(`insert into amocrm.deal_changes (lead_id, user_id, kind, changed_at, source)
                        select lead_id, user_id, case when random() < 0.7 then 'won' else 'lost' end, created_at + interval '1 day', 'hook'
                          from amocrm.sync_events where stage_number = 3 and status = 'done' and random() < 0.2`);
    // As autovacuum would have it after a day: statistics and the visibility map (index-only scans).
    await database.sql('vacuum analyze amocrm.sync_events');
    await database.sql('vacuum analyze amocrm.event_attempts');
    await database.sql('vacuum analyze amocrm.deal_changes');
    const seedSeconds = (performance.now() - seeded) / 1000;
    const [{ n }] = (await database.sql('select count(*)::int as n from amocrm.sync_events')) as [{ n: number }];
    log(`  seeded ${n} events in ${seedSeconds.toFixed(0)} s`);

    const [sample] = await database.sql(`select id, email, user_id from amocrm.sync_events where status in ('dead', 'failed') order by id desc limit 1`);
    if (!sample) throw new Error('no failed event was seeded');
    const day = { from: new Date(Date.now() - 86_400_000).toISOString(), to: new Date().toISOString() };
    const week = { from: new Date(Date.now() - 7 * 86_400_000).toISOString(), to: new Date().toISOString() };
    const db = database.db;
    const views: [string, () => Promise<unknown>][] = [
      ['funnel, last 24 h', () => consoleFunnel(db, day)],
      ['funnel, last 7 days', () => consoleFunnel(db, week)],
      ['health, last 24 h by hour', () => consoleHealth(db, { ...day, bucket: 'hour' })],
      ['health, last 7 days by day', () => consoleHealth(db, { ...week, bucket: 'day' })],
      ['event list, newest 50', () => consoleEvents(db, { limit: 50 })],
      ['event list, status dead', () => consoleEvents(db, { status: 'dead', limit: 50 })],
      ['event list, code contact_not_found, lesson 68', () => consoleEvents(db, { code: 'contact_not_found', lesson: 68, limit: 50 })],
      ['event list, e-mail prefix', () => consoleEvents(db, { q: String(sample!.email).slice(0, 10), limit: 50 })],
      ['event list, page 100 (cursor)', () => consoleEvents(db, { beforeId: Number(sample!.id) - 5000, limit: 50 })],
      ['one event', () => consoleEvent(db, Number(sample!.id))],
      ['student story by e-mail', () => consoleStudent(db, String(sample!.email))],
    ];
    const figures: ConsoleFigure[] = [];
    for (const [view, call] of views) {
      await call();
      const times: number[] = [];
      for (let i = 0; i < 5; i++) {
        const t = performance.now();
        await call();
        times.push(performance.now() - t);
      }
      times.sort((a, b) => a - b);
      figures.push({ view, medianMs: times[2]!, worstMs: times[4]! });
      log(`  ${view}: median ${times[2]!.toFixed(1)} ms, worst ${times[4]!.toFixed(1)} ms`);
    }
    return { events: n, seedSeconds, figures };
  } finally {
    await database.close();
  }
}
