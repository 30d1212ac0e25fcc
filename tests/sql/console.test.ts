// The console's reads against seeded events: the figures are counted here with plain SQL
// and compared, never copied from the functions under test.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consoleEvent, consoleEvents, consoleFunnel, consoleHealth, consoleStudent } from '../../lib/db/console.ts';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';

let t: TestDatabase;
const users: string[] = [];
beforeAll(async () => {
  t = await createTestDatabase();
  for (let i = 0; i < 6; i++) {
    const [u] = await t.sql(`insert into auth.users (email) values ($1) returning id`, [`c${i}@console.kz`]);
    users.push(u!.id);
  }
  // Six students: 67 for all, 68 for four, 69 for two; outcomes spread over the statuses.
  const plan: [number, number, string, string | null][] = [
    [0, 67, 'done', null], [1, 67, 'done', null], [2, 67, 'done', null], [3, 67, 'done', null], [4, 67, 'failed', 'contact_not_found'], [5, 67, 'pending', null],
    [0, 68, 'done', null], [1, 68, 'done', null], [2, 68, 'skipped', 'would_move_backwards'], [3, 68, 'dead', 'server_error'],
    [0, 69, 'done', null], [1, 69, 'parked', 'payment_required'],
  ];
  for (const [u, lesson, status, code] of plan) {
    const [e] = await t.sql(`insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, status, last_error_code, lead_id)
      values ($1, $2, $3, $4, 'processing', null, $5) returning id`, [users[u], `c${u}@console.kz`, lesson, lesson - 66, 1000 + u]);
    await t.sql(`update amocrm.sync_events set status = $2, last_error_code = $3, attempts = 1,
                   done_at = case when $2 = 'done' then created_at + interval '800 milliseconds' end where id = $1`, [e!.id, status, code]);
  }
  await t.sql(`insert into amocrm.deal_changes (lead_id, user_id, kind, changed_at, source) values (1000, $1, 'won', now(), 'hook'), (1001, $2, 'lost', now(), 'hook')`, [users[0], users[1]]);
});
afterAll(async () => { await t?.close(); });

const period = () => ({ from: new Date(Date.now() - 3600_000).toISOString(), to: new Date(Date.now() + 60_000).toISOString() });

describe('console reads', () => {
  it('the funnel matches the events table', async () => {
    const funnel = await consoleFunnel(t.db, period());
    const expected = await t.sql(`select stage_number::int, count(*)::int as completed, count(*) filter (where status = 'done')::int as moved
                                    from amocrm.sync_events group by 1 order by 1`);
    expect(funnel.lessons.map((l) => ({ stage_number: l.stage_number, completed: l.completed, moved: l.moved }))).toEqual(expected);
    expect([funnel.won, funnel.lost]).toEqual([1, 1]);
    expect(funnel.stuck.find((s) => s.code === 'contact_not_found')).toMatchObject({ stage_number: 1, status: 'failed', count: 1 });
  });

  it('health: attempts per bucket by outcome (from the attempts trigger), latency, queue', async () => {
    const health = await consoleHealth(t.db, { ...period(), bucket: 'hour' });
    const [counts] = await t.sql(`select count(*) filter (where outcome = 'done')::int as done, count(*) filter (where outcome = 'dead')::int as dead from amocrm.event_attempts`);
    expect(health.buckets.reduce((n, b) => n + b.done, 0)).toBe(counts!.done);
    expect(health.buckets.reduce((n, b) => n + b.dead, 0)).toBe(counts!.dead);
    expect(health.latency).toMatchObject({ n: 7, p50_ms: 1000, p95_ms: 1000 }); // seven done events moved 0.8 s after commit: the 750–1000 ms bucket
    expect(health.queue).toMatchObject({ parked: 1 });
    expect(health.dead_total).toBe(1);
  });

  it('the event list filters and pages newest first', async () => {
    const all = await consoleEvents(t.db, { limit: 5 });
    expect(all.items).toHaveLength(5);
    expect(all.items.map((i) => i.id)).toEqual([...all.items.map((i) => i.id)].sort((a, b) => b - a));
    const next = await consoleEvents(t.db, { limit: 5, beforeId: all.next_before_id! });
    expect(Math.max(...next.items.map((i) => i.id))).toBeLessThan(Math.min(...all.items.map((i) => i.id)));
    expect((await consoleEvents(t.db, { status: 'done' })).items.every((i) => i.status === 'done')).toBe(true);
    expect((await consoleEvents(t.db, { status: 'done' })).items).toHaveLength(7);
    expect((await consoleEvents(t.db, { code: 'server_error' })).items.map((i) => i.status)).toEqual(['dead']);
    expect((await consoleEvents(t.db, { q: 'c1@' })).items.map((i) => i.email)).toEqual(['c1@console.kz', 'c1@console.kz', 'c1@console.kz']);
    expect((await consoleEvents(t.db, { q: users[2] })).items).toHaveLength(2);
    expect((await consoleEvents(t.db, { q: '%' })).items).toEqual([]); // a wildcard is a character, not a pattern
  });

  it('one event and one student: attempts, the story', async () => {
    const [dead] = await t.sql(`select id from amocrm.sync_events where status = 'dead'`);
    const one = await consoleEvent(t.db, Number(dead!.id));
    expect(one!.attempts).toEqual([expect.objectContaining({ attempt: 1, outcome: 'dead', code: 'server_error' })]);
    expect(await consoleEvent(t.db, 987_654_321)).toBeNull();
    const story = await consoleStudent(t.db, 'C1@console.kz');
    expect(story!.events.map((e) => e.lesson_id)).toEqual([67, 68, 69]);
    expect(story!.attempts).toHaveLength(3);
    expect(await consoleStudent(t.db, 'nobody@console.kz')).toBeNull();
  });
});

