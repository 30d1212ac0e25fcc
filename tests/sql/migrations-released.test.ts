// Released migrations never change. supabase/migrations.sha256 lists every migration of a
// release (sha256 and file name, as `sha256sum` writes them); a database that applied one
// never applies it again, so an edit would reach fresh databases only and the two would
// drift apart. A change goes into a new migration, which stays unlisted (unreleased) until
// the next release adds it to the list.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
const LIST = 'supabase/migrations.sha256';

const released = readFileSync(join(root, LIST), 'utf8')
  .split('\n')
  .map((l) => l.trim())
  .filter((l) => l && !l.startsWith('#'))
  .map((l) => {
    const m = /^([0-9a-f]{64})\s+\*?(\S+)$/.exec(l);
    if (!m) throw new Error(`${LIST}: not "<sha256>  <file>": ${l}`);
    return { sha256: m[1]!, file: m[2]! };
  });

describe('released migrations are never changed', () => {
  it(`${LIST} lists migrations`, () => {
    expect(released.length).toBeGreaterThan(0);
  });

  it.each(released)('$file', ({ sha256, file }) => {
    const path = join(root, file);
    if (!existsSync(path)) {
      expect.fail(`${file} is listed in ${LIST} as released but is missing: released migrations never change: put the change in a new migration`);
    }
    const actual = createHash('sha256').update(readFileSync(path)).digest('hex');
    if (actual !== sha256) {
      expect.fail(
        `${file} changed after its release (sha256 ${actual}, released as ${sha256}): ` +
          `released migrations never change: put the change in a new migration`,
      );
    }
  });
});
