import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["./test/support/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // The integration files mostly wait on the network: overlap them even on
    // a 2-core machine (the default there would be one file at a time).
    maxWorkers: 4,
  },
});