describe('closed hours are counted once and counted again when an old event changes', () => {
  // Its own database: the event it adds (and moves to done) would otherwise be counted by
  // the reads above, which compare against every row of the seeded events table.
  let t: TestDatabase;
  beforeAll(async () => { t = await createTestDatabase(); });
  afterAll(async () => { await t?.close(); });

  it('the funnel of a past period comes from the rollup and follows a later replay', async () => {
    const [u] = await t.sql(`insert into auth.users (email) values ('rollup@console.kz') returning id`);
    const [e] = await t.sql(`insert into amocrm.sync_events (user_id, email, lesson_id, stage_number, status, created_at, next_attempt_at)
                              values ($1, 'rollup@console.kz', 67, 1, 'processing', now() - interval '5 hours', now()) returning id`, [u!.id]);
    await t.sql(`update amocrm.sync_events set status = 'failed', last_error_code = 'contact_not_found' where id = $1`, [e!.id]);
    const past = { from: new Date(Date.now() - 6 * 3600_000).toISOString(), to: new Date(Date.now() - 2 * 3600_000).toISOString() };
    const before = await consoleFunnel(t.db, past);
    expect(before.lessons).toEqual([expect.objectContaining({ stage_number: 1, completed: 1, moved: 0, failed: 1 })]);
    const [rolled] = await t.sql(`select count(*)::int as n from amocrm.console_rollup where kind = 'funnel'`);
    expect(rolled!.n).toBeGreaterThan(0); // closed hours were counted into the rollup

    // A replay moves it now: its (closed) hour is dirty and counted again.
    await t.sql(`update amocrm.sync_events set status = 'processing' where id = $1`, [e!.id]);
    await t.sql(`update amocrm.sync_events set status = 'done', last_error_code = null, done_at = now() where id = $1`, [e!.id]);
    const after = await consoleFunnel(t.db, past);
    expect(after.lessons).toEqual([expect.objectContaining({ stage_number: 1, completed: 1, moved: 1, failed: 0 })]);
  });
});

describe.runIf(usingPostgres)('console queries use indexes (PostgreSQL)', () => {
  it('the list, a status filter and an e-mail search do not scan the events table', async () => {
    await t.sql('analyze amocrm.sync_events');
    for (const sql of [
      `select * from amocrm.sync_events e where e.status = 'failed' order by e.id desc limit 51`,
      `select * from amocrm.sync_events e where e.email like 'c1@%' order by e.id desc limit 51`,
      `select * from amocrm.sync_events e where e.created_at >= now() - interval '1 day'`,
    ]) {
      await t.sql('set enable_seqscan = off');
      const plan = (await t.sql(`explain ${sql}`)).map((r) => r['QUERY PLAN']).join('\n');
      await t.sql('set enable_seqscan = on');
      expect(plan, sql).not.toMatch(/Seq Scan on sync_events/);
    }
  });
});
