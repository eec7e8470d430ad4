/**
 * The client's state machine with a scripted WebSocket, a scripted fetch and
 * fake timers: backoff, fallback and probing, heartbeat, dedupe and resume,
 * reply correlation, tokens, resync, and network / visibility events.
 */

import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";

import {
  createClient,
  type ChangeEvent,
  type ClientEnvironment,
  type ClientOptions,
  type EnvironmentEvents,
  type PositionUpdate,
  type RealtimeError,
  type WebSocketLike,
} from "../src/index.js";

type Frame = Record<string, unknown>;

class FakeSocket implements WebSocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: unknown) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: Frame[] = [];
  closedWith: number | undefined;

  constructor(readonly url: string) {
    sockets.push(this);
  }

  send(data: string): void {
    this.sent.push(JSON.parse(data) as Frame);
  }

  close(code?: number): void {
    this.closedWith = code ?? 1000;
    this.readyState = 3;
  }

  // what the network / server does
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }

  receive(frame: Frame): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  fail(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006 });
  }

  /** Reply `subscribed` to every subscribe sent so far and not yet answered. */
  confirmAll(head = 0): void {
    for (const frame of this.sent.filter((f) => f.type === "subscribe" && !answered.has(f))) {
      answered.add(frame);
      this.receive({
        type: "subscribed",
        subscription_id: `srv-${String(frame.client_id)}`,
        channel: frame.channel,
        seq: head,
        client_id: frame.client_id,
      });
    }
  }

  subscribes(): Frame[] {
    return this.sent.filter((f) => f.type === "subscribe");
  }
}

let sockets: FakeSocket[] = [];
const answered = new Set<Frame>();

function last(): FakeSocket {
  const socket = sockets.at(-1);
  if (!socket) throw new Error("no socket was opened");
  return socket;
}

function change(seq: number, subscriptionId: string, id = seq, operation = "INSERT"): Frame {
  return {
    type: "db_change",
    subscription_id: subscriptionId,
    channel: "position-updates",
    event: "position_update",
    table: "public.positions",
    operation,
    user_id: "u1",
    record_id: id,
    data: { id, user_id: "u1" },
    old: null,
    seq,
    timestamp: "2026-01-01T00:00:00Z",
  };
}

function fakeEnvironment(): ClientEnvironment & { fire: EnvironmentEvents; online: boolean } {
  let handlers: EnvironmentEvents | null = null;
  const env = {
    online: true,
    isOnline: () => env.online,
    isVisible: () => true,
    listen(events: EnvironmentEvents) {
      handlers = events;
      return () => {
        handlers = null;
      };
    },
    fire: {
      online: () => {
        env.online = true;
        handlers?.online();
      },
      offline: () => {
        env.online = false;
        handlers?.offline();
      },
      visible: () => handlers?.visible(),
      hidden: () => handlers?.hidden(),
    },
  };
  return env;
}

/** A fetch answering the long-polls with `replies` in turn, then never (the poll waits); records each URL. */
function polls(...replies: Response[]) {
  const urls: string[] = [];
  const fetch = vi.fn((url: string) => {
    urls.push(url);
    const reply = replies.shift();
    return reply ? Promise.resolve(reply) : new Promise<Response>(() => {});
  });
  return { fetch, urls };
}

function client(options: Partial<ClientOptions> = {}) {
  return createClient({
    url: "https://bridge.example/",
    apiKey: "anon key",
    WebSocket: FakeSocket,
    environment: null,
    fetch: () => Promise.reject(new TypeError("offline")),
    ...options,
  });
}

