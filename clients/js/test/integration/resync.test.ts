// @vitest-environment happy-dom
/**
 * A real `resync_required`: a hook with the `snapshot` option is cut off,
 * changes are written and then pruned from the bridge's log, and on
 * reconnect the bridge can no longer replay them. The hook loads the
 * snapshot again and ends with the database's rows, then stays live.
 */

import { afterAll, beforeAll, expect, inject, test } from "vitest";

import type { ResyncInfo } from "../../src/index.js";
import { useRealtimePositions } from "../../src/react.js";
import { BridgeProcess, sql, withDatabase } from "../support/bridge.js";
import { simulate, testClient, uniqueUser, until, untilStatus } from "../support/helpers.js";
import { TcpProxy } from "../support/proxy.js";
import { renderHook } from "../support/render.js";

// A bridge of our own (pruning its log disturbs no other test) on a fresh
// database of the shared Postgres, keeping no events in memory: a resume
// reads the outbox log, which this test empties.
const shared = inject("bridge");
const database = `rb_js_resync_${process.pid}`;
let own: BridgeProcess;

beforeAll(async () => {
  await sql(shared, `DROP DATABASE IF EXISTS ${database}`, `CREATE DATABASE ${database}`);
  process.env.REPLAY_WINDOW = "0";
  try {
    own = await BridgeProcess.start(withDatabase(shared.databaseUrl, database));
  } finally {
    delete process.env.REPLAY_WINDOW;
  }
});

afterAll(async () => {
  await own?.destroy();
  await sql(shared, `DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
});

test("resync_required reloads the snapshot: changes the log lost still show, and live ones follow", async () => {
  const bridge = own.info;
  const user = uniqueUser("resync");
  const proxy = new TcpProxy(bridge.port);
  await proxy.listen();
  const client = testClient(bridge, {
    wsUrl: `ws://127.0.0.1:${proxy.port}/ws/db_subscriptions`,
    fallback: { enabled: false },
  });
  // A second client on the bridge directly: it sees when the bridge has numbered the writes.
  const watcher = testClient(bridge);
  (globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;
  const resyncs: ResyncInfo[] = [];
  const snapshots: number[] = [];
  const view = renderHook(
    () =>
      useRealtimePositions([], {
        userId: user,
        snapshot: true,
        onResync: (info) => resyncs.push(info),
        onSnapshot: (snapshot) => snapshots.push(snapshot.seq),
      }),
    client,
  );
  try {
    const a = await simulate(bridge, { user_id: user, symbol: "A" });
    const b = await simulate(bridge, { user_id: user, symbol: "B" });
    await until(() => view.result.current.positions.length === 2, "the first rows");
    expect(snapshots).toHaveLength(1);

    let watched = 0;
    let watching = () => {};
    const watcherReady = new Promise<void>((resolve) => (watching = resolve));
    watcher.subscribe("position-updates", { filters: { user_id: user }, onReady: watching }, () => (watched += 1));
    await watcherReady;

    // Cut the hook's connection; meanwhile: an insert, an update, a delete.
    proxy.stopListening();
    proxy.cutAll();
    await untilStatus(client, "connecting");
    const c = await simulate(bridge, { user_id: user, symbol: "C" });
    await sql(bridge, `UPDATE positions SET current_price = 321 WHERE id = ${a.position.id}`);
    await sql(bridge, `DELETE FROM positions WHERE id = ${b.position.id}`);
    await until(() => watched === 3, "the bridge numbering the three changes");
    // Gone from the log: no resume can replay them any more.
    await sql(bridge, "DELETE FROM realtime_bridge.outbox WHERE seq IS NOT NULL");
    expect(view.result.current.positions.map((p) => p.id)).toEqual([a.position.id, b.position.id]);

    await proxy.listen();
    await until(() => resyncs.length === 1, "resync_required");
    await until(() => snapshots.length === 2 && !view.result.current.isLoading, "the reloaded snapshot");
    expect(view.result.current.positions.map((p) => p.id)).toEqual([a.position.id, c.position.id]);
    expect(view.result.current.positions[0]?.current_price).toBe(321);
    expect(snapshots[1]).toBeGreaterThan(snapshots[0]!);

    // Live again, on the subscription made from the new snapshot's seq.
    const d = await simulate(bridge, { user_id: user, symbol: "D" });
    await until(() => view.result.current.positions.length === 3, "a live insert after the resync");
    expect(view.result.current.positions.map((p) => p.id)).toEqual([a.position.id, c.position.id, d.position.id]);
    expect(resyncs).toHaveLength(1);
  } finally {
    view.unmount();
    client.close();
    watcher.close();
    proxy.close();
  }
});
