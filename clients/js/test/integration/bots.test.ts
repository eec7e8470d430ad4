// @vitest-environment happy-dom
/**
 * The bot hooks against the real bridge: bots, orders (a fill announced
 * once), activity-log lines and P&L arrive as they commit; a user token sees
 * only its own rows ("1" and "0001" are different users); unmounting
 * unsubscribes.
 */

import { expect, inject, test } from "vitest";

import {
  useActivityLogUpdates,
  useBotUpdates,
  useOrderUpdates,
  usePnLUpdates,
} from "../../src/react.js";
import type { BridgeInfo } from "../support/bridge.js";
import { sql, userToken } from "../support/bridge.js";
import { mount, track } from "../support/cleanup.js";
import { testClient, uniqueUser, until } from "../support/helpers.js";

const bridge = inject("bridge");

/** Ids no other test uses (the bridge is shared; explicit ids keep the SQL one round trip). */
let nextId = 700_000_000 + Math.floor(Math.random() * 1_000_000) * 10;
const newId = () => ++nextId;

function botRow(id: number, user: string, ticker = "BTC/USDT"): string {
  return `INSERT INTO bots (id, user_id, ticker, exchange, quantity) VALUES (${id}, '${user}', '${ticker}', 'binance', 1)`;
}

async function asUser(user: string) {
  const token = await userToken(bridge.dataDir, user, 600);
  return track(testClient(bridge, { apiKey: bridge.anonKey, accessToken: token }));
}