beforeEach(() => {
  sockets = [];
  answered.clear();
  vi.useFakeTimers();
  vi.spyOn(Math, "random").mockReturnValue(0); // full backoff delays, no jitter
});

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe("connecting", () => {
  test("nothing connects before the first subscription; then one socket, with the key", () => {
    const c = client();
    expect(sockets).toHaveLength(0);
    expect(c.status).toBe("connecting");
    c.subscribe("position-updates", {}, () => {});
    c.subscribe("trade-updates", {}, () => {});
    expect(sockets).toHaveLength(1);
    expect(last().url).toBe("wss://bridge.example/ws/db_subscriptions?apikey=anon%20key&batch=1");
  });

  test("wsUrl overrides the socket address and keeps its own query", () => {
    const c = client({ wsUrl: "ws://elsewhere:9/ws?x=1" });
    c.connect();
    expect(last().url).toBe("ws://elsewhere:9/ws?x=1&apikey=anon%20key&batch=1");
  });

  test("on open: the token first, then every subscription with its filter, then realtime", () => {
    const c = client({ accessToken: "jwt-1" });
    c.subscribe("position-updates", { filters: { user_id: "u1" } }, () => {});
    c.subscribe("trade-updates", { filter: "symbol=eq.AAPL", since: 7 }, () => {});
    last().open();
    expect(last().sent).toEqual([
      { type: "access_token", token: "jwt-1" },
      { type: "subscribe", channel: "position-updates", client_id: "sub-1", filters: { user_id: "u1" } },
      { type: "subscribe", channel: "trade-updates", client_id: "sub-2", filter: "symbol=eq.AAPL", since: 7 },
    ]);
    expect(c.status).toBe("realtime");
  });
});

describe("delivery, dedupe and resume", () => {
  test("events reach their own subscription; seqs at or below the cursor are dropped", () => {
    const c = client();
    const a: number[] = [];
    const b: number[] = [];
    c.subscribe("position-updates", {}, (e) => a.push(e.seq));
    c.subscribe("position-updates", {}, (e) => b.push(e.seq));
    last().open();
    last().confirmAll(10);
    last().receive(change(11, "srv-sub-1"));
    last().receive(change(12, "srv-sub-2"));
    last().receive(change(11, "srv-sub-1")); // a duplicate
    last().receive(change(10, "srv-sub-2")); // at the starting head
    last().receive(change(13, "srv-sub-1"));
    expect(a).toEqual([11, 13]);
    expect(b).toEqual([12]);
    expect(c.stats.duplicatesDropped).toBe(2);
  });

  test("a batch frame (an array) is handled frame by frame, in order", () => {
    const c = client();
    const a: number[] = [];
    const b: number[] = [];
    c.subscribe("position-updates", {}, (e) => a.push(e.seq));
    c.subscribe("position-updates", {}, (e) => b.push(e.seq));
    last().open();
    last().confirmAll(10);
    last().onmessage?.({
      data: JSON.stringify([change(11, "srv-sub-1"), change(12, "srv-sub-2"), change(13, "srv-sub-1")]),
    });
    expect(a).toEqual([11, 13]);
    expect(b).toEqual([12]);
  });

  test("after a drop every subscription resumes from its own last seq", async () => {
    const c = client();
    c.subscribe("position-updates", {}, () => {});
    c.subscribe("trade-updates", {}, () => {});
    c.subscribe("portfolio-updates", { since: 3 }, () => {});
    last().open();
    last().confirmAll(20);
    last().receive(change(21, "srv-sub-1"));
    last().fail();
    expect(c.status).toBe("connecting");
    await vi.advanceTimersByTimeAsync(3000);
    last().open();
    expect(last().subscribes().map((f) => [f.channel, f.since])).toEqual([
      ["position-updates", 21],
      ["trade-updates", 20], // nothing arrived: the head it was confirmed at
      ["portfolio-updates", 3],
    ]);
  });

  test("an exception in onEvent is reported and delivery goes on", () => {
    const report = vi.fn();
    vi.stubGlobal("reportError", report);
    const c = client();
    const seen: number[] = [];
    c.subscribe("position-updates", {}, (e) => {
      seen.push(e.seq);
      if (e.seq === 1) throw new Error("app bug");
    });
    last().open();
    last().confirmAll(0);
    last().receive(change(1, "srv-sub-1"));
    last().receive(change(2, "srv-sub-1"));
    expect(seen).toEqual([1, 2]);
    expect(report).toHaveBeenCalledOnce();
    vi.unstubAllGlobals();
  });

  test("unsubscribing before the confirmation unsubscribes once the bridge confirms", () => {
    const c = client();
    const stop = c.subscribe("position-updates", {}, () => {});
    last().open();
    stop();
    last().confirmAll(5);
    expect(last().sent.at(-1)).toEqual({ type: "unsubscribe", subscription_id: "srv-sub-1" });
  });
});

