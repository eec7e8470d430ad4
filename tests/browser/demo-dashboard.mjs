// The demo's trade life cycle on the example dashboard and in the inspector, in headless Chromium.
//
//   node tests/browser/demo-dashboard.mjs '<json config>'
//
// Config: bridgeUrl, serviceKey, anonKey, userToken, challengeId, dashboardUrl,
// artifacts, chromium. Driven by tests/test_browser.py: once both pages are live
// it asks for one demo cycle (`{"request": {"step": "cycle"}}`), then samples the
// DEMO position's P&L cell until the trade shows as closed and the risk alert
// is listed, and prints what it saw as one JSON object.

import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import readline from "node:readline";

import { chromium } from "playwright-core";

const config = JSON.parse(process.argv[2] ?? "{}");
const WAIT_MS = 30_000;
const log = (...parts) => console.error("[browser]", ...parts);
const answers = readline.createInterface({ input: process.stdin });
const replies = answers[Symbol.asyncIterator]();

async function ask(request) {
  process.stdout.write(`${JSON.stringify({ request })}\n`);
  const { value, done } = await replies.next();
  if (done) throw new Error(`no answer to ${JSON.stringify(request)}`);
  return JSON.parse(value);
}

const result = { screenshots: [], pageErrors: [], pnl: [], prices: [] };
const userDataDir = mkdtempSync(path.join(tmpdir(), "rb-chromium-"));
mkdirSync(config.artifacts, { recursive: true });
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: config.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  viewport: { width: 1280, height: 1000 },
});

async function screenshot(name, page) {
  const file = path.join(config.artifacts, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.screenshots.push(file);
}

const text = (page, selector) => page.$eval(selector, (node) => node.textContent.trim()).catch(() => null);

let dashboard = null;
let inspector = null;
try {
  dashboard = await context.newPage();
  dashboard.on("pageerror", (error) => result.pageErrors.push(`dashboard: ${error.message}`));
  await dashboard.goto(
    `${config.dashboardUrl}/?url=${encodeURIComponent(config.bridgeUrl)}` +
      `&apikey=${encodeURIComponent(config.anonKey)}&token=${encodeURIComponent(config.userToken)}`,
  );
  await dashboard.waitForSelector('#mode[data-mode="realtime"]', { timeout: 15_000 });
  await dashboard.waitForSelector(`#challenge[data-id="${config.challengeId}"][data-connected="true"]`, {
    timeout: 15_000,
  });

  inspector = await context.newPage();
  inspector.on("pageerror", (error) => result.pageErrors.push(`inspector: ${error.message}`));
  await inspector.goto(
    `${config.bridgeUrl}/?apikey=${encodeURIComponent(config.serviceKey)}&channel=challenge_${config.challengeId}`,
  );
  await inspector.waitForSelector('#mode[data-mode="realtime"]', { timeout: 15_000 });

  await ask({ step: "cycle" });
  const row = '#positions tr[data-symbol="DEMO"].open';
  await dashboard.waitForSelector(row, { timeout: WAIT_MS });
  const deadline = Date.now() + WAIT_MS;
  // Sample the open position's figures until the exit shows in the trade feed.
  for (;;) {
    const pnl = await text(dashboard, `${row} td.pnl`);
    const price = await text(dashboard, `${row} td.price`);
    if (pnl !== null && result.pnl.at(-1) !== pnl) result.pnl.push(pnl);
    if (price !== null && result.prices.at(-1) !== price) result.prices.push(price);
    const status = await text(dashboard, '#trades li[data-symbol="DEMO"] .status');
    if (status === "closed") break;
    if (Date.now() > deadline) throw new Error(`no exit on the dashboard after ${WAIT_MS} ms (trade: ${status})`);
    await new Promise((resolve) => setTimeout(resolve, 40));
  }
  await screenshot("demo-dashboard-exit", dashboard);
  result.trade = await dashboard.$eval('#trades li[data-symbol="DEMO"]', (node) =>
    [...node.children].map((child) => child.textContent.trim()),
  );
  result.closedRows = await dashboard.$$eval('#positions tr[data-symbol="DEMO"].closed', (rows) => rows.length);
  await dashboard.waitForSelector("#risk-alerts li.alert", { timeout: WAIT_MS });
  result.alerts = await dashboard.$$eval("#risk-alerts li.alert", (items) => items.map((item) => item.textContent.trim()));
  result.challenge = {
    equity: await text(dashboard, "#challenge-equity"),
    drawdown: await text(dashboard, "#challenge-drawdown"),
    lastTrade: await text(dashboard, "#challenge-last-trade"),
    status: await text(dashboard, "#challenge-status"),
  };
  await dashboard.waitForFunction(
    () => document.querySelector("#portfolio-value strong")?.textContent === "$9,550.00",
    null,
    { timeout: WAIT_MS },
  );
  result.portfolioValue = await text(dashboard, "#portfolio-value strong");
  await screenshot("demo-dashboard-alert", dashboard);

  await inspector.waitForFunction(
    () => [...document.querySelectorAll("#events li")].some((li) => li.textContent.includes("RISK_ALERT")),
    null,
    { timeout: WAIT_MS },
  );
  result.inspectorEvents = await inspector.$$eval("#events li", (items) =>
    items.map((item) => JSON.parse(item.querySelector("pre.payload")?.textContent ?? "{}").event ?? null),
  );
  await screenshot("demo-inspector", inspector);
  result.ok = true;
} catch (error) {
  result.ok = false;
  result.error = String(error?.stack ?? error);
  if (dashboard) await screenshot("demo-dashboard-failure", dashboard).catch(() => {});
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
  answers.close();
}
log(JSON.stringify({ pnl: result.pnl, prices: result.prices }));
process.stdout.write(`${JSON.stringify(result)}\n`);
