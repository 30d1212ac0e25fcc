// The drainer's real entry (lib/http/drain-background.ts: the caller check, the budget, the linger,
// a lost lease), a ring that does not reach it, and a database outage in the middle of a
// burst. Real database (PGlite or PostgreSQL 15), the amoCRM stand-in, the real steps.
import { createServer, type Server } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../lib/config.ts';
import { DRAIN_BUDGET_MS, handleDrain } from '../../lib/http/drain-background.ts';
import { handleLessonCompleted } from '../../lib/http/lesson-completed.ts';
import { BURST_BACKLOG } from '../../lib/sync/receive-lesson.ts';
import { buildRuntime, type Runtime } from '../../lib/runtime.ts';
import { runDrain } from '../../lib/sync/drainer.ts';
import { faultyDb } from '../helpers/faulty-db.ts';
import { createStack, dbWebhookBody, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
let drainerAnswer = 202;
let rings = 0;
let ringServer: Server;
let rt: Runtime; // the stack's runtime, its drainer's address on ringServer

beforeAll(async () => {
  s = await createStack();
  ringServer = createServer((_req, res) => {
    rings++;
    res.writeHead(drainerAnswer).end();
  });
  await new Promise<void>((r) => ringServer.listen(0, '127.0.0.1', r));
  const { port } = ringServer.address() as { port: number };
  rt = buildRuntime(loadConfig({ ...s.env, AMOCRM_DRAIN_URL: `http://127.0.0.1:${port}/.netlify/functions/amocrm-drain-background` }), s.t.db, { log: s.log });
});
afterAll(async () => {
  await new Promise((r) => ringServer?.close(r));
  await s?.close();
});
beforeEach(async () => {
  s.amo.reset(); s.amo.resetCounts(); s.log.lines.length = 0; rings = 0; drainerAnswer = 202;
  await s.t.sql(`update amocrm.sync_events set status = 'dead' where status in ('pending', 'failed', 'processing')`);
  await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null, last_woken_at = null, started_at = null, ring_failed_at = null`);
});

let seq = 0;
const email = (tag: string) => `${tag}.${++seq}@drain-entry.kz`;
const students = (n: number, tag: string) => Promise.all(Array.from({ length: n }, () => s.addStudent(email(tag))));
const drainRequest = (headers: Record<string, string> = { 'x-webhook-secret': s.env.AMOCRM_WEBHOOK_SECRET! }) =>
  new Request('http://localhost/.netlify/functions/amocrm-drain-background', { method: 'POST', headers, body: '{}' });
const makeDue = () => s.t.sql(`update amocrm.sync_events set next_attempt_at = now() where status = 'pending'`);

describe('a ring that does not reach the drainer', () => {
  it('the webhook delivers its own event, and so do the burst\'s next webhooks until the ring is tried again', async () => {
    drainerAnswer = 404; // no background function at that address
    const burst = await students(BURST_BACKLOG + 1, 'no-drainer');
    const ids: number[] = [];
    for (const st of burst) ids.push(await s.complete(st.userId, 67));
    const answers = [];
    for (const [i, st] of burst.slice(0, 3).entries()) {
      const res = await handleLessonCompleted(s.webhookRequest({ ...dbWebhookBody(st.userId, 67), event_id: ids[i] }), async () => rt);
      answers.push({ status: res.status, ...(await res.json()) });
    }
    expect(answers.map((a) => a.outcome)).toEqual(['done', 'done', 'done']);
    expect(rings).toBe(1); // tried once; the next ring waits its 5 s
    expect(burst.slice(0, 3).map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual([STAGE.lesson1, STAGE.lesson1, STAGE.lesson1]);
    expect(s.log.lines.some((l) => l.includes('Обработчик очереди не запущен') && l.includes('status=404'))).toBe(true);
  });

  it('a drainer rung again after a failed ring is counted on again', async () => {
    await s.t.db.rpc('amocrm_request_drain', {});
    await s.t.db.rpc('amocrm_ring_failed', {});
    await s.t.sql(`update amocrm.drainer set last_woken_at = now() - interval '6 seconds', ring_failed_at = now() - interval '7 seconds'`);
    const [st] = await students(1, 're-rung');
    const res = await handleLessonCompleted(s.webhookRequest(dbWebhookBody(st!.userId, 67)), async () => rt);
    expect(await res.json()).toMatchObject({ outcome: 'queued' });
  });
});

describe('the drainer\'s entry', () => {
  it('refuses a caller without the webhook secret, and does nothing', async () => {
    const [st] = await students(1, 'unauth');
    await s.complete(st!.userId, 67);
    await makeDue();
    for (const headers of [{}, { 'x-webhook-secret': 'not-the-secret' }] as Record<string, string>[]) {
      const res = await handleDrain(drainRequest(headers), async () => rt);
      expect(res.status).toBe(401);
      expect(await res.text()).not.toContain(s.env.AMOCRM_WEBHOOK_SECRET!);
    }
    expect(s.amo.counts().total).toBe(0);
    expect((await s.t.sql(`select holder from amocrm.drainer`))[0]!.holder).toBeNull();
  });

  it('drains with the 14-minute budget, lingers for an event due in a moment, and logs one line', async () => {
    expect(DRAIN_BUDGET_MS).toBe(14 * 60_000);
    const [now, soon] = await students(2, 'linger');
    await s.complete(now!.userId, 67);
    await makeDue();
    const soonId = await s.complete(soon!.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() + interval '1.5 seconds' where id = $1`, [soonId]);
    const res = await handleDrain(drainRequest(), async () => rt);
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ ok: true, ran: true, claimed: 2, outcomes: { done: 2 }, stoppedBy: 'empty' });
    expect(s.amo.lead(soon!.leadId)!.statusId).toBe(STAGE.lesson1);
    expect(s.log.lines.filter((l) => l.includes('Очередь разобрана'))).toHaveLength(1);
  });

  it('stops when another drainer took its lease over, without touching that drainer\'s events', async () => {
    const group = await students(2, 'stolen');
    for (const st of group) await s.complete(st.userId, 67);
    await makeDue();
    const db = faultyDb(s.t.db, {
      hold: async (fn, _args, n) => {
        if (fn === 'amocrm_claim_due' && n === 1) await s.t.sql(`update amocrm.drainer set holder = 'successor', lease_until = now() + interval '60 seconds'`);
      },
    });
    const res = await handleDrain(drainRequest(), async () => s.runtimeOver(db));
    expect(await res.json()).toMatchObject({ ran: true, stoppedBy: 'lease_lost', outcomes: { done: 2 } });
    expect((await s.t.sql(`select holder from amocrm.drainer`))[0]!.holder).toBe('successor');
  });
});