describe("a snapshot's token", () => {
  const TOKEN = "7340:7345:7341,7343";

  test("goes with since on the first subscribe and on every resume of that subscription", async () => {
    const c = client();
    c.subscribe("position-updates", { since: 40, snapshotToken: TOKEN }, () => {});
    c.subscribe("trade-updates", { since: 40 }, () => {});
    last().open();
    expect(last().subscribes()).toEqual([
      { type: "subscribe", channel: "position-updates", client_id: "sub-1", since: 40, snapshot_token: TOKEN },
      { type: "subscribe", channel: "trade-updates", client_id: "sub-2", since: 40 },
    ]);
    last().confirmAll(45);
    last().receive(change(41, "srv-sub-1"));
    // The bridge ends the subscription (replay_failed): subscribed again, token and all.
    last().receive({ type: "error", code: "replay_failed", message: "db down", subscription_id: "srv-sub-1" });
    await vi.advanceTimersByTimeAsync(1000);
    expect(last().subscribes()[2]).toEqual({
      type: "subscribe",
      channel: "position-updates",
      client_id: "sub-1",
      since: 41,
      snapshot_token: TOKEN,
    });
    last().confirmAll(45);
    last().receive(change(43, "srv-sub-1"));
    // A dropped socket (a reconnect frame, slow_consumer, ... end the same way).
    last().fail();
    await vi.advanceTimersByTimeAsync(3000);
    last().open();
    expect(last().subscribes().map((f) => [f.channel, f.since, f.snapshot_token])).toEqual([
      ["position-updates", 43, TOKEN],
      ["trade-updates", 40, undefined],
    ]);
  });

  test("is forgotten on resync_required: later resumes go without it", async () => {
    const c = client();
    c.subscribe("position-updates", { since: 40, snapshotToken: TOKEN }, () => {});
    last().open();
    last().confirmAll(500);
    last().receive({
      type: "resync_required",
      subscription_id: "srv-sub-1",
      channel: "position-updates",
      earliest_seq: 300,
      next_seq: 500,
    });
    last().fail();
    await vi.advanceTimersByTimeAsync(3000);
    last().open();
    expect(last().subscribes()).toEqual([
      { type: "subscribe", channel: "position-updates", client_id: "sub-1", since: 500 },
    ]);
  });

  test("goes on every poll with since, and not after a 409 resync_required", async () => {
    const { fetch, urls } = polls(
      new Response(JSON.stringify({ events: [change(41, "")], next_seq: 41 }), { status: 200 }),
      new Response(JSON.stringify({ code: "resync_required", earliest_seq: 90, next_seq: 120 }), { status: 409 }),
    );
    const c = client({ fetch, fallback: { afterFailures: 1 } });
    c.subscribe("position-updates", { since: 40, snapshotToken: TOKEN }, () => {});
    last().fail();
    await vi.advanceTimersByTimeAsync(0);
    const params = urls.map((url) => new URL(url).searchParams);
    expect(params.map((p) => [p.get("since"), p.get("snapshot_token")])).toEqual([
      ["40", TOKEN],
      ["41", TOKEN],
      ["120", null],
    ]);
  });

  test("needs since; a null token (no database log) is no token", () => {
    const c = client();
    expect(() => c.subscribe("position-updates", { snapshotToken: TOKEN }, () => {})).toThrow(
      /snapshotToken.*since/,
    );
    c.subscribe("position-updates", { snapshotToken: null }, () => {});
    c.subscribe("trade-updates", { since: 7, snapshotToken: null }, () => {});
    last().open();
    expect(last().subscribes().map((f) => [f.since, "snapshot_token" in f])).toEqual([
      [undefined, false],
      [7, false],
    ]);
  });
});

