// A Db port that misbehaves on purpose, for fault tests: calls for which `fail` answers
// true throw a DbError (as a dropped connection or a PostgREST 5xx would), and `hold` can
// park a call until the test lets it go (a slow or frozen function instance).
import { DbError, type Db, type RpcArgs } from '../../lib/db/port.ts';

export interface FaultyDbOptions {
  /** Throw instead of calling the database. `n` counts this function's calls, from 1. */
  fail?: (fn: string, args: RpcArgs | undefined, n: number) => boolean;
  /** Resolve before making the call (e.g. wait for a gate the test opens). */
  hold?: (fn: string, args: RpcArgs | undefined, n: number) => Promise<void> | void;
}

export interface FaultyDb extends Db {
  /** Every call made through this wrapper, in order, with whether it was failed on purpose. */
  calls: { fn: string; failed: boolean }[];
  /** How many calls of `fn` were failed on purpose. */
  failures(fn: string): number;
}

export function faultyDb(db: Db, options: FaultyDbOptions = {}): FaultyDb {
  const seen = new Map<string, number>();
  const calls: FaultyDb['calls'] = [];
  return {
    calls,
    failures: (fn) => calls.filter((c) => c.fn === fn && c.failed).length,
    async rpc<T>(fn: string, args?: RpcArgs): Promise<T> {
      const n = (seen.get(fn) ?? 0) + 1;
      seen.set(fn, n);
      await options.hold?.(fn, args, n);
      if (options.fail?.(fn, args, n)) {
        calls.push({ fn, failed: true });
        throw new DbError(fn, 'injected fault: connection terminated unexpectedly', '08006');
      }
      calls.push({ fn, failed: false });
      return db.rpc<T>(fn, args);
    },
  };
}

/** A promise the test resolves by hand. */
export function gate(): { promise: Promise<void>; open(): void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => { open = resolve; });
  return { promise, open };
}
