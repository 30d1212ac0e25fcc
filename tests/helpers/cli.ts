// Runs an entry point (scripts/*.ts, dev/start.ts) as its own process, the way an operator
// does: node with tsx's loader, in a directory of the test's choosing (so whether a .env
// exists is the test's decision), without the developer's AMOCRM_* / SUPABASE_* /
// DATABASE_URL / PORT in its environment unless the test passes them.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const TSX_LOADER = pathToFileURL(join(root, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

const INHERITED_OUT = /^(AMOCRM_|SUPABASE_)|^(DATABASE_URL|PORT|DEBUG)$/;

export function runScript(
  script: string,
  args: string[] = [],
  options: { cwd?: string; env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): Promise<CliRun> {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !INHERITED_OUT.test(k)));
  for (const [k, v] of Object.entries(options.env ?? {})) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', TSX_LOADER, join(root, script), ...args], {
      cwd: options.cwd ?? root, env, stdio: ['ignore', 'pipe', 'pipe'], timeout: options.timeoutMs ?? 120_000,
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      if (signal) reject(new Error(`${script} ${args.join(' ')} killed by ${signal}:\n${stdout}\n${stderr}`));
      else resolve({ code, stdout, stderr });
    });
  });
}

/** The last non-empty line of a stream. */
export const lastLine = (text: string): string => text.trimEnd().split('\n').at(-1) ?? '';

/** What a stack trace or Node's crash report leaves in the output. */
export const CRASH_TRACE = /^\s+at .+:\d+:\d+\)?$|^Node\.js v\d+|^\S*Error(?: \[\w+\])?: |^\s*\[cause\]|node:internal/m;

/** A fresh empty directory (no .env), removed by the returned function. */
export function emptyDirectory(): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), 'amocrm-cli-'));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}
