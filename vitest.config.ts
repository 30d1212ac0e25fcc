import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // PGlite boots in ~1 s per database; two workers match the 2-core machine.
    maxWorkers: 2,
  },
});
