// The events feed always catches up (issue item 3). With the hooks down, a window holding
// more stage changes than one scheduled run reads is read over several runs, each taking up
// where the last stopped, until the mirror equals amoCRM; changes made meanwhile follow. A
// scheduled run that finds no spare rate slot at the instant it asks still reads the feed,
// so a single lost hook is filled in by the first run. The lag shows in the health view.
// Real database (PGlite or PostgreSQL 15), the stand-in's /api/v4/events, the real SQL.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { consoleHealth } from '../../lib/db/console.ts';
import { getFeedState, putFeedState } from '../../lib/db/deal-mirror.ts';
import { healthPage } from '../../lib/http/console/pages.ts';
import { reconcileFeed } from '../../lib/mirror/feed.ts';
import { runSweep } from '../../lib/sync/sweep.ts';
import { createStack, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

/** A stack whose feed has never been read, with the hooks off: every change reaches us through the feed only. */
async function feedStack(): Promise<Stack> {
  const stack = await createStack({ env: { AMOCRM_HOOK_SECRET: 'hook-secret-0123456789abcdef0123', AMOCRM_SUBDOMAIN: 'onaiacademy' } });
  await stack.storeTokens();
  stack.amo.hooksOff();
  return stack;
}

// The file's stack, for the tests that arrange where reading stands themselves; the tests
// about a window's first reads get a stack of their own (below), whose feed holds only
// their changes and has never been read.
let shared: Stack;
let s: Stack;
beforeAll(async () => { s = shared = await feedStack(); });
afterAll(async () => { await shared?.close(); });
beforeEach(() => { s.amo.resetCounts(); s.log.lines.length = 0; });

let nextLead = 70_000_001;
/** `n` deals in the Tripwire pipeline, each moved by a manager from lesson 1 to lesson 2 (one feed event each). */
function managerMoves(n: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    const id = nextLead++;
    s.amo.addLead({ id, name: `Сделка ${id}`, pipelineId: PIPELINE, statusId: STAGE.lesson1, updatedAt: Math.floor(Date.now() / 1000) });
    s.amo.managerMove(id, { statusId: STAGE.lesson2 });
    ids.push(id);
  }
  return ids;
}

/** How many of `ids` the mirror holds at lesson 2 with their stage change told to the platform. */
async function arrived(ids: number[]): Promise<number> {
  const [row] = await s.t.sql(
    `select count(*)::int as n from amocrm.deals d
      where d.lead_id = any($1::bigint[]) and d.status_id = $2
        and exists (select 1 from amocrm.deal_changes c where c.lead_id = d.lead_id and c.kind = 'stage_changed' and c.status_id = $2)`,
    [ids, STAGE.lesson2]);
  return row!.n as number;
}