/** Resolve when the async `check()` is true, polling every 20 ms; fail after 10 s. */
async function eventually(check: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function subscriptions(info: BridgeInfo, channel: string): Promise<number> {
  const response = await fetch(`${info.url}/api/stats`, {
    headers: { Authorization: `Bearer ${info.serviceKey}` },
  });
  const stats = (await response.json()) as { subscriptions: Record<string, number> };
  return stats.subscriptions[channel] ?? 0;
}

test("useBotUpdates and usePnLUpdates: created, updated, deleted, each user's own only", async () => {
  const [one, zeroOne] = [await asUser("1"), await asUser("0001")];
  const mine = mount(() => useBotUpdates([]), one);
  const theirs = mount(() => useBotUpdates([]), zeroOne);
  const pnl = mount(() => usePnLUpdates([]), one);
  await until(() => mine.result.current.mode === "realtime" && theirs.result.current.mode === "realtime", "realtime");
  await eventually(async () => (await subscriptions(bridge, "pnl-updates")) >= 1, "subscribed");

  const [a, b, c] = [newId(), newId(), newId()];
  await sql(
    bridge,
    botRow(a, "1"),
    botRow(b, "0001", "ETH/USDT"),
    botRow(c, "1", "SOL/USDT"),
    `UPDATE bots SET status = 'ACTIVE' WHERE id = ${a}`,
    `UPDATE bots SET pnl = 12.5 WHERE id = ${a}`,
    `UPDATE bots SET pnl = -2 WHERE id = ${c}`,
  );
  await until(() => pnl.result.current.pnlByBot[String(a)] === 12.5, "bot a's P&L");
  await until(() => pnl.result.current.pnlByBot[String(c)] === -2, "bot c's P&L");
  expect(pnl.result.current.totalPnl).toBe(10.5);
  await until(() => mine.result.current.bots.length === 2 && mine.result.current.bots[0]?.status === "ACTIVE", "bots");
  expect(mine.result.current.bots.map((bot) => [bot.id, bot.ticker])).toEqual([
    [a, "BTC/USDT"],
    [c, "SOL/USDT"],
  ]);
  expect(mine.result.current.lastEvent?.event).toBe("bot_updated");

  await sql(bridge, `DELETE FROM bots WHERE id = ${a}`);
  await until(() => mine.result.current.bots.length === 1, "the deletion");
  expect(mine.result.current.lastEvent).toMatchObject({ event: "bot_deleted", bot: { id: a } });
  expect(mine.result.current.bots[0]?.id).toBe(c);
  // A published bot_deleted (a BROADCAST carrying the bot) removes it too.
  const published = await fetch(`${bridge.url}/api/broadcast`, {
    method: "POST",
    headers: { Authorization: `Bearer ${bridge.serviceKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({
      channel: "bot-updates",
      event: "bot_deleted",
      payload: { id: c, user_id: "1", ticker: "SOL/USDT", exchange: "binance", quantity: 1 },
    }),
  });
  expect(published.status).toBe(202);
  await until(() => mine.result.current.bots.length === 0, "the published deletion");
  expect(mine.result.current.lastEvent).toMatchObject({ event: "bot_deleted", bot: { id: c } });
  // "0001" saw its own bot and nothing of "1"'s.
  await until(() => theirs.result.current.bots.length === 1, "the other user's bot");
  expect(theirs.result.current.bots.map((bot) => bot.id)).toEqual([b]);
  expect(theirs.result.current.lastEvent?.event).toBe("bot_created");
  expect(Object.keys(pnl.result.current.pnlByBot)).not.toContain(String(b));
});

test("useOrderUpdates: every change updates the order, the fill is announced once", async () => {
  const user = uniqueUser("orders");
  const client = await asUser(user);
  const view = mount(() => useOrderUpdates([], { botId: undefined }), client);
  const [bot, otherBot, order, other] = [newId(), newId(), newId(), newId()];
  await sql(bridge, botRow(bot, user), botRow(otherBot, user));
  const onlyOther = mount(() => useOrderUpdates([], { botId: otherBot }), client);
  await eventually(async () => (await subscriptions(bridge, "order-updates")) >= 2, "subscribed");

  const insert = (id: number, botId: number, status = "PENDING") =>
    `INSERT INTO orders (id, user_id, bot_id, ticker, exchange, side, price, quantity, status) ` +
    `VALUES (${id}, '${user}', ${botId}, 'BTC/USDT', 'binance', 'BUY', 100, 2, '${status}')`;
  await sql(
    bridge,
    insert(order, bot),
    `UPDATE orders SET status = 'PARTIALLY_FILLED', filled_quantity = 1 WHERE id = ${order}`,
    `UPDATE orders SET status = 'FILLED', filled_quantity = 2 WHERE id = ${order}`,
    `UPDATE orders SET average_fill_price = 99.5 WHERE id = ${order}`,
    insert(other, otherBot, "FILLED"),
  );
  await until(() => view.result.current.orders.length === 2, "both orders");
  await until(() => view.result.current.orders[0]?.average_fill_price === 99.5, "the update after the fill");
  expect(view.result.current.fills.map((fill) => fill.id)).toEqual([other, order]);
  expect(view.result.current.lastFill).toMatchObject({ id: other, order_id: other, status: "FILLED" });
  expect(view.result.current.orders[0]).toMatchObject({ id: order, status: "FILLED", filled_quantity: 2 });
  // botId narrows the subscription to that bot's orders.
  await until(() => onlyOther.result.current.orders.length === 1, "the other bot's order");
  expect(onlyOther.result.current.orders[0]?.bot_id).toBe(otherBot);
  expect(onlyOther.result.current.fills.map((fill) => fill.id)).toEqual([other]);
});

test("useActivityLogUpdates lists new lines newest first; unmounting unsubscribes", async () => {
  const user = uniqueUser("logs");
  const client = await asUser(user);
  const before = await subscriptions(bridge, "activity-logs");
  const view = mount(() => useActivityLogUpdates([]), client);
  await eventually(async () => (await subscriptions(bridge, "activity-logs")) === before + 1, "subscribed");
  const bot = newId();
  const [first, second] = [newId(), newId()];
  await sql(
    bridge,
    botRow(bot, user),
    `INSERT INTO activity_logs (id, user_id, bot_id, level, message) VALUES (${first}, '${user}', ${bot}, 'SUCCESS', 'Bot started')`,
    `INSERT INTO activity_logs (id, user_id, level, message) VALUES (${second}, '${user}', 'WARNING', 'Low balance')`,
    `UPDATE activity_logs SET message = 'edited' WHERE id = ${first}`,
  );
  await until(() => view.result.current.logs.length === 2, "two lines");
  expect(view.result.current.logs.map((line) => [line.id, line.level, line.message, line.botId])).toEqual([
    [second, "WARNING", "Low balance", null],
    [first, "SUCCESS", "Bot started", bot],
  ]);
  expect(view.result.current.latest?.id).toBe(second);

  view.unmount();
  await eventually(async () => (await subscriptions(bridge, "activity-logs")) === before, "unsubscribed");
});
