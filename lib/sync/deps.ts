// What the sync's steps need, handed in by the runtime (production) or a test.
import type { Clock } from '../clock.ts';
import type { Db } from '../db/port.ts';
import type { Logger } from '../log.ts';
import type { AmoResources } from '../amocrm/resources.ts';

export interface SyncSettings {
  pipelineId: number;
  /** Stage ids in Tripwire order: index 0 = lesson 1. */
  stageIds: readonly number[];
  maxAttempts: number;
  /** How long an amoCRM request may take before it counts as unanswered. */
  requestTimeoutMs: number;
}

export interface SyncDeps {
  db: Db;
  amo: AmoResources;
  settings: SyncSettings;
  log: Logger;
  clock: Clock;
  random?: () => number;
}
