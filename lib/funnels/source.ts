// The funnels an invocation works with, read from the database and kept while warm. Claimed
// events carry the version in force (amocrm.event_json), so the funnels are read again only
// when a newer version is saved; the first read saves today's environment as version 1
// when none is saved yet. Without them and with none saved, the answer is the ConfigError
// that says what to set.
import { noFunnelError } from '../config.ts';
import { currentFunnels, ensureFunnels } from '../db/funnels.ts';
import type { Db } from '../db/port.ts';
import type { Funnel } from './model.ts';

export interface FunnelSource {
  /** The funnels in force; `version` (from a claimed event) says which the caller saw. */
  current(version?: number | null): Promise<Funnel[]>;
}

/** `env`: the pipeline and stages of today's variables, version 1 while none is saved (null: unset). */
export function databaseFunnels(db: Db, env: { pipelineId: number; stageIds: readonly number[] } | null): FunnelSource {
  let cached: { version: number; funnels: Funnel[] } | undefined;
  let reading: Promise<Funnel[]> | undefined;
  return {
    current(version) {
      if (cached && (version === undefined || version === cached.version)) return Promise.resolve(cached.funnels);
      reading ??= (env ? ensureFunnels(db, env) : currentFunnels(db))
        .then((config) => {
          if (!config) throw noFunnelError();
          cached = { version: config.version, funnels: config.funnels };
          return config.funnels;
        })
        .finally(() => { reading = undefined; });
      return reading;
    },
  };
}