describe("reconnect backoff and the polling fallback", () => {
  test("failed attempts wait 3 s, 6 s, …, then poll; a probe brings the socket back", async () => {
    const responses: Frame[] = [
      { events: [], next_seq: 40 },
      { events: [change(41, "")], next_seq: 41 },
    ];
    const urls: string[] = [];
    const fetch = vi.fn((url: string) => {
      urls.push(url);
      const body = responses.shift();
      return body
        ? Promise.resolve(new Response(JSON.stringify(body), { status: 200 }))
        : new Promise<Response>(() => {}); // a long-poll that is still waiting
    });
    const c = client({ fetch, fallback: { afterFailures: 3, probeIntervalMs: 20_000 } });
    const statuses: string[] = [];
    c.onStatusChange((s) => statuses.push(s));
    const seqs: number[] = [];
    c.subscribe("position-updates", { filters: { user_id: "u 1" } }, (e) => seqs.push(e.seq));

    last().fail(); // failure 1
    await vi.advanceTimersByTimeAsync(2999);
    expect(sockets).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets).toHaveLength(2);
    last().fail(); // failure 2
    await vi.advanceTimersByTimeAsync(5999);
    expect(sockets).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(sockets).toHaveLength(3);
    last().fail(); // failure 3: poll instead
    await vi.advanceTimersByTimeAsync(0);
    expect(c.status).toBe("polling");
    expect(urls[0]).toBe(
      "https://bridge.example/api/channels/position-updates/events?wait=0&limit=500&filter=user_id%3Deq.u+1&apikey=anon+key",
    );
    expect(urls[1]).toContain("since=40&wait=25&");
    expect(seqs).toEqual([41]);

    // No socket attempt until the probe, which then wins back realtime.
    expect(sockets).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(20_000);
    expect(sockets).toHaveLength(4);
    last().open();
    expect(c.status).toBe("realtime");
    expect(last().subscribes()[0]?.since).toBe(41);
    expect(statuses).toEqual(["polling", "realtime"]);
  });

  test("a socket that opens and dies at once counts as failing; one that stays up resets the count", async () => {
    const c = client({ stableAfterMs: 1000, fallback: { afterFailures: 2 } });
    c.subscribe("position-updates", {}, () => {});
    last().open();
    last().fail(); // 1: died before it was stable
    await vi.advanceTimersByTimeAsync(3000);
    last().open();
    await vi.advanceTimersByTimeAsync(1000); // stable: the count and the backoff reset
    last().fail();
    expect(c.status).toBe("connecting"); // not polling
    await vi.advanceTimersByTimeAsync(3000); // back to the first delay
    expect(sockets).toHaveLength(3);
  });

  test("with no WebSocket in the runtime, it polls from the start", async () => {
    const fetch = vi.fn(() => new Promise<Response>(() => {}));
    const c = createClient({ url: "http://b", apiKey: "k", WebSocket: undefined, environment: null, fetch });
    vi.stubGlobal("WebSocket", undefined);
    c.subscribe("trade-updates", {}, () => {});
    expect(c.status).toBe("polling");
    expect(fetch).toHaveBeenCalledOnce();
    vi.unstubAllGlobals();
  });

  test("polling that fails too shows offline, and retries with backoff", async () => {
    const fetch = vi.fn(() => Promise.reject(new TypeError("network down")));
    const c = client({ fetch, fallback: { afterFailures: 1, retry: { baseMs: 1000, maxMs: 4000 } } });
    c.subscribe("position-updates", {}, () => {});
    last().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(c.status).toBe("offline");
    expect(fetch).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(fetch).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(2000);
    expect(fetch).toHaveBeenCalledTimes(3);
  });

  test("a 4xx from the poll endpoint ends that subscription with the bridge's code", async () => {
    const fetch = vi.fn(() =>
      Promise.resolve(
        new Response(JSON.stringify({ code: "unknown_channel", message: "no channel named 'x'" }), {
          status: 404,
        }),
      ),
    );
    const c = client({ fetch, fallback: { afterFailures: 1 } });
    const errors: RealtimeError[] = [];
    c.subscribe("x", { onError: (e) => errors.push(e) }, () => {});
    last().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(errors.map((e) => e.code)).toEqual(["unknown_channel"]);
    expect(fetch).toHaveBeenCalledOnce();
  });

  test("a 409 resync_required while polling reports it and continues from next_seq", async () => {
    const { fetch, urls } = polls(
      new Response(JSON.stringify({ code: "resync_required", earliest_seq: 90, next_seq: 120 }), { status: 409 }),
    );
    const c = client({ fetch, fallback: { afterFailures: 1 } });
    const resyncs: unknown[] = [];
    c.subscribe("position-updates", { since: 5, onResync: (info) => resyncs.push(info) }, () => {});
    last().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(resyncs).toEqual([{ channel: "position-updates", earliestSeq: 90, nextSeq: 120 }]);
    expect(urls[1]).toContain("since=120");
  });
});

