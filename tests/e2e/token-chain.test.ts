// The token chain across concurrent, stateless invocations. On PostgreSQL (CI) every
// invocation has its own connections, so the refresh lease is raced for real; on PGlite
// the invocations interleave at every await on one connection.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { axiosTransport, type Transport } from '../../lib/amocrm/http.ts';
import { loadConfig } from '../../lib/config.ts';
import { buildRuntime } from '../../lib/runtime.ts';
import { deliverEvent } from '../../lib/sync/process-event.ts';
import { usingPostgres } from '../helpers/db.ts';
import { createStack, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
// amoCRM's timeout as in production (10 s), not the test stack's 2 s: a refresh whose answer
// lapses after amoCRM rotated the pair breaks the chain by design (faults.test.ts, case 7),
// and on a loaded machine the local stand-in can take over 2 s to answer one.
beforeAll(async () => { s = await createStack({ env: { AMOCRM_TIMEOUT_MS: '10000' } }); });
afterAll(async () => { await s.close(); });

describe(`token chain (${usingPostgres ? 'PostgreSQL, separate connections' : 'PGlite'})`, () => {
  it('20 concurrent invocations on an expired token: exactly one refresh call, all succeed, chain intact', async () => {
    const students = await Promise.all(Array.from({ length: 20 }, (_, i) => s.addStudent(`race${i}@student.kz`)));
    const events = [];
    for (const st of students) events.push(await s.complete(st.userId, 67));
    await s.storeTokens({ expired: true });
    s.amo.resetCounts();

    // When each request left (the limiter let it go), on the clock the stand-in stamps arrivals with.
    const sentAt: number[] = [];
    const config = loadConfig(s.env);
    const real = axiosTransport(config.amocrm.baseUrl, config.amocrm.timeoutMs);
    const recording: Transport = { send(req, bearer) { sentAt.push(Date.now()); return real.send(req, bearer); } };
    const rt = buildRuntime(config, usingPostgres ? await s.t.newDb(25) : s.t.db, { log: s.log, transport: recording });
    const results = await Promise.all(events.map((id) => {
      const inv = rt.invocation(60_000); // its own holder, token manager and limiter, like a separate function instance
      return deliverEvent(inv.sync, id, inv.holder);
    }));

    expect(s.amo.counts().refreshes).toBe(1);
    // What the limiter controls: at most 7 requests left it in any second (amoCRM's limit).
    const busiest = Math.max(...sentAt.map((t) => sentAt.filter((u) => u > t - 1000 && u <= t).length));
    expect(busiest, `requests that left the limiter in the busiest second (sent at ${sentAt.join(' ')})`).toBeLessThanOrEqual(7);
    // On failure: each outcome with its code, the warnings, and for every 429 how many requests
    // left here and how many the stand-in saw arrive in the second before it (more arrived
    // than left: they bunched on the way, not in the limiter).
    const evidence = () => [
      ...s.log.lines.filter((l) => !l.includes('✅')),
      ...s.amo.requests.filter((r) => r.status === 429).map((r) =>
        `stand-in 429 at ${r.at}: in the 1 s before it ${sentAt.filter((t) => t > r.at - 1000 && t <= r.at).length} requests left the limiter, `
        + `${s.amo.requests.filter((q) => q.at > r.at - 1000 && q.at <= r.at).length} arrived (ms before: `
        + `sent ${sentAt.filter((t) => t > r.at - 1500 && t <= r.at).map((t) => r.at - t).join(' ')}; `
        + `arrived ${s.amo.requests.filter((q) => q.at > r.at - 1500 && q.at <= r.at).map((q) => r.at - q.at).join(' ')})`),
    ].join('\n');
    expect(results.map((r) => r.claimed ? [r.outcome.status, r.outcome.code ?? null].join(':') : `unclaimed:${r.reason}`), evidence())
      .toEqual(events.map(() => 'done:'));
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
