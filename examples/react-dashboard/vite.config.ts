// The client is used from source, as `@realtime-bridge/client` and
// `@realtime-bridge/client/react` would be after `npm install @realtime-bridge/client`.
import { fileURLToPath } from "node:url";

import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const clientSrc = fileURLToPath(new URL("../../clients/js/src/", import.meta.url));

export default defineConfig({
  // Relative asset URLs: dist/ works from any folder or static server.
  base: "./",
  plugins: [react()],
  resolve: {
    alias: [
      { find: /^@realtime-bridge\/client$/, replacement: `${clientSrc}index.ts` },
      { find: /^@realtime-bridge\/client\/react$/, replacement: `${clientSrc}react.ts` },
    ],
    // The hooks' `import "react"` must be this app's React, not a second copy.
    dedupe: ["react", "react-dom"],
  },
  server: { fs: { allow: [".", clientSrc] } },
});
