// `npm install` on a clean clone must leave the tree clean: npm rewrites the lock file
// whenever its root entry disagrees with package.json (a pinned `0.4.6` against a locked
// `^0.4.6` did exactly that), so the two must declare the same ranges.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { root } from './helpers/cli.ts';

const json = (file: string) => JSON.parse(readFileSync(join(root, file), 'utf8'));

describe('package-lock.json', () => {
  it('its root entry declares exactly the dependency ranges of package.json', () => {
    const pkg = json('package.json');
    const lockRoot = json('package-lock.json').packages[''];
    expect(Object.keys(pkg.devDependencies).length).toBeGreaterThan(0);
    for (const field of ['dependencies', 'devDependencies', 'optionalDependencies', 'peerDependencies'] as const) {
      expect(lockRoot[field] ?? {}, field).toEqual(pkg[field] ?? {});
    }
  });
});
