import { defineConfig } from "vitest/config";

// C_Initialize/C_Finalize are process-wide: every test file runs in its own forked process with its
// own SoftHSM2 token directory. Two workers match the 2-core machines this runs on.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    fileParallelism: true,
  },
});
