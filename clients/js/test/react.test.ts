// @vitest-environment happy-dom
/**
 * The hooks over a client driven by a scripted socket: records keyed by id in
 * seq order, filters, the provider, status, and snapshot resets.
 */

import { act } from "react";
import { afterEach, beforeAll, describe, expect, test } from "vitest";

import { createClient, type PositionUpdate, type RealtimeClient, type WebSocketLike } from "../src/index.js";
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
function newClient(): RealtimeClient {
  const client = createClient({ url: "http://bridge", apiKey: "k", WebSocket: Socket, environment: null });
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
