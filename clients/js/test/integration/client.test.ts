/**
 * The client against a real bridge (started by the global setup): connect and
 * receive, filters, authorization, unsubscribe, and resume after the socket
 * is cut or goes silent, with no loss and no duplicates.
 */

import { describe, expect, inject, test } from "vitest";
import WebSocket from "ws";

import type { ChangeEvent, PositionUpdate, RealtimeError, TradeUpdate } from "../../src/index.js";
import { userToken } from "../support/bridge.js";
import { TcpProxy } from "../support/proxy.js";
import { simulate, testClient, uniqueUser, until, untilStatus } from "../support/helpers.js";
import { onCleanup, track } from "../support/cleanup.js";

const bridge = inject("bridge");

function ready(): { promise: Promise<void>; onReady: () => void } {
  let onReady = () => {};
  const promise = new Promise<void>((resolve) => {
    onReady = resolve;
  });
  return { promise, onReady };
}

describe("connect and receive", () => {
  test("batch=1: events queued together (a resume's replay) arrive as one array frame", async () => {
    const user = uniqueUser("batch");
    const first = track(testClient(bridge));
    const seen: number[] = [];
    const subscribed = ready();
    first.subscribe(
      "position-updates",
      { filters: { user_id: user }, onReady: subscribed.onReady },
      (e) => seen.push(e.seq),
    );
    await subscribed.promise;
    for (const symbol of ["A", "B", "C", "D"]) await simulate(bridge, { user_id: user, symbol });
    await until(() => seen.length === 4, "four positions");

    const raw: unknown[] = [];
    class Recording extends WebSocket {
      constructor(url: string) {
        super(url);
        this.addEventListener("message", (message) => raw.push(JSON.parse(String(message.data))));
      }
    }
    const second = track(testClient(bridge, { WebSocket: Recording as never }));
    const replayed: number[] = [];
    second.subscribe(
      "position-updates",
      { filters: { user_id: user }, since: (seen[0] ?? 1) - 1 },
      (e) => replayed.push(e.seq),
    );
    await until(() => replayed.length === 4, "the replayed positions");
    expect(replayed).toEqual(seen);
    expect(raw.some((frame) => Array.isArray(frame) && frame.length > 1)).toBe(true);
  });

  test("a typed position arrives over the socket within moments of the write", async () => {
    const user = uniqueUser("recv");
    const client = track(testClient(bridge));
    const events: ChangeEvent<PositionUpdate>[] = [];
    const subscribed = ready();
    client.subscribe(
      "position-updates",
      { filters: { user_id: user }, onReady: subscribed.onReady },
      (event) => events.push(event),
    );
    await subscribed.promise;
    expect(client.status).toBe("realtime");

    const started = performance.now();
    const written = await simulate(bridge, { user_id: user, symbol: "AAPL", entry_price: 190 });
    await until(() => events.length === 1, "the position event");
    const latency = performance.now() - started;

    const [event] = events;
    expect(event?.operation).toBe("INSERT");
    expect(event?.channel).toBe("position-updates");
    expect(event?.event).toBe("position_update");
    expect(event?.record_id).toBe(written.position.id);
    expect(event?.data).toMatchObject({
      id: written.position.id,
      user_id: user,
      symbol: "AAPL",
      entry_price: 190,
      market_value: 190, // computed on the server
      status: "open",
    });
    expect(latency).toBeLessThan(2000);
    expect(client.stats.socketsOpened).toBe(1);
  });

  test("every subscription shares one socket", async () => {
    const user = uniqueUser("shared");
    const client = track(testClient(bridge));
    const positions: number[] = [];
    const trades: number[] = [];
    const both = [ready(), ready()];
    client.subscribe("position-updates", { filters: { user_id: user }, onReady: both[0]!.onReady }, (e) =>
      positions.push(e.seq),
    );
    client.subscribe("trade-updates", { filters: { user_id: user }, onReady: both[1]!.onReady }, (e) =>
      trades.push(e.seq),
    );
    await Promise.all(both.map((b) => b.promise));
    await simulate(bridge, { user_id: user, symbol: "MSFT" });
    await until(() => positions.length === 1 && trades.length === 1, "both events");
    // The trade and its position commit together; seqs are global and distinct.
    expect(trades[0]).not.toBe(positions[0]);
    expect(client.stats.socketsOpened).toBe(1);
  });
});

