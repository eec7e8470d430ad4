// @vitest-environment happy-dom
/**
 * The hooks over a client driven by a scripted socket: records keyed by id in
 * seq order, filters, the provider, status, and snapshot resets.
 */

import { act } from "react";
import { afterEach, beforeAll, describe, expect, test, vi } from "vitest";

import {
  createClient,
  type FetchLike,
  type PositionUpdate,
  type RealtimeClient,
  type ResyncInfo,
  type WebSocketLike,
} from "../src/index.js";
import { useChannel, usePortfolio, useRealtimePositions, useRealtimeStatus, useRealtimeTrades } from "../src/react.js";
import { cleanup, renderHook } from "./support/render.js";

beforeAll(() => {
  (globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = true;
});

class Socket implements WebSocketLike {
  static last: Socket | undefined;
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: unknown) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  sent: Record<string, unknown>[] = [];
  constructor(readonly url: string) {
    Socket.last = this;
  }
  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }
  close(): void {
    this.readyState = 3;
  }
  open(): void {
    act(() => {
      this.readyState = 1;
      this.onopen?.({});
    });
  }
  frame(frame: Record<string, unknown>): void {
    act(() => this.onmessage?.({ data: JSON.stringify(frame) }));
  }
  /** Confirm the latest subscribe; returns its server id. */
  confirm(head = 0): string {
    const subscribe = this.sent.filter((f) => f.type === "subscribe").at(-1);
    const id = `srv-${String(subscribe?.client_id)}`;
    this.frame({ type: "subscribed", subscription_id: id, channel: subscribe?.channel, seq: head, client_id: subscribe?.client_id });
    return id;
  }
}

let seq = 0;
function position(overrides: Partial<PositionUpdate> & { id: number }): PositionUpdate {
  return {
    user_id: "u1",
    symbol: "AAPL",
    quantity: 1,
    entry_price: 100,
    current_price: 100,
    unrealized_pnl: 0,
    stop_loss: null,
    take_profit: null,
    status: "open",
    opened_at: null,
    updated_at: null,
    market_value: 100,
    unrealized_pnl_pct: 0,
    ...overrides,
  };
}

function change(
  subscriptionId: string,
  operation: string,
  data: object | null,
  old: object | null = null,
  channel = "position-updates",
) {
  seq += 1;
  const row = (data ?? old) as { id: number };
  return {
    type: "db_change",
    subscription_id: subscriptionId,
    channel,
    event: "x",
    table: "public.positions",
    operation,
    user_id: "u1",
    record_id: row.id,
    data,
    old,
    seq,
    timestamp: "2026-01-01T00:00:00Z",
  };
}

const clients: RealtimeClient[] = [];
function newClient(fetch?: FetchLike): RealtimeClient {
  const client = createClient({
    url: "http://bridge",
    apiKey: "k",
    WebSocket: Socket,
    environment: null,
    ...(fetch !== undefined && { fetch }),
  });
  clients.push(client);
  return client;
}

afterEach(() => {
  cleanup();
  for (const client of clients.splice(0)) client.close();
  Socket.last = undefined;
});

/** The socket the client opened (a test that needs one fails clearly without it). */
function socket(): Socket {
  if (!Socket.last) throw new Error("no socket was opened");
  return Socket.last;
}

