/**
 * The package as users install it: the built entry points resolve by name
 * (`npm run build` first; `make js-test` does), there are no runtime
 * dependencies, and React is an optional peer.
 */

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { expect, test } from "vitest";

const manifest = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
  name: string;
  type: string;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
  devDependencies: Record<string, string>;
};

test("no runtime dependencies; React is an optional peer; tools are pinned exactly", () => {
  expect(manifest.name).toBe("@realtime-bridge/client");
  expect(manifest.type).toBe("module");
  expect(manifest.dependencies ?? {}).toEqual({});
  expect(Object.keys(manifest.peerDependencies ?? {})).toEqual(["react"]);
  expect(manifest.peerDependenciesMeta?.react?.optional).toBe(true);
  for (const [name, version] of Object.entries(manifest.devDependencies)) {
    expect(version, name).toMatch(/^\d+\.\d+\.\d+$/);
  }
});

test("the built entry points import by package name", async () => {
  expect(existsSync(new URL("../dist/index.js", import.meta.url)), "run `npm run build` first").toBe(true);
  // Specifiers in variables: typechecking must not depend on a build.
  const names = { main: "@realtime-bridge/client", react: "@realtime-bridge/client/react" };
  const main = (await import(names.main)) as typeof import("../src/index.js");
  expect(typeof main.createClient).toBe("function");
  expect(Object.keys(main.CHANNELS)).toEqual(
    expect.arrayContaining(["portfolio-updates", "position-updates", "trade-updates", "bot-updates", "order-updates"]),
  );
  const react = (await import(names.react)) as typeof import("../src/react.js");
  const hooks = ["useRealtimePositions", "useRealtimeTrades", "usePortfolio", "useChannel", "useLiveChallenge"] as const;
  const botHooks = ["useBotUpdates", "useOrderUpdates", "useActivityLogUpdates", "usePnLUpdates"] as const;
  for (const hook of [...hooks, ...botHooks]) {
    expect(typeof react[hook]).toBe("function");
  }
  expect(typeof react.RealtimeBridgeProvider).toBe("function");
});

test("the runtime code imports nothing but itself (and React, in the hooks)", () => {
  const files = ["index", "client", "backoff", "environment", "filters", "records", "protocol", "react", "poll", "snapshot"];
  for (const file of [...files, "bot-hooks", "challenge"]) {
    const source = readFileSync(new URL(`../dist/${file}.js`, import.meta.url), "utf8");
    const imports = [...source.matchAll(/from\s+"([^"]+)"/g)].map((m) => m[1]);
    for (const specifier of imports) {
      if ((file === "react" || file === "bot-hooks" || file === "challenge") && specifier === "react") continue;
      expect(specifier, `${file}.js imports ${specifier}`).toMatch(/^\.\//);
    }
  }
});

test("the npm pack tarball installs and imports by name outside this folder", () => {
  const root = fileURLToPath(new URL("..", import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), "rb-pack-"));
  try {
    const packed = JSON.parse(
      execFileSync("npm", ["pack", "--json", "--pack-destination", dir, "--loglevel=error"], { cwd: root, encoding: "utf8" }),
    ) as { filename: string; files: { path: string }[] }[];
    const files = packed[0]!.files.map((file) => file.path);
    for (const entry of ["package.json", "dist/index.js", "dist/index.d.ts", "dist/react.js", "dist/react.d.ts"]) {
      expect(files, entry).toContain(entry);
    }
    expect(files.filter((file) => file.startsWith("test/") || file.includes("node_modules"))).toEqual([]);
    const target = join(dir, "app", "node_modules", "@realtime-bridge", "client");
    mkdirSync(target, { recursive: true });
    execFileSync("tar", ["xzf", join(dir, packed[0]!.filename), "-C", target, "--strip-components=1"]);
    const script = 'import("@realtime-bridge/client").then((m) => console.log(typeof m.createClient))';
    const out = execFileSync("node", ["--input-type=module", "-e", script], { cwd: join(dir, "app"), encoding: "utf8" });
    expect(out.trim()).toBe("function");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
