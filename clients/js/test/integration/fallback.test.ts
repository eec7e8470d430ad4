/**
 * Polling fallback against a real bridge: the socket URL is unreachable or
 * refused while HTTP works → the client long-polls; the socket comes back →
 * it returns to realtime. Events written throughout arrive once each, in order.
 */

import { expect, inject, test } from "vitest";

import type { ReadyInfo, RealtimeClient, Status } from "../../src/index.js";
import { freePort } from "../support/bridge.js";
import { simulate, testClient, uniqueUser, until, untilStatus } from "../support/helpers.js";
import { TcpProxy } from "../support/proxy.js";
import { onCleanup } from "../support/cleanup.js";

const bridge = inject("bridge");

function quickFallback(wsUrl: string): RealtimeClient {
  const client = testClient(bridge, {
    wsUrl,
    reconnect: { baseMs: 20, maxMs: 50 },
    fallback: { afterFailures: 2, probeIntervalMs: 250, waitSeconds: 2 },
  });
  onCleanup(() => client.close());
  return client;
}

test("a closed socket port: polling takes over, then realtime returns with nothing lost", async () => {
  const user = uniqueUser("fallback");
  const port = await freePort(); // nothing listens here (yet)
  const proxy = new TcpProxy(bridge.port);
  onCleanup(() => proxy.close());
  const client = quickFallback(`ws://127.0.0.1:${port}/ws/db_subscriptions`);
  const statuses: Status[] = [client.status];
  client.onStatusChange((status) => statuses.push(status));
  const transports: ReadyInfo["transport"][] = [];
  const ids: number[] = [];
  const seqs: number[] = [];
  client.subscribe(
    "position-updates",
    { filters: { user_id: user }, onReady: (info) => transports.push(info.transport) },
    (event) => {
      ids.push(Number(event.record_id));
      seqs.push(event.seq);
    },
  );

  await untilStatus(client, "polling");
  await until(() => transports.includes("polling"), "the first poll");
  const expected: number[] = [];
  for (let i = 0; i < 3; i += 1) {
    expected.push((await simulate(bridge, { user_id: user, symbol: `P${i}` })).position.id);
  }
  await until(() => ids.length === 3, "events by polling");
  expect(client.stats.socketsOpened).toBe(0);
  expect(client.stats.pollRequests).toBeGreaterThan(0);

  // The socket becomes reachable while writes keep coming.
  let writing = true;
  const writer = (async () => {
    for (let i = 3; writing && i < 200; i += 1) {
      expected.push((await simulate(bridge, { user_id: user, symbol: `P${i}` })).position.id);
      await new Promise((resolve) => setTimeout(resolve, 15));
    }
  })();
  await proxy.listen(port);
  await untilStatus(client, "realtime", 5000);
  await until(() => transports.at(-1) === "socket", "the subscription on the socket");
  await new Promise((resolve) => setTimeout(resolve, 150));
  writing = false;
  await writer;
  const polls = client.stats.pollRequests;
  await until(() => ids.length >= expected.length, `all ${expected.length} events`);
  await new Promise((resolve) => setTimeout(resolve, 150));

  expect(ids).toEqual(expected);
  expect(new Set(seqs).size).toBe(seqs.length);
  expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
  expect(statuses).toEqual(["connecting", "polling", "realtime"]);
  expect(client.stats.socketsOpened).toBe(1);
  expect(client.stats.pollRequests).toBe(polls); // polling stopped once realtime
});

test("a socket URL that refuses the upgrade (HTTP answers, WebSocket does not) also falls back", async () => {
  const user = uniqueUser("refused");
  const client = quickFallback(`ws://127.0.0.1:${bridge.port}/no-websocket-here`);
  const ids: number[] = [];
  client.subscribe("trade-updates", { filters: { user_id: user } }, (event) =>
    ids.push(Number(event.record_id)),
  );
  await untilStatus(client, "polling");
  const written = await simulate(bridge, { user_id: user, symbol: "HTTP" });
  await until(() => ids.length === 1, "the trade by polling");
  expect(ids).toEqual([written.trade.id]);
  expect(client.stats.socketFailures).toBeGreaterThanOrEqual(2);
});

test("when HTTP fails too, the status is offline until the bridge answers again", async () => {
  const port = await freePort();
  const proxy = new TcpProxy(bridge.port);
  onCleanup(() => proxy.close());
  const client = testClient(
    { ...bridge, url: `http://127.0.0.1:${port}` },
    {
      reconnect: { baseMs: 20, maxMs: 50 },
      fallback: { afterFailures: 2, probeIntervalMs: 5000, waitSeconds: 1, retry: { baseMs: 50, maxMs: 100 } },
    },
  );
  onCleanup(() => client.close());
  client.subscribe("position-updates", {}, () => {});
  await untilStatus(client, "offline");
  // HTTP (and the socket, on the same address) come back: the next poll answers.
  await proxy.listen(port);
  await untilStatus(client, "polling", 5000);
});
