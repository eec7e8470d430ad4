/**
 * `client.snapshot` with a scripted fetch: the URL, paging by cursor with the
 * first page's seq, the token and its renewal, and every kind of failure.
 */

import { describe, expect, test, vi } from "vitest";

import {
  createClient,
  RealtimeError,
  type ClientOptions,
  type FetchLike,
  type SnapshotPage,
} from "../src/index.js";
import { snapshotUrl } from "../src/snapshot.js";

type Reply = { status: number; body: unknown } | Error;

/** A fetch answering from `replies` in turn, recording each URL and Authorization header. */
function scripted(...replies: Reply[]) {
  const calls: { url: string; authorization: string | undefined; signal: AbortSignal | undefined }[] = [];
  const fetch = vi.fn<FetchLike>(async (url, init) => {
    const headers = (init?.headers ?? {}) as Record<string, string>;
    calls.push({ url, authorization: headers.Authorization, signal: init?.signal ?? undefined });
    const reply = replies.shift();
    if (reply === undefined) throw new Error(`unexpected request ${url}`);
    if (reply instanceof Error) throw reply;
    return new Response(JSON.stringify(reply.body), {
      status: reply.status,
      headers: { "Content-Type": "application/json" },
    });
  });
  return { fetch, calls };
}

function page(seq: number, records: object[], next: string | null): Reply {
  const body: SnapshotPage<object> = { channel: "position-updates", seq, records, next_cursor: next };
  return { status: 200, body };
}

function client(fetch: FetchLike, options: Partial<ClientOptions> = {}) {
  return createClient({
    url: "https://bridge.example/",
    apiKey: "anon key",
    WebSocket: undefined,
    fallback: { enabled: true },
    environment: null,
    fetch,
    ...options,
  });
}

function query(url: string | undefined): URLSearchParams {
  return new URL(url ?? "").searchParams;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error("expected a rejection");
    },
    (reason: unknown) => reason,
  );
}

describe("snapshotUrl", () => {
  test("spells the channel, filter, limit, cursor and key as the bridge reads them", () => {
    const url = snapshotUrl({
      url: "https://bridge.example//",
      apiKey: "k&1",
      channel: "public.my table",
      filter: { user_id: "u,1", status: ["open", "pending"] },
      limit: 50,
      cursor: "WzAsMTBd",
    });
    expect(url.startsWith("https://bridge.example/api/channels/public.my%20table/snapshot?")).toBe(true);
    const params = query(url);
    expect(params.get("filter")).toBe('user_id=eq."u,1",status=in.(open,pending)');
    expect(params.get("limit")).toBe("50");
    expect(params.get("cursor")).toBe("WzAsMTBd");
    expect(params.get("apikey")).toBe("k&1");
  });

  test("leaves out what is not given; a filter string goes as it is", () => {
    const params = query(snapshotUrl({ url: "http://b", apiKey: "k", channel: "c", filter: "a=gt.5" }));
    expect([...params.keys()]).toEqual(["filter", "apikey"]);
    expect(params.get("filter")).toBe("a=gt.5");
  });
});

