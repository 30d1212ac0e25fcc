// A database that waits out a short outage. The drainer has minutes, and a burst must not
// stop for a 30 s blip of Supabase's API: a call that could not reach the database is
// tried again with backoff until the caller's deadline. A call the database answered with
// an error (a raise, a constraint) is not: trying again would answer the same.
import type { Clock } from '../clock.ts';
import { DbError, type Db } from './port.ts';

const FIRST_PAUSE_MS = 250;
const LONGEST_PAUSE_MS = 4_000;

/** Connection failures (SQLSTATE 08, 53, 57, 58; PostgREST's PGRST00x; Node's E… codes; none at all). */
export const unreachable = (err: unknown): boolean => {
  if (!(err instanceof DbError)) return false;
  const code = err.code ?? '';
  return code === '' || /^(08|53|57|58)/.test(code) || /^PGRST00\d$/.test(code) || /^E[A-Z]+$/.test(code);
};

export function patientDb(db: Db, clock: Clock, deadline: () => number, onWait?: (err: DbError, pauseMs: number) => void): Db {
  return {
    async rpc<T>(fn: string, args?: Record<string, unknown>): Promise<T> {
      for (let pause = FIRST_PAUSE_MS; ; pause = Math.min(pause * 2, LONGEST_PAUSE_MS)) {
        try {
          return await db.rpc<T>(fn, args);
        } catch (err) {
          if (!unreachable(err) || clock.now() + pause > deadline()) throw err;
          onWait?.(err as DbError, pause);
          await clock.sleep(pause);
        }
      }
    },
  };
}
