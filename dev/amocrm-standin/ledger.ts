// What the stand-in saw: every request in order (method, path, redacted query, the verdict on
// its token, the status answered) and the counters tests and the benchmark read.
import type { RecordedRequest, StandinCounts } from './types.ts';

/** The query string with anything that looks like a credential replaced. */
function redactQuery(raw: string): string {
  if (!raw) return '';
  const sp = new URLSearchParams(raw);
  let touched = false;
  for (const key of new Set(sp.keys())) {
    if (/token|secret|code|password|auth/i.test(key)) {
      sp.set(key, 'REDACTED');
      touched = true;
    }
  }
  return touched ? sp.toString() : raw;
}

const zero = (): StandinCounts => ({ total: 0, byRoute: {}, tooMany: 0, unauthorized: 0, refreshes: 0, patches: 0 });

export function createLedger(now: () => number) {
  const requests: RecordedRequest[] = [];
  let counters = zero();

  return {
    requests,

    arrived(method: string, path: string, rawQuery: string, route: string, auth?: RecordedRequest['auth']): RecordedRequest {
      const record: RecordedRequest = { method, path, query: redactQuery(rawQuery), at: now(), status: 0 };
      if (auth) record.auth = auth;
      requests.push(record);
      counters.total++;
      counters.byRoute[route] = (counters.byRoute[route] ?? 0) + 1;
      return record;
    },

    answered(record: RecordedRequest, status: number) {
      record.status = status;
      if (status === 429) counters.tooMany++;
      if (status === 401) counters.unauthorized++;
    },

    refreshed() {
      counters.refreshes++;
    },

    patched() {
      counters.patches++;
    },

    counts: (): StandinCounts => ({ ...counters, byRoute: { ...counters.byRoute } }),

    resetCounts() {
      counters = zero();
      requests.length = 0;
    },
  };
}

export type StandinLedger = ReturnType<typeof createLedger>;