describe("client.snapshot", () => {
  test("follows every cursor, concatenates the records and keeps the first page's seq", async () => {
    const { fetch, calls } = scripted(
      page(40, [{ id: 1 }, { id: 2 }], "c1"),
      page(43, [{ id: 3 }, { id: 4 }], "c2"),
      page(45, [{ id: 5 }], null),
    );
    const c = client(fetch, { accessToken: "jwt" });
    const snapshot = await c.snapshot("position-updates", { filters: { user_id: "u1" }, limit: 2 });
    expect(snapshot).toEqual({
      seq: 40,
      snapshotToken: null,
      records: [{ id: 1 }, { id: 2 }, { id: 3 }, { id: 4 }, { id: 5 }],
    });
    expect(calls.map((call) => query(call.url).get("cursor"))).toEqual([null, "c1", "c2"]);
    for (const call of calls) {
      expect(query(call.url).get("filter")).toBe("user_id=eq.u1");
      expect(query(call.url).get("limit")).toBe("2");
      expect(call.authorization).toBe("Bearer jwt");
    }
  });

  test("exposes the first page's snapshot_token (later pages carry none)", async () => {
    const first = { status: 200, body: { channel: "c", seq: 40, records: [{ id: 1 }], next_cursor: "c1", snapshot_token: "7340:7345:7341,7343" } };
    const second = { status: 200, body: { channel: "c", seq: 44, records: [{ id: 2 }], next_cursor: null, snapshot_token: null } };
    const { fetch } = scripted(first, second, page(3, [], null));
    const c = client(fetch);
    const snapshot = await c.snapshot("c", { limit: 1 });
    expect(snapshot).toEqual({ seq: 40, snapshotToken: "7340:7345:7341,7343", records: [{ id: 1 }, { id: 2 }] });
    // No database log (null), or a bridge that predates the token (absent): null.
    expect((await c.snapshot("c")).snapshotToken).toBeNull();
  });

  test("sends the token current at each request, and none without one", async () => {
    const { fetch, calls } = scripted(page(1, [], null), page(2, [], null));
    const c = client(fetch);
    await c.snapshot("position-updates");
    c.setAccessToken("later");
    await c.snapshot("position-updates");
    expect(calls.map((call) => call.authorization)).toEqual([undefined, "Bearer later"]);
  });

  test("token_expired: one renewal through getAccessToken, then the same page again", async () => {
    const { fetch, calls } = scripted(
      page(9, [{ id: 1 }], "c1"),
      { status: 401, body: { code: "token_expired", message: "the token expired" } },
      page(12, [{ id: 2 }], null),
    );
    const getAccessToken = vi.fn(async () => "fresh");
    const c = client(fetch, { accessToken: "old", getAccessToken });
    const snapshot = await c.snapshot("position-updates");
    expect(snapshot).toEqual({ seq: 9, snapshotToken: null, records: [{ id: 1 }, { id: 2 }] });
    expect(getAccessToken).toHaveBeenCalledOnce();
    expect(calls.map((call) => [query(call.url).get("cursor"), call.authorization])).toEqual([
      [null, "Bearer old"],
      ["c1", "Bearer old"],
      ["c1", "Bearer fresh"],
    ]);
  });

  test("token_expired without getAccessToken rejects with the code and tells the listeners", async () => {
    const { fetch } = scripted({ status: 401, body: { code: "token_expired", message: "the token expired" } });
    const c = client(fetch, { accessToken: "old" });
    const expired = vi.fn();
    c.on("tokenExpired", expired);
    const error = await rejection(c.snapshot("position-updates"));
    expect(error).toBeInstanceOf(RealtimeError);
    expect(error).toMatchObject({ code: "token_expired", status: 401, message: "the token expired" });
    expect(expired).toHaveBeenCalledOnce();
  });

  test("a renewed token the bridge still calls expired is not retried forever", async () => {
    const expiredReply: Reply = { status: 401, body: { code: "token_expired", message: "expired" } };
    const { fetch } = scripted(expiredReply, expiredReply, expiredReply, expiredReply);
    const getAccessToken = vi.fn(() => "also-expired");
    const c = client(fetch, { accessToken: "old", getAccessToken });
    c.on("error", () => {});
    const error = await rejection(c.snapshot("position-updates"));
    expect(error).toMatchObject({ code: "token_expired" });
    expect(fetch.mock.calls.length).toBeLessThanOrEqual(3);
    expect(getAccessToken).toHaveBeenCalledOnce();
  });

  test.each([
    [404, "unknown_channel", "no channel named nope"],
    [400, "invalid_filter", "unknown column x"],
    [403, "forbidden", "no"],
    [503, "unavailable", "hosted Supabase mode has no DATABASE_URL"],
  ])("HTTP %i rejects with a RealtimeError carrying %s, the message and the status", async (status, code, message) => {
    const { fetch } = scripted({ status, body: { code, message, extra: 1 } });
    const error = await rejection(client(fetch).snapshot("nope"));
    expect(error).toBeInstanceOf(RealtimeError);
    expect(error).toMatchObject({ code, message, status, channel: "nope", details: { code, message, extra: 1 } });
  });

  test("a 401 unauthorized is final (no renewal without one under way)", async () => {
    const { fetch } = scripted({ status: 401, body: { code: "unauthorized", message: "anon" } });
    const getAccessToken = vi.fn(() => "x");
    const error = await rejection(client(fetch, { getAccessToken }).snapshot("position-updates"));
    expect(error).toMatchObject({ code: "unauthorized", status: 401 });
    expect(getAccessToken).not.toHaveBeenCalled();
  });

  test("an error without a JSON body still has a code; a 200 that is no snapshot is `bad_response`", async () => {
    const plain = vi.fn<FetchLike>(async () => new Response("Bad Gateway", { status: 502 }));
    expect(await rejection(client(plain).snapshot("c"))).toMatchObject({ code: "http_502", status: 502 });
    const { fetch } = scripted({ status: 200, body: { events: [], next_seq: 3 } });
    expect(await rejection(client(fetch).snapshot("c"))).toMatchObject({ code: "bad_response", status: 200 });
  });

  test("a network failure rejects with `network_error`", async () => {
    const { fetch } = scripted(new TypeError("fetch failed"));
    const error = await rejection(client(fetch).snapshot("position-updates"));
    expect(error).toBeInstanceOf(RealtimeError);
    expect(error).toMatchObject({ code: "network_error", status: undefined, channel: "position-updates" });
    expect((error as Error).message).toMatch(/fetch failed/);
  });

  test("an abort rejects with the signal's reason and stops paging", async () => {
    const controller = new AbortController();
    const { fetch, calls } = scripted(page(1, [{ id: 1 }], "c1"), page(2, [{ id: 2 }], null));
    fetch.mockImplementationOnce(async (url, init) => {
      calls.push({ url, authorization: undefined, signal: init?.signal ?? undefined });
      controller.abort();
      return new Response(JSON.stringify({ channel: "c", seq: 1, records: [], next_cursor: "c1" }));
    });
    const error = await rejection(client(fetch).snapshot("c", { signal: controller.signal }));
    expect(error).toBeInstanceOf(DOMException);
    expect((error as DOMException).name).toBe("AbortError");
    expect(calls).toHaveLength(1);
    expect(calls[0]?.signal).toBe(controller.signal);
  });

  test("an unspellable filter map is `invalid_filter`; filter and filters together, or a closed client, throw", async () => {
    const { fetch } = scripted();
    const c = client(fetch);
    const error = await rejection(c.snapshot("c", { filters: { price: { gt: 1, lt: 2 } } }));
    expect(error).toMatchObject({ code: "invalid_filter" });
    await expect(c.snapshot("c", { filter: "a=eq.1", filters: { a: 1 } })).rejects.toThrow(TypeError);
    c.close();
    await expect(c.snapshot("c")).rejects.toThrow(/closed/);
    expect(fetch).not.toHaveBeenCalled();
  });
});