describe("useRealtimePositions", () => {
  test("starts from the initial positions, then applies events by id in seq order", () => {
    const client = newClient();
    const initial = [position({ id: 1 }), position({ id: 2, symbol: "MSFT" })];
    const view = renderHook(() => useRealtimePositions(initial, { userId: "u1" }), client);
    expect(view.result.current.positions.map((p) => p.id)).toEqual([1, 2]);
    expect(view.result.current.mode).toBe("connecting");
    expect(view.result.current.isConnected).toBe(false);
    expect(view.result.current.lastUpdate).toBeNull();

    socket().open();
    expect(socket().sent.at(-1)).toMatchObject({ channel: "position-updates", filters: { user_id: "u1" } });
    const sub = socket().confirm();
    expect(view.result.current.mode).toBe("realtime");
    expect(view.result.current.isConnected).toBe(true);

    socket().frame(change(sub, "UPDATE", position({ id: 1, current_price: 110, market_value: 110 }), position({ id: 1 })));
    socket().frame(change(sub, "INSERT", position({ id: 3, symbol: "NVDA" })));
    socket().frame(change(sub, "DELETE", null, position({ id: 2 })));
    socket().frame(change(sub, "BROADCAST", position({ id: 3, symbol: "NVDA", current_price: 5 })));
    const { positions, lastUpdate } = view.result.current;
    expect(positions.map((p) => [p.id, p.current_price])).toEqual([
      [1, 110],
      [3, 5],
    ]);
    expect(lastUpdate).toBeInstanceOf(Date);
    view.unmount();
    expect(socket().sent.at(-1)).toEqual({ type: "unsubscribe", subscription_id: sub });
  });

  test("userId joins either kind of filter", () => {
    const client = newClient();
    renderHook(() => useRealtimePositions([], { userId: "u,1", filter: "status=eq.open" }), client);
    renderHook(() => useRealtimeTrades([], { userId: "u2", filters: { symbol: "AAPL" } }), client);
    socket().open();
    expect(socket().sent.filter((f) => f.type === "subscribe")).toEqual([
      { type: "subscribe", channel: "position-updates", client_id: "sub-1", filter: 'user_id=eq."u,1",status=eq.open' },
      { type: "subscribe", channel: "trade-updates", client_id: "sub-2", filters: { symbol: "AAPL", user_id: "u2" } },
    ]);
  });

  test("an UPDATE that leaves the hook's filter removes the row", () => {
    const client = newClient();
    const view = renderHook(() => useRealtimePositions([position({ id: 1 })], { filters: { status: "open" } }), client);
    socket().open();
    const sub = socket().confirm();
    socket().frame(change(sub, "UPDATE", position({ id: 1, status: "closed" }), position({ id: 1 })));
    expect(view.result.current.positions).toEqual([]);
  });

  test("a new initial array resets the state; a fresh empty literal each render does not loop", () => {
    const client = newClient();
    let initial: PositionUpdate[] = [];
    let renders = 0;
    const view = renderHook(() => {
      renders += 1;
      return useRealtimePositions(initial);
    }, client);
    view.rerender(() => {
      renders += 1;
      return useRealtimePositions([]);
    });
    const settled = renders;
    expect(settled).toBeLessThan(5);
    initial = [position({ id: 7 })];
    view.rerender(() => useRealtimePositions(initial));
    expect(view.result.current.positions.map((p) => p.id)).toEqual([7]);
  });
});

describe("the other hooks", () => {
  test("useRealtimeTrades lists the newest trade first", () => {
    const client = newClient();
    const view = renderHook(() => useRealtimeTrades(), client);
    socket().open();
    const sub = socket().confirm();
    for (const id of [1, 2, 3]) {
      socket().frame(change(sub, "INSERT", { id, symbol: `T${id}` }, null, "trade-updates"));
    }
    expect(view.result.current.trades.map((t) => t.id)).toEqual([3, 2, 1]);
  });

  test("usePortfolio follows one user's latest snapshot, and waits for a user id", () => {
    const client = newClient();
    let user: string | null = null;
    const view = renderHook(() => usePortfolio(user), client);
    expect(view.result.current.portfolio).toBeNull();
    expect(Socket.last).toBeUndefined(); // no user, no subscription, no socket
    user = "u9";
    view.rerender(() => usePortfolio(user));
    socket().open();
    expect(socket().sent.at(-1)).toMatchObject({ channel: "portfolio-updates", filters: { user_id: "u9" } });
    const sub = socket().confirm();
    socket().frame(change(sub, "INSERT", { id: 1, user_id: "u9", total_value: 100 }, null, "portfolio-updates"));
    socket().frame(change(sub, "INSERT", { id: 2, user_id: "u9", total_value: 120 }, null, "portfolio-updates"));
    expect(view.result.current.portfolio?.total_value).toBe(120);
    expect(view.result.current.history.map((p) => p.id)).toEqual([2, 1]);
  });

  test("useChannel works for table channels with a custom key, and reports refusals", () => {
    const client = newClient();
    const view = renderHook(
      () => useChannel("public.quotes", { getKey: (row: { symbol: string }) => row.symbol }),
      client,
    );
    socket().open();
    socket().frame({ type: "error", code: "unauthorized", message: "service key only", channel: "public.quotes" });
    expect(view.result.current.error?.code).toBe("unauthorized");
  });

  test("useRealtimeStatus follows the client", () => {
    const client = newClient();
    const view = renderHook(() => useRealtimeStatus(), client);
    expect(view.result.current).toBe("connecting");
    act(() => client.connect());
    socket().open();
    expect(view.result.current).toBe("realtime");
    act(() => client.close());
    expect(view.result.current).toBe("offline");
  });

  test("without a provider or options.client, the hook says what is missing", () => {
    expect(() => renderHook(() => useRealtimePositions())).toThrow(/RealtimeBridgeProvider/);
  });
});

