// What the sync's steps need, handed in by the runtime (production) or a test.
import type { Clock } from '../clock.ts';
import type { Db } from '../db/port.ts';
import type { Logger } from '../log.ts';
import type { AmoResources } from '../amocrm/resources.ts';
import type { FunnelSource } from '../funnels/source.ts';

export interface SyncSettings {
  /** The funnels in force: each event's pipeline and steps. */
  funnels: FunnelSource;
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
