// Drives the web inspector and the example dashboard in headless Chromium
// against a running bridge, and prints what it saw as one JSON object.
//
//   node tests/browser/live-pages.mjs '<json config>'
//
// Config: bridgeUrl, serviceKey, anonKey, userToken, userId, dashboardUrl,
// artifacts (a folder for screenshots), chromium (the executable).
// Driven by tests/test_browser.py, which asserts on the output. Requests to
// the test (a JSON line `{"request": ...}` on stdout) are answered with one
// JSON line on stdin, after the test wrote to Postgres itself.
//
// Phases, each checked on both pages:
//   realtime: a row written through the bridge's testing API (a real INSERT
//             in Postgres) appears on the page; a price UPDATE made by the
//             test in Postgres changes the row's P&L;
//   polling:  every WebSocket to the bridge is cut and new ones are refused
//             (Playwright's routeWebSocket), so the client falls back to
//             long-polling: the page says so and still updates;
//   back:     sockets are allowed again: the client's probe finds the socket
//             and the page returns to realtime, and still updates.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";

import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2] ?? "{}");
const WAIT_MS = 5000; // generous upper bound; the Python test asserts the real figure
// Short reconnect / fallback timings so that a fallback and a return take seconds, not minutes.
const TIMINGS = "reconnectMs=200&fallbackAfter=2&probeMs=1500";

const log = (...parts) => console.error("[browser]", ...parts);
const answers = readline.createInterface({ input: process.stdin });
const replies = answers[Symbol.asyncIterator]();

/** Ask the Python test to do something (e.g. an UPDATE in Postgres); resolves when it is done. */
async function ask(request) {
  process.stdout.write(`${JSON.stringify({ request })}\n`);
  const { value, done } = await replies.next();
  if (done) throw new Error(`no answer to ${JSON.stringify(request)}`);
  return JSON.parse(value);
}
const result = { pages: {}, phases: {}, screenshots: [], pageErrors: [], consoleErrors: [] };

function signal(symbol) {
  return fetch(`${config.bridgeUrl}/api/testing/simulate-signal`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${config.serviceKey}` },
    body: JSON.stringify({
      symbol,
      signal_type: "BUY",
      entry_price: 101.25,
      quantity: 3,
      user_id: config.userId,
    }),
  }).then(async (response) => {
    if (response.status !== 201) throw new Error(`simulate-signal: ${response.status} ${await response.text()}`);
    return response.json();
  });
}

const pages = {
  inspector: {
    url:
      `${config.bridgeUrl}/?apikey=${encodeURIComponent(config.serviceKey)}` +
      `&channel=position-updates&filter=${encodeURIComponent(`user_id=eq.${config.userId}`)}&${TIMINGS}`,
    // The inspector lists each event with a preview that names the symbol.
    row: (symbol) => ({ selector: "#events li", text: `symbol=${symbol}` }),
  },
  dashboard: {
    url:
      `${config.dashboardUrl}/?url=${encodeURIComponent(config.bridgeUrl)}` +
      `&apikey=${encodeURIComponent(config.anonKey)}&token=${encodeURIComponent(config.userToken)}&${TIMINGS}`,
    row: (symbol) => ({ selector: `#positions tr[data-symbol="${symbol}"]`, text: symbol }),
  },
};

async function waitForMode(page, mode) {
  await page.waitForSelector(`#mode[data-mode="${mode}"]`, { timeout: 15_000 });
}

async function screenshot(name, page) {
  const file = path.join(config.artifacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.screenshots.push(file);
}

/**
 * Start watching `page` for an element matching `selector` whose text holds
 * `text`; the returned function resolves with the page's clock (ms) when it
 * appeared, or null after WAIT_MS. A MutationObserver in the page notes the
 * moment itself, so Playwright's own polling does not count.
 */
async function watchFor(page, { selector, text }) {
  const key = `watch-${Math.random()}`;
  await page.evaluate(
    ({ key, selector, text, waitMs }) => {
      window[key] = new Promise((resolve) => {
        const found = () =>
          [...document.querySelectorAll(selector)].some((node) => node.textContent.includes(text));
        const done = (value) => {
          observer.disconnect();
          clearTimeout(timer);
          resolve(value);
        };
        const observer = new MutationObserver(() => found() && done(Date.now()));
        const timer = setTimeout(() => done(null), waitMs);
        observer.observe(document.body, { childList: true, subtree: true, characterData: true });
        if (found()) done(Date.now());
      });
    },
    { key, selector, text, waitMs: WAIT_MS },
  );
  return () => page.evaluate((key) => window[key], key);
}

/** Time from `write()` returning (its commit) to each of `targets` on screen. */
async function timeToScreen(targets, write) {
  const watches = await Promise.all(targets.map(([, page, target]) => watchFor(page, target)));
  const value = await write();
  const wrote = Date.now();
  const figures = { value };
  await Promise.all(
    targets.map(async ([name, page, target], index) => {
      const at = await watches[index]();
      if (at === null) throw new Error(`${name}: ${JSON.stringify(target)} not on screen after ${WAIT_MS} ms`);
      figures[`${name}Ms`] = at - wrote;
      figures[`${name}Mode`] = await page.getAttribute("#mode", "data-mode");
    }),
  );
  return figures;
}

/** Write a position (and its trade) through the bridge; time how long until each page shows it. */
async function rowAppears(phase, symbol) {
  const targets = Object.entries(pages).map(([name, spec]) => [name, spec.page, spec.row(symbol)]);
  const { value: written, ...figures } = await timeToScreen(targets, () => signal(symbol));
  Object.assign(figures, { symbol, positionId: written.position.id });
  result.phases[phase] = figures;
  log(phase, JSON.stringify(figures));
}

const userDataDir = mkdtempSync(path.join(tmpdir(), "rb-chromium-"));
mkdirSync(config.artifacts, { recursive: true });
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: config.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
  ],
  viewport: { width: 1280, height: 800 },
});