describe("heartbeat", () => {
  test("a ping every interval; no frame within the timeout drops the socket and reconnects", async () => {
    const c = client({ heartbeat: { intervalMs: 25_000, timeoutMs: 10_000 } });
    c.subscribe("position-updates", {}, () => {});
    const first = last();
    first.open();
    await vi.advanceTimersByTimeAsync(25_000);
    expect(first.sent.at(-1)).toEqual({ type: "ping" });
    first.receive({ type: "pong" });
    await vi.advanceTimersByTimeAsync(25_000 + 9_999);
    expect(c.status).toBe("realtime");
    await vi.advanceTimersByTimeAsync(1);
    expect(first.closedWith).toBe(4000);
    expect(c.status).toBe("connecting");
    await vi.advanceTimersByTimeAsync(3000);
    expect(sockets).toHaveLength(2);
  });
});

describe("replies, errors and resync", () => {
  test("an error reply belongs to the frame it answers (replies come in order)", () => {
    const c = client();
    const errors: string[] = [];
    c.subscribe("nope", { onError: (e) => errors.push(`nope:${e.code}`) }, () => {});
    c.subscribe("position-updates", { onError: (e) => errors.push(`positions:${e.code}`) }, () => {});
    const socket = last();
    socket.open();
    socket.receive({ type: "error", code: "unknown_channel", message: "no channel named 'nope'", channel: "nope" });
    socket.receive({
      type: "subscribed",
      subscription_id: "s2",
      channel: "position-updates",
      seq: 0,
      client_id: "sub-2",
    });
    expect(errors).toEqual(["nope:unknown_channel"]);
    const seen: number[] = [];
    c.subscribe("trade-updates", { onError: (e) => errors.push(`trades:${e.code}`) }, (e) => seen.push(e.seq));
    socket.receive({ type: "error", code: "unauthorized", message: "no" });
    expect(errors).toEqual(["nope:unknown_channel", "trades:unauthorized"]);
  });

  test("rate_limited subscribes are retried a second later", async () => {
    const c = client();
    c.subscribe("position-updates", {}, () => {});
    last().open();
    last().receive({ type: "error", code: "rate_limited", message: "slow down" });
    expect(last().subscribes()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(last().subscribes()).toHaveLength(2);
  });

  test("resync_required reaches the subscription's callback and the client's listeners, and moves the cursor", async () => {
    const c = client();
    const seen: unknown[] = [];
    c.on("resync", (info) => seen.push(["client", info]));
    c.subscribe("position-updates", { since: 1, onResync: (info) => seen.push(["sub", info]) }, () => {});
    last().open();
    last().confirmAll(500);
    last().receive({
      type: "resync_required",
      subscription_id: "srv-sub-1",
      channel: "position-updates",
      earliest_seq: 300,
      next_seq: 500,
    });
    const info = { channel: "position-updates", earliestSeq: 300, nextSeq: 500 };
    expect(seen).toEqual([
      ["sub", info],
      ["client", info],
    ]);
    // A later resume starts where the bridge continued, not at the lost seq.
    last().fail();
    await vi.advanceTimersByTimeAsync(3000);
    last().open();
    expect(last().subscribes()[0]?.since).toBe(500);
  });

  test("replay_failed ends the server's subscription: subscribe again from the cursor", async () => {
    const c = client();
    c.subscribe("position-updates", {}, () => {});
    last().open();
    last().confirmAll(8);
    last().receive(change(9, "srv-sub-1"));
    last().receive({ type: "error", code: "replay_failed", message: "db down", subscription_id: "srv-sub-1" });
    await vi.advanceTimersByTimeAsync(1000);
    expect(last().subscribes().map((f) => f.since)).toEqual([undefined, 9]);
    expect(c.status).toBe("realtime");
  });
});

describe("tokens", () => {
  test("token_expired: getAccessToken is asked and the new token sent", async () => {
    const getAccessToken = vi.fn(async () => "jwt-2");
    const c = client({ accessToken: "jwt-1", getAccessToken });
    c.subscribe("position-updates", {}, () => {});
    const socket = last();
    socket.open();
    socket.receive({ type: "access_token", status: "ok" });
    socket.confirmAll(0);
    socket.receive({ type: "error", code: "token_expired", message: "your token expired; subscriptions are paused until you send ..." });
    await vi.advanceTimersByTimeAsync(0);
    expect(getAccessToken).toHaveBeenCalledOnce();
    expect(socket.sent.at(-1)).toEqual({ type: "access_token", token: "jwt-2" });
    // Reconnects use the new token.
    socket.fail();
    await vi.advanceTimersByTimeAsync(3000);
    last().open();
    expect(last().sent[0]).toEqual({ type: "access_token", token: "jwt-2" });
  });

  test.each([
    ["unauthorized", "not allowed to read 'position-updates': the anon key may only read public channels"],
    ["token_expired", "the connection's token has expired; send an access_token frame"],
  ])("an expired token at connect: refreshed, then the subscribe (refused: %s) is retried", async (code, message) => {
    const c = client({ accessToken: "old", getAccessToken: () => "new" });
    const errors: RealtimeError[] = [];
    c.subscribe("position-updates", { onError: (e) => errors.push(e) }, () => {});
    const socket = last();
    socket.open();
    // Replies in order: to the access_token frame, then to the subscribe.
    socket.receive({ type: "error", code: "token_expired", message: "token has expired; send a fresh one" });
    socket.receive({ type: "error", code, message });
    await vi.advanceTimersByTimeAsync(0);
    expect(socket.sent.slice(-2)).toEqual([
      { type: "access_token", token: "new" },
      { type: "subscribe", channel: "position-updates", client_id: "sub-1" },
    ]);
    expect(errors).toEqual([]);
  });

  test("without getAccessToken: a tokenExpired event, and setAccessToken resumes", () => {
    const c = client();
    const expired = vi.fn();
    c.on("tokenExpired", expired);
    const errors: RealtimeError[] = [];
    c.subscribe("position-updates", { onError: (e) => errors.push(e) }, () => {});
    last().open();
    last().receive({ type: "error", code: "unauthorized", message: "the anon key may only read public channels" });
    expect(errors[0]?.code).toBe("unauthorized");
    last().receive({ type: "error", code: "token_expired", message: "your token expired; subscriptions are paused" });
    expect(expired).toHaveBeenCalledOnce();
    c.setAccessToken("signed-in");
    expect(last().sent.slice(-2)).toEqual([
      { type: "access_token", token: "signed-in" },
      { type: "subscribe", channel: "position-updates", client_id: "sub-1" },
    ]);
  });

  test("polls carry the token as a Bearer header", async () => {
    const inits: (RequestInit | undefined)[] = [];
    const fetch = vi.fn((_url: string, init?: RequestInit) => {
      inits.push(init);
      return new Promise<Response>(() => {});
    });
    const c = client({ fetch, accessToken: "jwt", WebSocket: undefined });
    vi.stubGlobal("WebSocket", undefined);
    c.subscribe("position-updates", {}, () => {});
    expect(inits[0]?.headers).toEqual({ Authorization: "Bearer jwt" });
    vi.unstubAllGlobals();
  });
});

describe("network and page visibility", () => {
  test("offline: status offline, no reconnect attempts; online: reconnect at once", async () => {
    const env = fakeEnvironment();
    const c = client({ environment: env });
    c.subscribe("position-updates", {}, () => {});
    last().open();
    env.fire.offline();
    expect(c.status).toBe("offline");
    expect(sockets[0]?.closedWith).toBe(4000);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(1);
    env.fire.online();
    expect(sockets).toHaveLength(2);
    last().open();
    expect(c.status).toBe("realtime");
  });

  test("starting offline waits for the network", () => {
    const env = fakeEnvironment();
    env.online = false;
    const c = client({ environment: env });
    c.subscribe("position-updates", {}, () => {});
    expect(sockets).toHaveLength(0);
    expect(c.status).toBe("offline");
  });

  test("becoming visible skips the backoff wait, or checks a live socket with a ping", async () => {
    const env = fakeEnvironment();
    const c = client({ environment: env });
    c.subscribe("position-updates", {}, () => {});
    last().fail();
    expect(sockets).toHaveLength(1);
    env.fire.visible();
    expect(sockets).toHaveLength(2);
    last().open();
    env.fire.visible();
    expect(last().sent.at(-1)).toEqual({ type: "ping" });
    expect(c.status).toBe("realtime");
  });

  test("close() stops everything and says offline", async () => {
    const c = client();
    const events: ChangeEvent<PositionUpdate>[] = [];
    c.subscribe("position-updates", {}, (e) => events.push(e));
    last().open();
    c.close();
    expect(c.status).toBe("offline");
    expect(last().closedWith).toBe(4000);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(sockets).toHaveLength(1);
    expect(() => c.subscribe("x", {}, () => {})).toThrow(/closed/);
  });
});
