// The compressed month (npm run bench -- --only month), two days of it at a small scale,
// so the section keeps working: its clock moves PGlite's, the stack goes quiet before each
// jump, an outage, a revoked token and missing hooks play out, the operator answers the
// alerts, and the figures it prints say what the database and amoCRM's record say. The
// month runs on PGlite only (a PostgreSQL server's now() does not follow the moved clock),
// so under DATABASE_URL this would only repeat itself.
import { describe, expect, it } from 'vitest';
import { STANDIN_USERS } from '../dev/amocrm-standin/index.ts';
import { benchMonth, MONTH_DEFAULTS } from '../scripts/bench/month.ts';
import { DAY, HOUR, MINUTE } from '../scripts/bench/month-plan.ts';

describe.skipIf(Boolean(process.env.DATABASE_URL))('the compressed month, two days (PGlite only)', () => {
  it('runs two virtual days in well under real time, and its figures hold', async () => {
    const rows = new Map<string, string>();
    const realStart = Date.now();
    const inspected = { final: {} as Record<string, number>, apiBackwards: -1, virtualMs: 0 };
    await benchMonth({
      scale: {
        ...MONTH_DEFAULTS, days: 2, seed: 3, signupsPerDay: 6, editsPerDay: 12, selfPacedPerDay: 0.1,
        incidents: {
          webinarDays: [1],
          outages: [{ at: DAY + 8 * HOUR, ms: 60 * MINUTE, fault: 'http503' }],
          revokeAt: DAY + 15 * HOUR,
          hooksOff: { at: DAY + 11 * HOUR, ms: 2 * HOUR },
        },
      },
      row: (figure, value) => rows.set(figure, value),
      say: () => undefined,
      inspect: async (ms, obs) => {
        const statuses = await ms.s.database.sql('select status, count(*)::int as n from amocrm.sync_events group by 1');
        inspected.final = Object.fromEntries(statuses.map((r) => [r.status, r.n]));
        const { stages } = ms.s.layout;
        const order = [stages.incoming, stages.lesson1, stages.lesson2, stages.lesson3, stages.paid];
        inspected.apiBackwards = ms.s.amo.leadEvents().filter((e) => e.type === 'lead_status_changed' && e.created_by === STANDIN_USERS.api
          && order.indexOf(e.value_after[0]!.lead_status.id) <= order.indexOf(e.value_before[0]!.lead_status.id)).length;
        inspected.virtualMs = Date.now() - obs.startAt;
      },
    });
    const realMs = Date.now() - realStart; // Date.now is real again once the month is over

    expect(inspected.virtualMs).toBeGreaterThanOrEqual(2 * DAY);
    expect(inspected.virtualMs / realMs).toBeGreaterThan(100); // compressed: quiet time skipped
    // Every lesson event ended done or skipped (dead ones replayed by the operator after their alert).
    expect(Object.keys(inspected.final).filter((s) => s !== 'done' && s !== 'skipped')).toEqual([]);
    expect(rows.get('events lost (a completion without its event, or an event not done/skipped at the end)')).toMatch(/^0 of [1-9]\d* /);
    expect(inspected.apiBackwards).toBe(0);
    expect(rows.get("deals moved backwards by the sync (amoCRM's record of every stage change, per deal)")).toMatch(/^0 of /);
    expect(rows.get('won or lost deals the sync moved')).toBe('0');
    expect(rows.get('429s / 403s from amoCRM')).toMatch(/^[0-2] \/ 0 /); // never blocked; a 429 from bunching on a loaded machine is paused, not lost
    // The reverse direction: amoCRM's every stage change reached the platform once, and the mirror is where amoCRM is.
    expect(rows.get("amoCRM's stage changes in the platform's deal_changes")).toMatch(/^[1-9]\d* changes: 0 missing, 0 more than once$/);
    expect(rows.get("the mirror at amoCRM's stage at the end, for every deal amoCRM changed")).toMatch(/^(\d+) of \1$/);
    // The token chain: revoked once, re-authorised by the operator, every rotation stored, still rotating at the end.
    expect(rows.get('token chain: breaks')).toMatch(/^1 \(the revocation\); re-authorised at day 1 /);
    expect(rows.get('token chain: refreshes (access token valid 24 h, refresh token single-use)')).toMatch(/^(\d+) rotations by amoCRM, \1 stored, 0 lost$/);
    expect(rows.get('token chain intact at the end')).toMatch(/^yes/);
    // The revocation was alerted once and ended; the outage's waiting events were alerted;
    // every alert that started ended, and nothing is left open.
    const alerts = Object.fromEntries([...rows.get('alerts sent, by kind (started / reminders / ended)')!.matchAll(/(\w+) (\d+)\/(\d+)\/(\d+)/g)]
      .map(([, kind, started, , ended]) => [kind!, { started: Number(started), ended: Number(ended) }]));
    expect(alerts.token_chain).toEqual({ started: 1, ended: 1 });
    expect(alerts.events_waiting?.started).toBeGreaterThanOrEqual(1);
    for (const [kind, n] of Object.entries(alerts)) expect(n.ended, kind).toBe(n.started);
    expect(rows.get('alerts: open at the end of the month')).toBe('none');
    // Storage was sampled every virtual day, with the shadow of the hook deliveries.
    expect(rows.get('storage: amocrm.crm_deliveries')).toMatch(/^with retention \d+(\.\d+)? [KM]B at the end.*; without: \d+(\.\d+)? [KM]B at the end/);
  }, 240_000);
});
