// The pg_net stand-in's concurrency cap (the benchmark's production topology sets pg_net's
// 200): never more requests in flight than the cap, oldest queued first, every request
// sent once and its answer recorded; without a cap (npm start) everything goes at once.
import { createServer, type Server, type ServerResponse } from 'node:http';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPgNetWorker } from '../dev/pgnet-worker.ts';
import { createTestDatabase, type TestDatabase } from './helpers/db.ts';

let t: TestDatabase;
let server: Server;
let url = '';
/** Requests the receiver holds open, in arrival order, by the queue id in their body. */
const held: { id: number; res: ServerResponse }[] = [];
const arrivals: number[] = [];

beforeAll(async () => {
  t = await createTestDatabase();
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      const id = Number(JSON.parse(body).n);
      arrivals.push(id);
      held.push({ id, res });
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const address = server.address();
  url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
  await t.close();
});

const queue = async (count: number) => {
  for (let n = 1; n <= count; n++) {
    await t.sql(`select net.http_post(url => $1, body => jsonb_build_object('n', $2::int), timeout_milliseconds => 10000)`, [url, n]);
  }
};

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

// Each test starts with nothing queued, held or answered.
beforeEach(async () => {
  for (const h of held.splice(0)) h.res.end('ok');
  arrivals.length = 0;
  await t.sql('delete from net.http_request_queue');
  await t.sql('delete from net._http_response');
});

const answerOldest = () => held.shift()!.res.end('ok');

describe('pg_net stand-in', () => {
  it('with maxInFlight 3, never more than 3 in flight, oldest first, each sent once and recorded', async () => {
    await queue(8);
    const worker = startPgNetWorker((text, params) => t.sql(text, params), { intervalMs: 5, maxInFlight: 3 });
    try {
      let most = 0;
      for (let answered = 0; answered < 8; answered++) {
        await until(() => held.length === Math.min(3, 8 - answered), `${Math.min(3, 8 - answered)} requests held`);
        // A further poll or two must not send a fourth while three are held.
        await new Promise((r) => setTimeout(r, 30));
        most = Math.max(most, worker.inFlight(), held.length);
        answerOldest();
      }
      await worker.idle();
      expect(most).toBe(3);
      // The first three went out together (any arrival order); each later one alone, in queue order.
      expect(arrivals.slice(0, 3).sort((a, b) => a - b)).toEqual([1, 2, 3]);
      expect(arrivals.slice(3)).toEqual([4, 5, 6, 7, 8]);
      await until(async () => (await t.sql('select count(*)::int as n from net._http_response'))[0]!.n === 8, 'all 8 answers recorded');
      expect(await t.sql('select count(*)::int as n from net.http_request_queue')).toEqual([{ n: 0 }]);
    } finally {
      for (const h of held.splice(0)) h.res.end('ok');
      await worker.stop();
    }
  });

  it('without a cap, sends everything queued at once', async () => {
    await queue(6);
    const worker = startPgNetWorker((text, params) => t.sql(text, params), 5);
    try {
      await until(() => held.length === 6, 'all 6 requests in flight together');
      expect(worker.inFlight()).toBe(6);
    } finally {
      for (const h of held.splice(0)) h.res.end('ok');
      await worker.stop();
    }
    expect(arrivals.sort((a, b) => a - b)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('refuses a cap below 1', () => {
    expect(() => startPgNetWorker(async () => [], { maxInFlight: 0 })).toThrow(/maxInFlight must be at least 1/);
  });
});
