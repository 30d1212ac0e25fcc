// The trigger stays quiet during a drain (issue 17, item 4): while a drainer holds the
// queue, a completion costs its outbox row only (due at once, for the drainer), with no
// pg_net request; once the drain ends it rings again. At the boundary nothing is lost: a
// drain does not end while a quiet completion is uncommitted, and a completion made while
// a drain is ending rings (PostgreSQL only: separate connections).
import pg from 'pg';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { createTestDatabase, usingPostgres, type TestDatabase } from '../helpers/db.ts';
import { completeLesson, createUser, eventsOf, queuedFor, setSetting, uniqueEmail } from './support.ts';

type J = Record<string, any>;
const HOLDER = 'drainer-under-test';

let t: TestDatabase;
beforeAll(async () => {
  t = await createTestDatabase();
  await setSetting(t, 'webhook_url', 'http://127.0.0.1:9/');
  await setSetting(t, 'webhook_secret', 'whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=');
});
afterAll(async () => {
  await t?.close();
});
beforeEach(async () => {
  await t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  await t.sql(`update amocrm.drainer set holder = null, lease_until = null, last_woken_at = null, started_at = null, ring_failed_at = null`);
});

const rpc = (fn: string, args: J = {}) => t.db.rpc<J>(fn, args);
const beginDrain = () => rpc('amocrm_begin_drain', { p_holder: HOLDER, p_lease_seconds: 60 });
const endDrain = () => rpc('amocrm_end_drain', { p_holder: HOLDER, p_drained: 0 });
/** Seconds until the event is due (negative or zero: due now). */
const dueIn = async (eventId: unknown) =>
  Number((await t.sql(`select extract(epoch from (next_attempt_at - now())) as s from amocrm.sync_events where id = $1`, [eventId]))[0]!.s);

describe('the trigger during a drain', () => {
  it('rings at idle; stays quiet while a drainer holds the queue (the event due at once); rings again after the drain', async () => {
    const idle = await createUser(t, uniqueEmail('idle'));
    await completeLesson(t, idle, 67);
    expect(await queuedFor(t, idle)).toHaveLength(1);
    expect(await dueIn((await eventsOf(t, idle))[0]!.id)).toBeGreaterThan(50); // the webhook's 60 s

    expect(await beginDrain()).toMatchObject({ acquired: true });
    const during = await createUser(t, uniqueEmail('during'));
    await completeLesson(t, during, 67);
    const [event] = await eventsOf(t, during);
    expect(event).toMatchObject({ status: 'pending', source: 'trigger' });
    expect(await queuedFor(t, during)).toHaveLength(0);
    expect(await dueIn(event!.id)).toBeLessThanOrEqual(0);
    // The drainer sees it: it does not end, and claims it.
    expect(await endDrain()).toMatchObject({ ended: false });
    const claimed = await rpc('amocrm_claim_due', { p_holder: HOLDER, p_limit: 10 });
    expect((claimed as unknown as J[]).map((e) => Number(e.id))).toContain(Number(event!.id));
    await t.sql(`update amocrm.sync_events set status = 'done' where id = $1`, [event!.id]);

    expect(await endDrain()).toMatchObject({ ended: true });
    const after = await createUser(t, uniqueEmail('after'));
    await completeLesson(t, after, 67);
    expect(await queuedFor(t, after)).toHaveLength(1);
  });

  it('a drainer\'s expired lease (killed) does not keep the trigger quiet', async () => {
    await beginDrain();
    await t.sql(`update amocrm.drainer set lease_until = now() - interval '1 second'`);
    const user = await createUser(t, uniqueEmail('expired'));
    await completeLesson(t, user, 67);
    expect(await queuedFor(t, user)).toHaveLength(1);
  });

  it('a second completion of the same lesson during a drain is still not a second event', async () => {
    await beginDrain();
    const user = await createUser(t, uniqueEmail('twice'));
    await completeLesson(t, user, 67);
    await completeLesson(t, user, 67);
    expect(await eventsOf(t, user)).toHaveLength(1);
    expect(await queuedFor(t, user)).toHaveLength(0);
  });
});

describe.runIf(usingPostgres)('the drain\'s end and a completion in flight (PostgreSQL)', () => {
  let student: pg.Client;
  let ender: pg.Client;
  beforeAll(async () => {
    const [{ db }] = (await t.sql('select current_database() as db')) as [{ db: string }];
    const url = new URL(process.env.DATABASE_URL!);
    url.pathname = `/${db}`;
    student = new pg.Client({ connectionString: url.toString() });
    ender = new pg.Client({ connectionString: url.toString() });
    await student.connect();
    await ender.connect();
  });
  afterAll(async () => {
    await student?.end();
    await ender?.end();
  });

  /** The student's INSERT in a transaction left open (as the Data API's authenticated role). */
  async function completeUncommitted(userId: string) {
    await student.query('begin');
    await student.query(`select set_config('request.jwt.claim.sub', $1, true)`, [userId]);
    await student.query('set local role authenticated');
    await student.query('insert into public.lesson_progress (user_id, lesson_id, is_completed) values ($1, 67, true)', [userId]);
  }

  it('a drain does not end while a quiet completion is uncommitted; once committed, the drainer claims it', async () => {
    await beginDrain();
    const user = await createUser(t, uniqueEmail('inflight'));
    await completeUncommitted(user);
    try {
      // The event is invisible to the drainer, yet the drain does not end (nor does the
      // budget's release say nobody is needed).
      expect(await eventsOf(t, user)).toHaveLength(0);
      expect(await endDrain()).toMatchObject({ ended: false, held: true });
    } finally {
      await student.query('commit');
    }
    expect(await queuedFor(t, user)).toHaveLength(0);
    expect(await endDrain()).toMatchObject({ ended: false });
    const claimed = (await rpc('amocrm_claim_due', { p_holder: HOLDER, p_limit: 10 })) as unknown as J[];
    expect(claimed.map((e) => e.user_id)).toContain(user);
  });

  it('the budget\'s release with a quiet completion uncommitted asks for a successor', async () => {
    await beginDrain();
    const user = await createUser(t, uniqueEmail('release'));
    await completeUncommitted(user);
    try {
      expect(await rpc('amocrm_release_drain', { p_holder: HOLDER })).toMatchObject({ released: true, due: true });
    } finally {
      await student.query('commit');
    }
    expect(await dueIn((await eventsOf(t, user))[0]!.id)).toBeLessThanOrEqual(0);
  });

  it('a completion made while the drain is ending (its end not yet committed) rings', async () => {
    await beginDrain();
    await ender.query('begin');
    try {
      const [r] = (await ender.query(`select public.amocrm_end_drain($1, 0, 0) as r`, [HOLDER])).rows;
      expect(r.r).toMatchObject({ ended: true });
      const user = await createUser(t, uniqueEmail('ending'));
      // The student's write does not wait on the ending drain.
      await completeUncommitted(user);
      await student.query('commit');
      expect(await queuedFor(t, user)).toHaveLength(1);
    } finally {
      await ender.query('commit');
    }
  });
});