/**
 * A fetch for snapshot requests: each call waits for the test to `answer` it
 * (status and body), so the test decides when a snapshot arrives.
 */
function snapshotServer() {
  const requests: { url: string; signal: AbortSignal | undefined; answer(status: number, body: unknown): void }[] =
    [];
  const fetch = vi.fn<FetchLike>(
    (url, init) =>
      new Promise<Response>((resolve) => {
        requests.push({
          url,
          signal: init?.signal ?? undefined,
          answer: (status, body) =>
            resolve({ ok: status >= 200 && status < 300, status, json: async () => body } as Response),
        });
      }),
  );
  return { fetch, requests };
}

/** Let pending promises (answered fetches) run, inside act. */
async function settle(): Promise<void> {
  await act(async () => {
    for (let i = 0; i < 5; i += 1) await new Promise((resolve) => setTimeout(resolve, 0));
  });
}

function snapshotPage(seq: number, records: object[], next_cursor: string | null = null) {
  return { channel: "position-updates", seq, records, next_cursor };
}

describe("the snapshot option", () => {
  test("off (the default): nothing is fetched, and `initial` and `since` work as before", () => {
    const { fetch } = snapshotServer();
    const client = newClient(fetch);
    const view = renderHook(() => useRealtimePositions([position({ id: 4 })], { since: 5 }), client);
    socket().open();
    expect(socket().sent.at(-1)).toMatchObject({ type: "subscribe", channel: "position-updates", since: 5 });
    expect(fetch).not.toHaveBeenCalled();
    expect(view.result.current.isLoading).toBe(false);
    expect(view.result.current.positions.map((p) => p.id)).toEqual([4]);
  });

  test("loads every page, subscribes since the first page's seq, then applies events on top", async () => {
    const { fetch, requests } = snapshotServer();
    const client = newClient(fetch);
    const view = renderHook(
      () => useRealtimePositions([position({ id: 99 })], { userId: "u1", snapshot: { limit: 2 } }),
      client,
    );
    expect(view.result.current.isLoading).toBe(true);
    expect(view.result.current.positions.map((p) => p.id)).toEqual([99]); // initial, while loading
    expect(Socket.last).toBeUndefined(); // no subscription before the snapshot's seq is known
    expect(requests).toHaveLength(1);
    const first = new URL(requests[0]!.url).searchParams;
    expect(first.get("filter")).toBe("user_id=eq.u1");
    expect(first.get("limit")).toBe("2");

    requests[0]!.answer(200, snapshotPage(10, [position({ id: 1 }), position({ id: 2 })], "next"));
    await settle();
    expect(view.result.current.isLoading).toBe(true);
    expect(new URL(requests[1]!.url).searchParams.get("cursor")).toBe("next");
    requests[1]!.answer(200, snapshotPage(12, [position({ id: 3 })]));
    await settle();

    expect(view.result.current.isLoading).toBe(false);
    expect(view.result.current.positions.map((p) => p.id)).toEqual([1, 2, 3]);
    socket().open();
    expect(socket().sent.filter((f) => f.type === "subscribe")).toEqual([
      { type: "subscribe", channel: "position-updates", client_id: "sub-1", filters: { user_id: "u1" }, since: 10 },
    ]);
    const sub = socket().confirm(10);
    seq = 10;
    socket().frame(change(sub, "INSERT", position({ id: 4 })));
    socket().frame(change(sub, "UPDATE", position({ id: 1, current_price: 150 }), position({ id: 1 })));
    socket().frame(change(sub, "DELETE", null, position({ id: 2 })));
    expect(view.result.current.positions.map((p) => [p.id, p.current_price])).toEqual([
      [1, 150],
      [3, 100],
      [4, 100],
    ]);
  });

  test("resync_required loads the snapshot again, replaces the records and resubscribes from its seq", async () => {
    const { fetch, requests } = snapshotServer();
    const client = newClient(fetch);
    const resyncs: ResyncInfo[] = [];
    const loaded: number[] = [];
    const view = renderHook(
      () =>
        useChannel("position-updates", {
          snapshot: true,
          onResync: (info) => resyncs.push(info),
          onSnapshot: (snapshot) => loaded.push(snapshot.seq),
        }),
      client,
    );
    requests[0]!.answer(200, snapshotPage(10, [position({ id: 1 }), position({ id: 2 })]));
    await settle();
    socket().open();
    const first = socket().confirm(10);
    seq = 10;
    socket().frame(change(first, "INSERT", position({ id: 3 })));
    expect(view.result.current.records.map((p) => p.id)).toEqual([1, 2, 3]);

    socket().frame({ type: "resync_required", subscription_id: first, channel: "position-updates", earliest_seq: 30, next_seq: 40 });
    expect(resyncs).toEqual([{ channel: "position-updates", earliestSeq: 30, nextSeq: 40 }]);
    expect(requests).toHaveLength(2);
    expect(view.result.current.isLoading).toBe(true);
    // Until the new snapshot arrives, the subscription in place still applies events.
    seq = 40;
    socket().frame(change(first, "INSERT", position({ id: 5 })));
    expect(view.result.current.records.map((p) => p.id)).toEqual([1, 2, 3, 5]);

    requests[1]!.answer(200, snapshotPage(45, [position({ id: 2, current_price: 7 }), position({ id: 6 })]));
    await settle();
    expect(view.result.current.isLoading).toBe(false);
    expect(view.result.current.records.map((p) => [p.id, p.current_price])).toEqual([
      [2, 7],
      [6, 100],
    ]);
    expect(view.result.current.lastSeq).toBe(45);
    expect(loaded).toEqual([10, 45]);
    expect(socket().sent.slice(-2)).toEqual([
      { type: "unsubscribe", subscription_id: first },
      { type: "subscribe", channel: "position-updates", client_id: "sub-2", since: 45 },
    ]);
    // The old subscription's events no longer apply; the new one's do.
    socket().frame(change(first, "INSERT", position({ id: 8 })));
    const second = socket().confirm(45);
    seq = 45;
    socket().frame(change(second, "INSERT", position({ id: 9 })));
    expect(view.result.current.records.map((p) => p.id)).toEqual([2, 6, 9]);
  });

  test("a refused snapshot sets `error`, stops loading, and neither retries nor subscribes", async () => {
    const { fetch, requests } = snapshotServer();
    const client = newClient(fetch);
    const errors: string[] = [];
    const view = renderHook(
      () => useRealtimePositions([], { snapshot: { retry: { baseMs: 1, maxMs: 1 } }, onError: (e) => errors.push(e.code) }),
      client,
    );
    requests[0]!.answer(403, { code: "forbidden", message: "not yours" });
    await settle();
    expect(view.result.current.error).toMatchObject({ code: "forbidden", status: 403, message: "not yours" });
    expect(view.result.current.isLoading).toBe(false);
    expect(errors).toEqual(["forbidden"]);
    await settle();
    expect(requests).toHaveLength(1);
    expect(Socket.last).toBeUndefined();
  });

  test("a temporary failure (503) is retried with backoff, and the error clears when it loads", async () => {
    const { fetch, requests } = snapshotServer();
    const client = newClient(fetch);
    const view = renderHook(
      () => useRealtimePositions([], { snapshot: { retry: { baseMs: 1, maxMs: 1 } } }),
      client,
    );
    requests[0]!.answer(503, { code: "unavailable", message: "database unreachable" });
    await settle();
    expect(view.result.current.error?.code).toBe("unavailable");
    expect(view.result.current.isLoading).toBe(true);
    await settle();
    expect(requests).toHaveLength(2);
    requests[1]!.answer(200, snapshotPage(3, [position({ id: 1 })]));
    await settle();
    expect(view.result.current.error).toBeNull();
    expect(view.result.current.isLoading).toBe(false);
    expect(view.result.current.positions.map((p) => p.id)).toEqual([1]);
  });

  test("unmounting while loading aborts the request and subscribes nothing", async () => {
    const { fetch, requests } = snapshotServer();
    const client = newClient(fetch);
    const view = renderHook(() => useRealtimePositions([], { snapshot: true }), client);
    const { signal } = requests[0]!;
    expect(signal?.aborted).toBe(false);
    view.unmount();
    expect(signal?.aborted).toBe(true);
    requests[0]!.answer(200, snapshotPage(3, [position({ id: 1 })]));
    await settle();
    expect(Socket.last).toBeUndefined();
  });

  test("usePortfolio with `snapshot` lists the loaded history newest first", async () => {
    const { fetch, requests } = snapshotServer();
    const client = newClient(fetch);
    const view = renderHook(() => usePortfolio("u9", { snapshot: true }), client);
    expect(new URL(requests[0]!.url).pathname).toBe("/api/channels/portfolio-updates/snapshot");
    requests[0]!.answer(200, {
      channel: "portfolio-updates",
      seq: 5,
      records: [1, 2, 3].map((id) => ({ id, user_id: "u9", total_value: id * 100 })),
      next_cursor: null,
    });
    await settle();
    expect(view.result.current.history.map((p) => p.id)).toEqual([3, 2, 1]);
    expect(view.result.current.portfolio?.total_value).toBe(300);
  });
});