describe('a database outage in the middle of a burst', () => {
  it('the drainer waits it out and carries on: every deal moved once, nothing left for the scheduled run', async () => {
    const group = await students(12, 'outage');
    for (const st of group) await s.complete(st.userId, 67);
    await makeDue();
    let outageUntil = 0;
    const db = faultyDb(s.t.db, {
      // The first batch's outcomes cannot be written: the database is away for 3 s.
      fail: (fn, _args, n) => {
        if (fn === 'amocrm_finish_events' && n === 1) outageUntil = Date.now() + 3_000;
        return Date.now() < outageUntil;
      },
    });
    const started = Date.now();
    const report = await runDrain(s.runtimeOver(db), { budgetMs: 60_000, reserveMs: 1_000, lookahead: false, batchSize: 5 });
    expect(db.calls.some((c) => c.failed)).toBe(true);
    expect(report).toMatchObject({ ran: true, stoppedBy: 'empty' });
    expect(report.outcomes.done).toBe(12);
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(group.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(group.map(() => STAGE.lesson1));
    const left = await s.t.sql(`select count(*)::int as n from amocrm.sync_events where user_id = any($1::uuid[]) and status <> 'done'`, [group.map((st) => st.userId)]);
    expect(left[0]!.n).toBe(0);
    expect(s.log.lines.filter((l) => l.includes('База данных недоступна'))).toHaveLength(1);
  });
});
