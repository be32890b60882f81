import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Gradchecks in float64 and the larger parity cases are slow on a 2-core machine.
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Each test file gets its own process: a native crash in one file cannot take the others down,
    // and the addon's thread pool is not shared across worker threads.
    pool: 'forks',
  },
});
