// The shape of an operator command: it gets a ready database and environment (the entry
// point in scripts/ chose them) and returns the lines to print and an exit code, so the
// same code runs from `npm run amocrm` and from the tests.
import type { Db } from '../db/port.ts';
import { redact } from '../log.ts';
import { failureLines } from './failure.ts';

export type EnvSource = Record<string, string | undefined>;

export interface CommandContext {
  db: Db;
  env: EnvSource;
  now?: () => number;
}

export interface CommandResult {
  /** 0 done, 1 failed, 2 bad arguments. */
  exitCode: number;
  lines: string[];
}

/** The result, every line redacted once more as a safety net. */
export const finish = (exitCode: number, lines: string[]): CommandResult => ({ exitCode, lines: lines.map(redact) });

export const failed = (err: unknown): CommandResult => finish(1, failureLines(err));
