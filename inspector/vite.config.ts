// The inspector is served by the bridge itself: `/` answers with index.html and
// `/inspector/assets/*` with the hashed bundles, so `base` is `/inspector/`.
// The TypeScript client is used from source (no separate build of clients/js).
import { fileURLToPath } from "node:url";

import { defineConfig } from "vite";

const clientSrc = fileURLToPath(new URL("../clients/js/src/", import.meta.url));
const bridge = process.env.BRIDGE_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  base: "/inspector/",
  resolve: {
    alias: [{ find: /^@realtime-bridge\/client$/, replacement: `${clientSrc}index.ts` }],
  },
  build: {
    outDir: fileURLToPath(new URL("../realtime_bridge/static/inspector/", import.meta.url)),
    emptyOutDir: true,
    // No source maps: the build is committed and shipped inside the wheel.
    sourcemap: false,
  },
  server: {
    // `npm run dev` against `make run`: the page talks to the bridge through this proxy.
    fs: { allow: [".", clientSrc] },
    proxy: {
      "/api": bridge,
      "/health": bridge,
      "/ws": { target: bridge, ws: true },
    },
  },
});
