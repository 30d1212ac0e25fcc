// The embedded default's pg_net: sends what the trigger queued in net.http_request_queue
// after commit, each request once, concurrently, never retried — as pg_net does — and
// records the answer in net._http_response.

/** Runs one SQL statement as the database owner (PGlite's query, or a pg pool's). */
export type SqlRunner = (text: string, params?: unknown[]) => Promise<any[]>;

export function startPgNetWorker(query: SqlRunner, intervalMs = 25): { stop(): Promise<void>; idle(): Promise<void> } {
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

  const loop = (async () => {
    while (!stopped) {
      const rows = await query('delete from net.http_request_queue returning id, url, headers, body, timeout_milliseconds');
      for (const row of rows) {
        const p = send(row).finally(() => inFlight.delete(p));
        inFlight.add(p);
      }
      await new Promise((r) => setTimeout(r, intervalMs));
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
  };
}
