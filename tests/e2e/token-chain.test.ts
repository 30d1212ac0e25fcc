// The token chain across concurrent, stateless invocations. On PostgreSQL (CI) every
// invocation has its own connections, so the refresh lease is raced for real; on PGlite
// the invocations interleave at every await on one connection.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deliverEvent } from '../../lib/sync/process-event.ts';
import { usingPostgres } from '../helpers/db.ts';
import { createStack, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
beforeAll(async () => { s = await createStack(); });
afterAll(async () => { await s.close(); });

describe(`token chain (${usingPostgres ? 'PostgreSQL, separate connections' : 'PGlite'})`, () => {
  it('20 concurrent invocations on an expired token: exactly one refresh call, all succeed, chain intact', async () => {
    const students = await Promise.all(Array.from({ length: 20 }, (_, i) => s.addStudent(`race${i}@student.kz`)));
    const events = [];
    for (const st of students) events.push(await s.complete(st.userId, 67));
    await s.storeTokens({ expired: true });
    s.amo.resetCounts();

    const rt = usingPostgres ? s.runtimeOver(await s.t.newDb(25)) : s.rt;
    const results = await Promise.all(events.map((id) => {
      const inv = rt.invocation(60_000); // its own holder, token manager and limiter, like a separate function instance
      return deliverEvent(inv.sync, id, inv.holder);
    }));

    expect(s.amo.counts().refreshes).toBe(1);
    expect(results.map((r) => r.claimed && r.outcome.status)).toEqual(events.map(() => 'done'));
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual(students.map(() => STAGE.lesson1));
    expect(s.log.lines.filter((l) => l.includes('Токены успешно обновлены'))).toHaveLength(1);
    expect(s.amo.counts().tooMany).toBe(0); // the shared limiter kept all 20 under 7 req/s

    // The stored refresh token is the live one: the next refresh works and rotates again.
    const [before] = await s.t.sql(`select version from amocrm.system_settings where key = 'amocrm_tokens'`);
    await rt.invocation(5_000).tokens.forceRefresh();
    const [after] = await s.t.sql(`select version, value->>'auth_state' as state from amocrm.system_settings where key = 'amocrm_tokens'`);
    expect(s.amo.counts().refreshes).toBe(2);
    expect([Number(after!.version), after!.state]).toEqual([Number(before!.version) + 1, 'ok']);
  }, 90_000);

  it('a revoked refresh token parks the event with one ❌ line, and new tokens resume it', async () => {
    const students = await Promise.all([0, 1, 2].map((i) => s.addStudent(`revoked${i}@student.kz`)));
    const events = [];
    for (const st of students) events.push(await s.complete(st.userId, 68));
    await s.storeTokens({ expired: true });
    s.amo.revokeRefreshTokens();
    s.log.lines.length = 0;

    const outcomes = await Promise.all(events.map((id) => {
      const inv = s.rt.invocation(10_000);
      return deliverEvent(inv.sync, id, inv.holder);
    }));
    expect(outcomes.map((o) => o.claimed && o.outcome.status)).toEqual(['parked', 'parked', 'parked']);
    const alerts = s.log.lines.filter((l) => /❌.*AmoCRM/.test(l));
    expect(alerts).toHaveLength(1);
    expect(alerts[0]).toMatch(/exchange-code/);

    const pair = s.amo.issueTokens();
    const stored = await s.t.db.rpc<{ resumed_events: number }>('amocrm_store_tokens', {
      p_kind: 'oauth', p_access_token: pair.access_token, p_refresh_token: pair.refresh_token, p_expires_at: new Date(Date.now() + 86_400_000),
    });
    expect(stored.resumed_events).toBe(3);
    for (const id of events) {
      const inv = s.rt.invocation(10_000);
      const r = await deliverEvent(inv.sync, id, inv.holder);
      expect(r.claimed && r.outcome.status).toBe('done');
    }
    expect(students.map((st) => s.amo.lead(st.leadId)!.statusId)).toEqual([STAGE.lesson2, STAGE.lesson2, STAGE.lesson2]);
  }, 60_000);
});
