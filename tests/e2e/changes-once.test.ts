// Every real change of a deal reaches amocrm.deal_changes once, whatever order they come
// in: the feed pages a deal's changes newest first, and a hook may come after a newer one.
// Found by the explorer (tests/explore): an older change went into the history only, so
// the platform never heard of it. Real database, the stand-in's hooks and feed.
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { reconcileFeed } from '../../lib/mirror/feed.ts';
import { createStack, PIPELINE, STAGE, type Stack } from '../helpers/stack.ts';

let s: Stack;
/** amoCRM's clock (ms), moved by hand so each change has its own second; ten minutes behind the database's. */
let amoNow = Date.now() - 600_000;
beforeAll(async () => {
  // The clock moves only by hand: a generous rate, or a whole test would be one second.
  s = await createStack({ standin: { now: () => amoNow, ratePerSecond: 1000 }, env: { AMOCRM_HOOK_SECRET: 'hook-secret-0123456789abcdef0123', AMOCRM_SUBDOMAIN: 'onaiacademy' } });
  await s.storeTokens();
  s.amo.hooksOff(); // the changes below reach us through the feed only
});
afterAll(async () => { await s?.close(); });
beforeEach(() => { s.log.lines.length = 0; });

let nextLead = 71_000_001;
const changesOf = (leadId: number) =>
  s.t.sql(`select kind, status_id::int as status_id from amocrm.deal_changes where lead_id = $1 order by changed_at, id`, [leadId]);

describe('a deal\'s changes brought together, newest first', () => {
  it('each reaches the platform once, the mirror ends on the newest', async () => {
    const id = nextLead++;
    s.amo.addLead({ id, name: `Сделка ${id}`, pipelineId: PIPELINE, statusId: STAGE.lesson1, updatedAt: Math.floor(amoNow / 1000) });
    for (const move of [() => s.amo.managerMove(id, { statusId: STAGE.lesson2 }), () => s.amo.managerMove(id, { statusId: STAGE.paid }), () => s.amo.managerWin(id)]) {
      amoNow += 10_000;
      move();
    }
    await reconcileFeed(s.rt);
    expect(await changesOf(id)).toEqual([
      { kind: 'stage_changed', status_id: STAGE.lesson2 },
      { kind: 'stage_changed', status_id: STAGE.paid },
      { kind: 'won', status_id: 142 },
    ]);
    const [deal] = await s.t.sql(`select status_id::int as status_id, closed from amocrm.deals where lead_id = $1`, [id]);
    expect(deal).toEqual({ status_id: 142, closed: 'won' });
    // Read again (the next window overlaps the last): nothing twice.
    await reconcileFeed(s.rt);
    expect(await changesOf(id)).toHaveLength(3);
    expect(s.log.lines.filter((l) => l.includes(`Сделка ${id} выиграна`))).toHaveLength(1);
  });
});
