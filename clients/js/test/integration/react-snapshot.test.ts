// @vitest-environment happy-dom
/**
 * The hooks' `snapshot` option in a (happy-dom) page against the real bridge:
 * the current rows first (every page), then live INSERT / UPDATE / DELETE on
 * top, newest first where the hook lists that way, and a refusal as `error`.
 */

import { expect, inject, test } from "vitest";

import type { RealtimeClient } from "../../src/index.js";
import { useChannel, useRealtimePositions, useRealtimeTrades } from "../../src/react.js";
import { sql } from "../support/bridge.js";
import { simulate, testClient, uniqueUser, until } from "../support/helpers.js";
import { mount, onCleanup } from "../support/cleanup.js";

const bridge = inject("bridge");

function newClient(): RealtimeClient {
  const client = testClient(bridge);
  onCleanup(() => client.close());
  return client;
}

test("useRealtimePositions with `snapshot` shows the current rows, then live changes", async () => {
  const user = uniqueUser("hook-snap");
  const other = uniqueUser("hook-snap-other");
  const first = await simulate(bridge, { user_id: user, symbol: "AAPL", entry_price: 200, quantity: 3 });
  const second = await simulate(bridge, { user_id: user, symbol: "MSFT", entry_price: 400 });
  const third = await simulate(bridge, { user_id: user, symbol: "NVDA", entry_price: 100 });
  await simulate(bridge, { user_id: other, symbol: "NOT-MINE" });

  const view = mount(
    () => useRealtimePositions([], { userId: user, snapshot: { limit: 2 } }), // two pages
    newClient(),
  );
  expect(view.result.current.isLoading).toBe(true);
  expect(view.result.current.positions).toEqual([]);

  await until(() => !view.result.current.isLoading, "the snapshot");
  expect(view.result.current.error).toBeNull();
  expect(view.result.current.positions.map((p) => p.id)).toEqual([
    first.position.id,
    second.position.id,
    third.position.id,
  ]);
  expect(view.result.current.positions[0]).toMatchObject({ symbol: "AAPL", market_value: 600, user_id: user });

  const fourth = await simulate(bridge, { user_id: user, symbol: "TSLA" });
  await until(() => view.result.current.positions.length === 4, "the new position");
  expect(view.result.current.positions.at(-1)?.id).toBe(fourth.position.id);
  expect(view.result.current.lastUpdate).toBeInstanceOf(Date);

  await sql(bridge, `UPDATE positions SET current_price = 210 WHERE id = ${first.position.id}`);
  await until(() => view.result.current.positions[0]?.current_price === 210, "the price update");
  expect(view.result.current.positions[0]?.market_value).toBe(630);

  await sql(bridge, `DELETE FROM positions WHERE id = ${second.position.id}`);
  await until(() => view.result.current.positions.length === 3, "the delete");
  expect(view.result.current.positions.map((p) => p.id)).toEqual([
    first.position.id,
    third.position.id,
    fourth.position.id,
  ]);
  expect(view.result.current.isLoading).toBe(false);
});

test("rows written after the snapshot was read but before the hook subscribed are not lost", async () => {
  const user = uniqueUser("hook-gap");
  const before = await simulate(bridge, { user_id: user, symbol: "BEFORE" });
  const inGap: number[] = [];
  // The real bridge answers; the answer reaches the hook only after more rows were written.
  const client = testClient(bridge, {
    fetch: async (input, init) => {
      const response = await fetch(input, init);
      if (input.includes("/snapshot?") && inGap.length === 0) {
        inGap.push((await simulate(bridge, { user_id: user, symbol: "GAP-1" })).position.id);
        inGap.push((await simulate(bridge, { user_id: user, symbol: "GAP-2" })).position.id);
        await sql(bridge, `UPDATE positions SET current_price = 55 WHERE id = ${before.position.id}`);
      }
      return response;
    },
  });
  onCleanup(() => client.close());
  const view = mount(() => useRealtimePositions([], { userId: user, snapshot: true }), client);
  await until(() => !view.result.current.isLoading, "the snapshot");
  await until(() => view.result.current.positions.length === 3, "the rows written in the gap");
  expect(view.result.current.positions.map((p) => p.id)).toEqual([before.position.id, ...inGap]);
  await until(() => view.result.current.positions[0]?.current_price === 55, "the update made in the gap");
});

test("useRealtimeTrades with `snapshot` lists the loaded trades newest first, new ones on top", async () => {
  const user = uniqueUser("hook-trades");
  const older = await simulate(bridge, { user_id: user, symbol: "OLD" });
  const newer = await simulate(bridge, { user_id: user, symbol: "NEW" });
  const view = mount(() => useRealtimeTrades([], { userId: user, snapshot: true }), newClient());
  await until(() => !view.result.current.isLoading, "the snapshot");
  expect(view.result.current.trades.map((t) => t.id)).toEqual([newer.trade.id, older.trade.id]);

  const latest = await simulate(bridge, { user_id: user, symbol: "LATEST", signal_type: "SELL" });
  await until(() => view.result.current.trades.length === 3, "the live trade");
  expect(view.result.current.trades.map((t) => t.id)).toEqual([latest.trade.id, newer.trade.id, older.trade.id]);
  expect(view.result.current.trades[0]).toMatchObject({ symbol: "LATEST", signal_type: "SELL" });
});

test("a snapshot the bridge refuses shows as `error`, and loading stops", async () => {
  const view = mount(() => useChannel("no-such-channel", { snapshot: true }), newClient());
  await until(() => view.result.current.error !== null, "the refusal");
  expect(view.result.current.error?.code).toBe("unknown_channel");
  expect(view.result.current.error?.status).toBe(404);
  expect(view.result.current.isLoading).toBe(false);
  expect(view.result.current.records).toEqual([]);
});
