// Retention in the scheduled run (lib/sync/sweep.ts): after the lesson events, only when
// they left the queue empty; one ✅ line for a run that removed anything. The rules
// themselves: tests/sql/retention.test.ts.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { runSweep } from '../../lib/sync/sweep.ts';
import { createStack, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); await s.storeTokens(); });
afterAll(async () => { await s.close(); });
beforeEach(() => { s.log.lines.length = 0; });

const oldDelivery = (requestId: string) => s.t.sql(
  `insert into amocrm.crm_deliveries (request_id, status, body, body_bytes, received_at) values ($1, 'applied', '{"contacts":"+7701"}', 19, now() - interval '10 days') returning id`,
  [requestId]).then((rows) => Number(rows[0]!.id));
const bodyOf = async (id: number) => (await s.t.sql('select body from amocrm.crm_deliveries where id = $1', [id]))[0]!.body;

describe('retention in the scheduled run', () => {
  it('not while another drainer holds the queue (the lesson events come first)', async () => {
    const id = await oldDelivery('sweep-busy');
    await s.t.sql(`update amocrm.drainer set holder = 'someone', lease_until = now() + interval '1 minute', started_at = now()`);
    const report = await runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 });
    expect(report.stoppedBy).toBe('busy');
    expect(report.retention).toBeUndefined();
    expect(await bodyOf(id)).not.toBe('');
    await s.t.sql(`update amocrm.drainer set holder = null, lease_until = null`);
  });

  it('after the lesson events left the queue empty: reduces, and says so once', async () => {
    const student = await s.addStudent('retention@student.kz');
    await s.complete(student.userId, 67);
    await s.t.sql(`update amocrm.sync_events set next_attempt_at = now() - interval '1 second' where user_id = $1`, [student.userId]);
    const id = await oldDelivery('sweep-empty');
    const report = await runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 });
    expect(report).toMatchObject({ stoppedBy: 'empty', outcomes: { done: 1 }, retention: { stoppedBy: 'done' } });
    expect(report.retention!.deliveries_reduced).toBeGreaterThanOrEqual(1);
    expect(await bodyOf(id)).toBe('');
    const lines = s.log.lines.filter((l) => l.includes('правилам хранения'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^✅ \[AmoCRM\] Старые данные очищены по правилам хранения deliveries_reduced=\d+ /);
    // Nothing left to do: no line.
    s.log.lines.length = 0;
    expect((await runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 })).retention).toMatchObject({ deliveries_reduced: 0, batches: 1 });
    expect(s.log.lines.filter((l) => l.includes('правилам хранения'))).toEqual([]);
  });
});
