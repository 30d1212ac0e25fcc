// The embedded default's pg_net: sends what the trigger queued in net.http_request_queue
// after commit, each request once, concurrently, never retried — as pg_net does — and
// records the answer in net._http_response.
import { errorText } from '../lib/log.ts';

/** Runs one SQL statement as the database owner (PGlite's query, or a pg pool's). */
export type SqlRunner = (text: string, params?: unknown[]) => Promise<any[]>;

export interface PgNetWorkerOptions {
  /** How often the queue is polled. Default 25 ms. */
  intervalMs?: number;
  /**
   * At most this many requests in flight, oldest queued first; the rest wait in the
   * queue. pg_net takes pg_net.batch_size requests at a time (200 on Supabase), so the
   * benchmark's production topology sets 200. Default: no cap (npm start, the tests).
   */
  maxInFlight?: number;
}

export function startPgNetWorker(
  query: SqlRunner, options: number | PgNetWorkerOptions = {},
): { stop(): Promise<void>; idle(): Promise<void>; inFlight(): number } {
  const { intervalMs = 25, maxInFlight = Infinity } = typeof options === 'number' ? { intervalMs: options } : options;
  if (!(maxInFlight >= 1)) throw new Error(`pg_net worker: maxInFlight must be at least 1 (got ${maxInFlight})`);
  let stopped = false;
  const inFlight = new Set<Promise<void>>();

  async function send(row: { id: number; url: string; headers: Record<string, string>; body: Uint8Array | null; timeout_milliseconds: number }) {
    let status: number | null = null;
    let content: string | null = null;
    let error: string | null = null;
    let timedOut = false;
    try {
      const res = await fetch(row.url, {
        method: 'POST',
        headers: row.headers,
        body: row.body ? Buffer.from(row.body) : undefined,
        signal: AbortSignal.timeout(row.timeout_milliseconds),
      });
      status = res.status;
      content = (await res.text()).slice(0, 2000);
    } catch (err) {
      timedOut = (err as Error).name === 'TimeoutError';
      error = String((err as Error).message ?? err);
    }
    await query(
      'insert into net._http_response (id, status_code, content, timed_out, error_msg) values ($1, $2, $3, $4, $5) on conflict (id) do nothing',
      [row.id, status, content, timedOut, error],
    );
  }

  const take = (room: number) => Number.isFinite(room)
    ? query(`delete from net.http_request_queue where id in (select id from net.http_request_queue order by id limit $1)
             returning id, url, headers, body, timeout_milliseconds`, [room])
    : query('delete from net.http_request_queue returning id, url, headers, body, timeout_milliseconds');

  const loop = (async () => {
    while (!stopped) {
      const room = maxInFlight - inFlight.size;
      const rows = room > 0 ? await take(room) : [];
      for (const row of rows) {
        const p = send(row)
          .catch((err) => console.error(`[local] pg_net stand-in: answer to request ${row.id} not recorded: ${errorText(err)}`))
          .finally(() => inFlight.delete(p));
        inFlight.add(p);
      }
      // Full: poll again as soon as one request is answered (or after the interval).
      const pause = new Promise((r) => setTimeout(r, intervalMs));
      await (inFlight.size >= maxInFlight ? Promise.race([pause, ...inFlight]) : pause);
    }
  })();

  return {
    async stop() {
      stopped = true;
      await loop;
      await Promise.allSettled([...inFlight]);
    },
    async idle() {
      while (inFlight.size) await Promise.allSettled([...inFlight]);
    },
    inFlight: () => inFlight.size,
  };
}