try {
  // Every bridge socket goes through here: passed to the server, or refused while blocked.
  let blocked = false;
  const live = new Set();
  await context.routeWebSocket(/\/ws\/db_subscriptions/, (ws) => {
    if (blocked) {
      ws.close(); // the page's socket never opens
      return;
    }
    ws.connectToServer();
    live.add(ws);
    ws.onClose(() => live.delete(ws));
  });

  for (const [name, spec] of Object.entries(pages)) {
    const page = await context.newPage();
    page.on("pageerror", (error) => result.pageErrors.push(`${name}: ${error.message}`));
    page.on("console", (message) => {
      if (message.type() === "error") result.consoleErrors.push(`${name}: ${message.text()}`);
    });
    spec.page = page;
    await page.goto(spec.url);
    await waitForMode(page, "realtime");
  }

  // The inspector, at a glance: health, clients, channels (from /health and /api/stats).
  const inspector = pages.inspector.page;
  await inspector.waitForFunction(() => {
    const clients = Number(document.querySelector("#clients")?.textContent);
    return clients >= 2 && document.querySelector('#channel-rows tr[data-channel="position-updates"]');
  }, undefined, { timeout: 10_000 });
  result.pages.inspector = {
    bridgeStatus: await inspector.getAttribute("#bridge-status", "data-status"),
    clients: Number(await inspector.textContent("#clients")),
    channels: await inspector.$$eval("#channel-rows tr", (rows) => rows.map((row) => row.dataset.channel)),
    watchStatus: await inspector.textContent("#watch-status"),
  };

  // 1. realtime
  await rowAppears("realtime", "RTA");
  const dashboard = pages.dashboard.page;
  // The inspector's newest event: seq, latency, and its payload expands.
  const first = inspector.locator("#events li").first();
  await first.locator("summary").click();
  result.pages.inspector.firstEvent = {
    seq: await first.getAttribute("data-seq"),
    latency: await first.locator(".latency").textContent(),
    payloadVisible: await first.locator(".payload").isVisible(),
    payload: JSON.parse(await first.locator(".payload").textContent()),
  };
  result.pages.inspector.rate = await inspector.textContent("#rate");
  result.pages.dashboard = {
    rows: await dashboard.$$eval("#positions tbody tr[data-symbol]", (rows) => rows.map((row) => row.dataset.symbol)),
    portfolioValue: await dashboard.textContent("#portfolio-value strong"),
    trades: await dashboard.$$eval("#trades li[data-symbol]", (items) => items.map((item) => item.dataset.symbol)),
  };
  // A price change made directly in Postgres: the row updates in place, with its P&L.
  const { value: _answer, ...update } = await timeToScreen(
    [
      ["dashboard", dashboard, { selector: '#positions tr[data-symbol="RTA"] td.pnl', text: "$26.25" }],
      ["inspector", inspector, { selector: '#events li[data-operation="UPDATE"]', text: "symbol=RTA" }],
    ],
    () => ask({ reprice: result.phases.realtime.positionId, price: 110 }),
  );
  result.phases.update = update;
  result.pages.dashboard.repriced = {
    pnl: await dashboard.textContent('#positions tr[data-symbol="RTA"] td.pnl'),
    pnlPct: await dashboard.textContent('#positions tr[data-symbol="RTA"] td.pnl-pct'),
    unrealized: await dashboard.textContent("#unrealized-pnl strong"),
  };
  log("update", JSON.stringify(result.phases.update), JSON.stringify(result.pages.dashboard.repriced));
  await screenshot("inspector-realtime", inspector);
  await screenshot("dashboard-realtime", dashboard);

  // 2. block the socket: cut the open ones, refuse new ones
  blocked = true;
  const cut = live.size;
  for (const ws of [...live]) await ws.close({ code: 4000, reason: "blocked by the test" });
  const blockedAt = Date.now();
  await Promise.all(Object.values(pages).map((spec) => waitForMode(spec.page, "polling")));
  result.fallbackMs = Date.now() - blockedAt;
  result.socketsCut = cut;
  await rowAppears("polling", "PLA");
  await screenshot("inspector-polling", inspector);
  await screenshot("dashboard-polling", dashboard);

  // 3. unblock: the next probe opens the socket again
  blocked = false;
  const unblockedAt = Date.now();
  await Promise.all(Object.values(pages).map((spec) => waitForMode(spec.page, "realtime")));
  result.recoveryMs = Date.now() - unblockedAt;
  await rowAppears("back", "BKA");
  await screenshot("inspector-back", inspector);
  await screenshot("dashboard-back", dashboard);

  result.pages.dashboard.finalRows = await dashboard.$$eval("#positions tbody tr[data-symbol]", (rows) =>
    rows.map((row) => row.dataset.symbol),
  );
  result.pages.inspector.finalSeqs = await inspector.$$eval("#events li", (items) =>
    items.map((item) => Number(item.dataset.seq)),
  );
  log("fallback after", result.fallbackMs, "ms; back to realtime after", result.recoveryMs, "ms");
  result.ok = true;
} catch (error) {
  result.ok = false;
  result.error = String(error?.stack ?? error);
  for (const [name, spec] of Object.entries(pages)) {
    if (spec.page) await screenshot(`${name}-failure`, spec.page).catch(() => {});
  }
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
  answers.close(); // stdin would keep node running
}

process.stdout.write(`${JSON.stringify(result)}\n`);