describe("filters", () => {
  test("equality maps and Supabase filter strings each get only their rows", async () => {
    const alice = uniqueUser("alice");
    const bob = uniqueUser("bob");
    const client = track(testClient(bridge));
    const aliceOnly: string[] = [];
    const bobSells: string[] = [];
    const subs = [ready(), ready()];
    client.subscribe("position-updates", { filters: { user_id: alice }, onReady: subs[0]!.onReady }, (e) =>
      aliceOnly.push(`${e.data?.user_id}:${e.data?.symbol}`),
    );
    client.subscribe(
      "trade-updates",
      { filter: `user_id=eq.${bob},signal_type=eq.SELL`, onReady: subs[1]!.onReady },
      (e: ChangeEvent<TradeUpdate>) => bobSells.push(`${e.data?.symbol}:${e.data?.signal_type}`),
    );
    await Promise.all(subs.map((s) => s.promise));

    await simulate(bridge, { user_id: alice, symbol: "AAPL" });
    await simulate(bridge, { user_id: bob, symbol: "TSLA", signal_type: "SELL" });
    await simulate(bridge, { user_id: bob, symbol: "NVDA", signal_type: "BUY" });
    await simulate(bridge, { user_id: alice, symbol: "AMZN", signal_type: "SELL" });
    await simulate(bridge, { user_id: bob, symbol: "META", signal_type: "SELL" });

    await until(() => aliceOnly.length === 2 && bobSells.length === 2, "the filtered events");
    await new Promise((resolve) => setTimeout(resolve, 200)); // nothing else trickles in
    expect(aliceOnly).toEqual([`${alice}:AAPL`, `${alice}:AMZN`]);
    expect(bobSells).toEqual(["TSLA:SELL", "META:SELL"]);
  });

  test("an invalid filter is refused with its code, and the others keep working", async () => {
    const user = uniqueUser("badfilter");
    const client = track(testClient(bridge));
    const errors: RealtimeError[] = [];
    const good: number[] = [];
    client.subscribe("position-updates", { filter: "nonsense", onError: (e) => errors.push(e) }, () => {});
    const subscribed = ready();
    client.subscribe("position-updates", { filters: { user_id: user }, onReady: subscribed.onReady }, (e) =>
      good.push(e.seq),
    );
    await until(() => errors.length === 1, "the filter error");
    expect(errors[0]?.code).toBe("invalid_filter");
    await subscribed.promise;
    await simulate(bridge, { user_id: user, symbol: "IBM" });
    await until(() => good.length === 1, "the event on the good subscription");
  });
});

describe("authorization", () => {
  test("the anon key may not read a private channel: the subscription fails with `unauthorized`", async () => {
    const client = track(testClient(bridge, { apiKey: bridge.anonKey }));
    const errors: RealtimeError[] = [];
    client.subscribe("position-updates", { onError: (e) => errors.push(e) }, () => {});
    await until(() => errors.length === 1, "the refusal");
    expect(errors[0]?.code).toBe("unauthorized");
    expect(errors[0]?.channel).toBe("position-updates");
    expect(client.status).toBe("realtime"); // the connection itself is fine
  });
});

describe("user tokens", () => {
  test("a user sees only their own rows, and an expiring token is renewed through getAccessToken", async () => {
    const user = uniqueUser("token");
    const other = uniqueUser("other");
    const [shortLived, fresh] = await Promise.all([
      userToken(bridge.dataDir, user, 4),
      userToken(bridge.dataDir, user, 600),
    ]);
    let renewals = 0;
    const client = track(
      testClient(bridge, {
        apiKey: bridge.anonKey,
        accessToken: shortLived,
        getAccessToken: () => {
          renewals += 1;
          return fresh;
        },
      }),
    );
    const symbols: string[] = [];
    const subscribed = ready();
    // No filter: the bridge scopes the channel to the token's own rows.
    client.subscribe("position-updates", { onReady: subscribed.onReady }, (e) => symbols.push(String(e.data?.symbol)));
    await subscribed.promise;
    await simulate(bridge, { user_id: other, symbol: "NOT-MINE" });
    await simulate(bridge, { user_id: user, symbol: "MINE-1" });
    await until(() => symbols.length === 1, "the user's own row");

    await until(() => renewals === 1, "the token renewal", 8000);
    await simulate(bridge, { user_id: user, symbol: "MINE-2" });
    await until(() => symbols.length === 2, "a row after the renewal");
    expect(symbols).toEqual(["MINE-1", "MINE-2"]);
    expect(client.stats.socketsOpened).toBe(1); // renewed in place, no reconnect
  });
});

