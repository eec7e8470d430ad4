/**
 * The bridge process restarts on the same folder and port while rows keep
 * changing in Postgres: the client reconnects and resumes from its cursor,
 * receiving every INSERT, UPDATE and DELETE it missed, once each, in order.
 */

import { afterAll, beforeAll, expect, inject, test } from "vitest";

import type { ChangeEvent, PositionUpdate } from "../../src/index.js";
import { BridgeProcess, sql, withDatabase } from "../support/bridge.js";
import { simulate, testClient, uniqueUser, until, untilStatus } from "../support/helpers.js";

// A second bridge of our own (so restarting it disturbs no other test), on a
// fresh database of the shared Postgres; it applies the migrations itself.
const shared = inject("bridge");
const database = `rb_js_restart_${process.pid}`;
let own: BridgeProcess;

beforeAll(async () => {
  await sql(shared, `DROP DATABASE IF EXISTS ${database}`, `CREATE DATABASE ${database}`);
  own = await BridgeProcess.start(withDatabase(shared.databaseUrl, database));
});

afterAll(async () => {
  await own?.destroy();
  await sql(shared, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
});

test("restart the bridge: nothing written while it was down is lost or repeated", async () => {
  const bridge = own.info;
  const user = uniqueUser("restart");
  const client = testClient(bridge, {
    reconnect: { baseMs: 100, maxMs: 300 },
    fallback: { enabled: false },
  });
  const events: ChangeEvent<PositionUpdate>[] = [];
  let readyCount = 0;
  client.subscribe(
    "position-updates",
    { filters: { user_id: user }, onReady: () => (readyCount += 1) },
    (event) => events.push(event),
  );
  try {
    await until(() => readyCount === 1, "the subscription");
    const first = await simulate(bridge, { user_id: user, symbol: "KEEP" });
    const second = await simulate(bridge, { user_id: user, symbol: "GONE" });
    await until(() => events.length === 2, "two inserts");

    await own.stop();
    await untilStatus(client, "connecting");
    // Postgres outlives the bridge process; these commits land in the outbox.
    await sql(
      bridge,
      `INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price)
       VALUES ('${user}', 'NEW1', 1, 10, 11), ('${user}', 'NEW2', 2, 20, 19);
       UPDATE positions SET current_price = 250 WHERE id = ${first.position.id};
       DELETE FROM positions WHERE id = ${second.position.id};`,
    );
    await own.serve();

    await untilStatus(client, "realtime", 10_000);
    await until(() => events.length === 6, "the four missed changes", 10_000);
    const live = await simulate(bridge, { user_id: user, symbol: "LIVE" });
    await until(() => events.length === 7, "a live event after the resume");
    await new Promise((resolve) => setTimeout(resolve, 150));

    expect(events.map((e) => `${e.operation}:${e.data?.symbol ?? e.old?.symbol}`)).toEqual([
      "INSERT:KEEP",
      "INSERT:GONE",
      "INSERT:NEW1",
      "INSERT:NEW2",
      "UPDATE:KEEP",
      "DELETE:GONE",
      "INSERT:LIVE",
    ]);
    expect(events[4]?.data?.market_value).toBe(250 * (events[4]?.data?.quantity ?? 0));
    expect(events[4]?.old?.current_price).toBe(100);
    expect(events[6]?.record_id).toBe(live.position.id);
    const seqs = events.map((e) => e.seq);
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(client.stats.socketsOpened).toBeGreaterThanOrEqual(2);
  } finally {
    client.close();
  }
});
