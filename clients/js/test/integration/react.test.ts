// @vitest-environment happy-dom
/**
 * The hooks in a (happy-dom) page against the real bridge: live typed
 * positions through INSERT, UPDATE (also out of a filter) and DELETE, and the
 * browser's offline / online events.
 */

import { expect, inject, test } from "vitest";

import { useRealtimePositions } from "../../src/react.js";
import { sql } from "../support/bridge.js";
import { simulate, testClient, uniqueUser, until } from "../support/helpers.js";
import { mount, onCleanup } from "../support/cleanup.js";

const bridge = inject("bridge");

test("useRealtimePositions shows inserts, updates and deletes as they commit", async () => {
  const user = uniqueUser("hooks");
  // The browser's own online/offline events (happy-dom's window), not a test double.
  const client = testClient(bridge, { environment: undefined });
  onCleanup(() => client.close());
  const all = mount(() => useRealtimePositions([], { userId: user }), client);
  const open = mount(() => useRealtimePositions([], { userId: user, filters: { status: "open" } }), client);

  await until(() => all.result.current.mode === "realtime", "realtime mode");
  expect(all.result.current.isConnected).toBe(true);
  await new Promise((resolve) => setTimeout(resolve, 100)); // both subscriptions confirmed

  const first = await simulate(bridge, { user_id: user, symbol: "AAPL", entry_price: 200, quantity: 3 });
  const second = await simulate(bridge, { user_id: user, symbol: "MSFT", entry_price: 400 });
  await until(() => all.result.current.positions.length === 2, "two positions");
  expect(all.result.current.positions[0]).toMatchObject({ symbol: "AAPL", market_value: 600 });
  expect(all.result.current.lastUpdate).toBeInstanceOf(Date);

  await sql(bridge, `UPDATE positions SET current_price = 210 WHERE id = ${first.position.id}`);
  await until(() => all.result.current.positions[0]?.current_price === 210, "the price update");
  expect(all.result.current.positions[0]?.market_value).toBe(630);
  expect(all.result.current.positions[0]?.unrealized_pnl_pct).toBe(5);

  await sql(bridge, `UPDATE positions SET status = 'closed' WHERE id = ${second.position.id}`);
  await until(() => open.result.current.positions.length === 1, "the closed position leaving the open list");
  expect(all.result.current.positions.map((p) => p.status)).toEqual(["open", "closed"]);

  await sql(bridge, `DELETE FROM positions WHERE id = ${first.position.id}`);
  await until(() => all.result.current.positions.length === 1, "the delete");
  expect(all.result.current.positions[0]?.id).toBe(second.position.id);
  expect(open.result.current.positions).toEqual([]);
});

test("the browser going offline and back: mode follows, and nothing is missed", async () => {
  const user = uniqueUser("offline");
  const client = testClient(bridge, { environment: undefined });
  onCleanup(() => client.close());
  const view = mount(() => useRealtimePositions([], { userId: user }), client);
  await until(() => view.result.current.mode === "realtime", "realtime mode");
  await new Promise((resolve) => setTimeout(resolve, 100));

  window.dispatchEvent(new Event("offline"));
  await until(() => view.result.current.mode === "offline", "offline mode");
  expect(view.result.current.isConnected).toBe(false);
  const missed = await simulate(bridge, { user_id: user, symbol: "WHILE-OFFLINE" });

  window.dispatchEvent(new Event("online"));
  await until(() => view.result.current.mode === "realtime", "realtime again");
  await until(() => view.result.current.positions.length === 1, "the position written while offline");
  expect(view.result.current.positions[0]?.id).toBe(missed.position.id);
});
