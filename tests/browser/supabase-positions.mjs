// Drives the supabase-js example of the docs (examples/react-dashboard/supabase.html,
// the hook in src/supabase/usePositions.ts) in headless Chromium against a running
// bridge, and prints what the page showed as one JSON object.
//
//   node tests/browser/supabase-positions.mjs '<json config>'
//
// Config: bridgeUrl, anonKey, userToken, dashboardUrl, artifacts, chromium.
// For each step (insert, update, delete) the script asks the Python test to make
// that write in Postgres (a JSON line `{"request": {"step": ...}}` on stdout,
// answered with one JSON line on stdin) and waits for the list to show it.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";

import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2] ?? "{}");
const WAIT_MS = 5000;
const log = (...parts) => console.error("[supabase-js]", ...parts);
const replies = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function ask(request) {
  process.stdout.write(`${JSON.stringify({ request })}\n`);
  const { value, done } = await replies.next();
  if (done) throw new Error(`no answer to ${JSON.stringify(request)}`);
  return JSON.parse(value);
}

const result = { ok: false, steps: {}, pageErrors: [], consoleErrors: [] };
const userDataDir = mkdtempSync(path.join(tmpdir(), "rb-chromium-"));
mkdirSync(config.artifacts, { recursive: true });
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: config.chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  viewport: { width: 800, height: 600 },
});

const rows = (page) => page.$$eval("#positions li", (items) => items.map((item) => item.textContent ?? ""));

async function until(page, what, predicate) {
  const deadline = Date.now() + WAIT_MS;
  let seen = await rows(page);
  while (!predicate(seen)) {
    if (Date.now() > deadline) throw new Error(`${what}: the list shows ${JSON.stringify(seen)}`);
    await page.waitForTimeout(25);
    seen = await rows(page);
  }
  return seen;
}

try {
  const page = await context.newPage();
  page.on("pageerror", (error) => result.pageErrors.push(String(error)));
  page.on("console", (message) => {
    if (message.type() === "error") result.consoleErrors.push(message.text());
  });
  const query = new URLSearchParams({ url: config.bridgeUrl, apikey: config.anonKey, token: config.userToken });
  // Joined once the bridge has answered the channel's phx_join.
  const joined = page.waitForEvent("websocket").then((socket) =>
    socket.waitForEvent("framereceived", {
      predicate: (frame) => String(frame.payload).includes("realtime:position-updates") && String(frame.payload).includes("phx_reply"),
      timeout: WAIT_MS,
    }),
  );
  await page.goto(`${config.dashboardUrl}/supabase.html?${query}`);
  await joined;
  await page.waitForTimeout(300); // StrictMode mounts, unmounts and mounts again: let it settle

  for (const [step, expected] of [
    ["insert", ["SBJ @ 100"]],
    ["update", ["SBJ @ 125"]],
    ["delete", []],
  ]) {
    const started = Date.now();
    await ask({ step });
    const seen = await until(page, step, (now) => JSON.stringify(now) === JSON.stringify(expected));
    result.steps[step] = { rows: seen, ms: Date.now() - started };
    log(step, JSON.stringify(result.steps[step]));
  }
  // The deleted row must stay deleted (the bug: a second binding put it back).
  await page.waitForTimeout(500);
  result.afterDelete = await rows(page);
  await page.screenshot({ path: path.join(config.artifacts, "supabase-positions.png") });
  result.ok = true;
} catch (error) {
  result.error = String(error?.stack ?? error);
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
process.stdout.write(`${JSON.stringify(result)}\n`);