describe('a window larger than one run reads', () => {
  beforeEach(async () => { s = await feedStack(); });
  afterEach(async () => {
    const own = s;
    s = shared;
    if (own !== shared) await own?.close();
  });

  it('is read over several runs, each one further, until every change has arrived; the lag shows meanwhile', async () => {
    const first = managerMoves(250);
    const seen: number[] = [];
    const lags: (number | null | undefined)[] = [];
    const lines: string[][] = [];
    for (let run = 0; run < 6 && (seen.at(-1) ?? 0) < first.length; run++) {
      s.log.lines.length = 0;
      const report = await reconcileFeed(s.rt, { maxPages: 1 }); // 100 changes a run
      seen.push(await arrived(first));
      lags.push(report.lagSeconds);
      lines.push(s.log.lines.filter((l) => l.includes('Лента событий')));
    }
    // 100, 200, 250: every run one page further, none reads the same page again.
    expect(seen).toEqual([100, 200, 250]);
    // The first read looks back an hour: until the window is read through, that is the lag.
    expect(lags[0]).toBeGreaterThanOrEqual(3000);
    expect(lags.at(-1)).toBeLessThan(60);
    expect(lines[0]).toEqual([expect.stringMatching(/^⚠️ \[AmoCRM\] Лента событий amoCRM прочитана не до конца: .* code=pages next_page=2 pages=1 read=100 /)]);
    expect(lines[2]).toEqual([expect.stringMatching(/^✅ \[AmoCRM\] Лента событий amoCRM дочитана: .* pages=1 read=50 /)]);
    expect(await s.t.sql(`select count(*)::int as n from amocrm.deal_changes where lead_id = any($1::bigint[])`, [first])).toEqual([{ n: 250 }]);
  });

  it('changes made while a window is being read follow in the next window; the mirror ends equal to amoCRM', async () => {
    const all: number[] = [];
    all.push(...managerMoves(150));
    for (let run = 0; run < 12 && (await arrived(all)) < all.length; run++) {
      await reconcileFeed(s.rt, { maxPages: 1 });
      if (run < 3) all.push(...managerMoves(40)); // managers keep working
    }
    expect(await arrived(all)).toBe(all.length);
    // The mirror equals the stand-in for every deal moved on this test's stack.
    const mirrored = await s.t.sql(`select lead_id::bigint as id, pipeline_id::bigint as p, status_id::bigint as st from amocrm.deals where lead_id >= 70000001 order by lead_id`);
    const truth = [...all].sort((a, b) => a - b).map((id) => s.amo.lead(id)!).map((l) => ({ id: String(l.id), p: String(l.pipelineId), st: String(l.statusId) }));
    expect(mirrored.map((r) => ({ id: String(r.id), p: String(r.p), st: String(r.st) }))).toEqual(truth);
    // Read through: nothing older than a couple of minutes is unread.
    expect((await reconcileFeed(s.rt)).lagSeconds).toBeLessThan(180);
  });
});

describe('where reading stands', () => {
  it('only moves forward: a run behind another (two at once, a late write) never takes the window back', async () => {
    await reconcileFeed(s.rt); // a window read through: where reading stands is read_through alone
    const before = await getFeedState(s.t.db);
    expect(before).toMatchObject({ from: null, to: null, page: 1, read_through: expect.any(Number) });
    const behind = await putFeedState(s.t.db, { readThrough: null, window: { from: before!.read_through! - 600, to: before!.read_through! - 1, page: 7 } });
    expect(behind).toMatchObject({ from: null, to: null, page: 1, read_through: before!.read_through });
    await expect(putFeedState(s.t.db, { readThrough: null, window: null })).rejects.toThrow(/read_through/);
  });
});

describe('a scheduled run with no spare slot at the instant it asks', () => {
  it('still reads the feed: a single lost hook is filled in by the first scheduled run', async () => {
    const [lead] = managerMoves(1);
    // Other instances have just reserved the next seconds' slots: no spare slot right now.
    await s.t.sql(`update amocrm.rate_limiter set next_free_at = now() + interval '3 seconds' where key = 'amocrm'`);
    await runSweep(s.rt, { budgetMs: 20_000, reserveMs: 2_000 });
    expect(await arrived([lead!])).toBe(1);
  });
});

describe('the console\'s health view', () => {
  it('shows the feed\'s lag, in HTML and in its JSON twin', async () => {
    await reconcileFeed(s.rt); // the feed read just now: there is a lag to show
    const now = Date.now();
    const from = new Date(now - 3_600_000).toISOString();
    const to = new Date(now).toISOString();
    const health = await consoleHealth(s.t.db, { from, to, bucket: 'hour' });
    expect(health.feed).toMatchObject({ lag_seconds: expect.any(Number) });
    expect(health.feed!.lag_seconds).toBeLessThan(600);
    const page = await healthPage(s.rt, { req: new Request('http://localhost/health'), params: new URLSearchParams(), asJson: true, refresh: 0, nowMs: now });
    // The same state; its lag is a second or so older by the second read.
    const { lag_seconds: lag, ...state } = health.feed!;
    expect((page.data as { feed?: unknown }).feed).toEqual({ ...state, lag_seconds: expect.any(Number) });
    expect((page.data as { feed: { lag_seconds: number } }).feed.lag_seconds - lag).toBeLessThan(30);
    expect(String(page.body)).toContain('data-metric="feed"');
  });
});
