// `@realtime-bridge/client` is installed as a user installs it (package.json:
// "file:../../clients/js", built by `make example`), through its package exports.
import { fileURLToPath } from "node:url";

import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// npm links the folder: Vite sees the client's real path, outside this app.
const clientDir = fileURLToPath(new URL("../../clients/js/", import.meta.url));

export default defineConfig({
  // Relative asset URLs: dist/ works from any folder or static server.
  base: "./",
  plugins: [react()],
  resolve: {
    // The hooks' `import "react"` must be this app's React, not the client's dev copy.
    dedupe: ["react", "react-dom"],
  },
  build: {
    rollupOptions: {
      input: {
        main: fileURLToPath(new URL("index.html", import.meta.url)),
        supabase: fileURLToPath(new URL("supabase.html", import.meta.url)),
      },
    },
  },
  server: { fs: { allow: [".", clientDir] } },
});