test("unsubscribe stops delivery; the socket stays for the others", async () => {
  const user = uniqueUser("unsub");
  const client = track(testClient(bridge));
  const stopped: number[] = [];
  const kept: number[] = [];
  const subs = [ready(), ready()];
  const stop = client.subscribe("position-updates", { filters: { user_id: user }, onReady: subs[0]!.onReady }, (e) =>
    stopped.push(e.seq),
  );
  client.subscribe("position-updates", { filters: { user_id: user }, onReady: subs[1]!.onReady }, (e) =>
    kept.push(e.seq),
  );
  await Promise.all(subs.map((s) => s.promise));
  await simulate(bridge, { user_id: user, symbol: "A" });
  await until(() => stopped.length === 1 && kept.length === 1, "first event on both");
  stop();
  await simulate(bridge, { user_id: user, symbol: "B" });
  await until(() => kept.length === 2, "second event on the kept subscription");
  await new Promise((resolve) => setTimeout(resolve, 150));
  expect(stopped).toHaveLength(1);
});

describe("reconnect and resume", () => {
  async function proxied(options: Parameters<typeof testClient>[1] = {}) {
    const proxy = new TcpProxy(bridge.port);
    await proxy.listen();
    onCleanup(() => proxy.close());
    const client = track(
      testClient(bridge, {
        wsUrl: `ws://127.0.0.1:${proxy.port}/ws/db_subscriptions`,
        fallback: { enabled: false }, // these tests are about the socket coming back
        ...options,
      }),
    );
    return { proxy, client };
  }

  test("the network drops: events written meanwhile arrive after the reconnect, once each, in order", async () => {
    const user = uniqueUser("drop");
    const { proxy, client } = await proxied();
    const ids: number[] = [];
    const seqs: number[] = [];
    const subscribed = ready();
    client.subscribe("position-updates", { filters: { user_id: user }, onReady: subscribed.onReady }, (e) => {
      ids.push(Number(e.record_id));
      seqs.push(e.seq);
    });
    await subscribed.promise;
    const expected: number[] = [];
    for (let i = 0; i < 5; i += 1) expected.push((await simulate(bridge, { user_id: user, symbol: `S${i}` })).position.id);
    await until(() => ids.length === 5, "the first five");

    proxy.stopListening();
    proxy.cutAll();
    await untilStatus(client, "connecting");
    for (let i = 5; i < 15; i += 1) expected.push((await simulate(bridge, { user_id: user, symbol: `S${i}` })).position.id);
    await proxy.listen();

    await untilStatus(client, "realtime");
    await until(() => ids.length >= 15, "the missed ten");
    for (let i = 15; i < 18; i += 1) expected.push((await simulate(bridge, { user_id: user, symbol: `S${i}` })).position.id);
    await until(() => ids.length >= 18, "live events after the resume");
    await new Promise((resolve) => setTimeout(resolve, 150));

    expect(ids).toEqual(expected);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(client.stats.socketsOpened).toBeGreaterThanOrEqual(2);
  });

  test("a silent connection is caught by the heartbeat, then resumed", async () => {
    const user = uniqueUser("silent");
    const { proxy, client } = await proxied({ heartbeat: { intervalMs: 150, timeoutMs: 300 } });
    const ids: number[] = [];
    const subscribed = ready();
    client.subscribe("position-updates", { filters: { user_id: user }, onReady: subscribed.onReady }, (e) =>
      ids.push(Number(e.record_id)),
    );
    await subscribed.promise;
    const expected = [(await simulate(bridge, { user_id: user, symbol: "X0" })).position.id];
    await until(() => ids.length === 1, "the first event");

    proxy.blackhole = true; // the peer goes quiet without closing anything
    expected.push((await simulate(bridge, { user_id: user, symbol: "X1" })).position.id);
    await untilStatus(client, "connecting", 5000);
    proxy.blackhole = false;
    proxy.cutAll();
    expected.push((await simulate(bridge, { user_id: user, symbol: "X2" })).position.id);

    await untilStatus(client, "realtime");
    await until(() => ids.length >= 3, "the events missed while silent");
    expect(ids).toEqual(expected);
  });

  test("a subscription opened with `since` first replays what came after it", async () => {
    const user = uniqueUser("since");
    const writer = track(testClient(bridge));
    const first: ChangeEvent<PositionUpdate>[] = [];
    const subscribed = ready();
    writer.subscribe("position-updates", { filters: { user_id: user }, onReady: subscribed.onReady }, (e) =>
      first.push(e),
    );
    await subscribed.promise;
    const ids: number[] = [];
    for (let i = 0; i < 4; i += 1) ids.push((await simulate(bridge, { user_id: user, symbol: `R${i}` })).position.id);
    await until(() => first.length === 4, "four events");

    const reader = track(testClient(bridge));
    const replayed: number[] = [];
    reader.subscribe("position-updates", { filters: { user_id: user }, since: first[1]!.seq }, (e) =>
      replayed.push(Number(e.record_id)),
    );
    await until(() => replayed.length === 2, "the replay");
    expect(replayed).toEqual(ids.slice(2));
  });
});
