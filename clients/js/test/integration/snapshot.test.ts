/**
 * `client.snapshot` against a real bridge (started by the global setup): the
 * current rows, typed, across pages; a user token's row scope; errors with
 * their codes; token renewal; snapshot + `since` ending exactly as the
 * database, with rows written before, during and after the snapshot; and
 * snapshot + `since` + its token handing each change over exactly once.
 */

import { describe, expect, expectTypeOf, inject, test } from "vitest";
import WebSocket from "ws";

import {
  applyEvent,
  initSnapshot,
  recordsOf,
  RealtimeError,
  type ChangeEvent,
  type FetchLike,
  type PositionUpdate,
  type RecordsState,
  type TableRow,
  type WebSocketConstructor,
} from "../../src/index.js";
import { python, sql, userToken } from "../support/bridge.js";
import { simulate, testClient, uniqueUser, until, untilStatus } from "../support/helpers.js";
import { onCleanup, track } from "../support/cleanup.js";
import { TcpProxy } from "../support/proxy.js";

const bridge = inject("bridge");

/** The global fetch, recording each URL requested (the bridge answers for real). */
function recordingFetch(): { fetch: FetchLike; urls: string[] } {
  const urls: string[] = [];
  return {
    urls,
    fetch: (input, init) => {
      urls.push(input);
      return fetch(input, init);
    },
  };
}

/** `error` as the RealtimeError the promise rejected with. */
async function refusal(promise: Promise<unknown>): Promise<RealtimeError> {
  const error = await promise.then(
    () => {
      throw new Error("expected a rejection");
    },
    (reason: unknown) => reason,
  );
  expect(error).toBeInstanceOf(RealtimeError);
  return error as RealtimeError;
}

interface DbPosition {
  id: number;
  current_price: number | null;
  status: string;
}

/** The user's positions as Postgres has them, in id order. */
async function positionsInDatabase(user: string): Promise<DbPosition[]> {
  const out = await python(
    [
      "import asyncio, asyncpg, json",
      "async def main():",
      `    conn = await asyncpg.connect(${JSON.stringify(bridge.databaseUrl)})`,
      "    rows = await conn.fetch(",
      "        'SELECT id, current_price::float8 AS current_price, status FROM positions'",
      `        ' WHERE user_id = $1 ORDER BY id', ${JSON.stringify(user)})`,
      "    await conn.close()",
      "    print(json.dumps([dict(r) for r in rows]))",
      "asyncio.run(main())",
    ].join("\n"),
    bridge.dataDir,
  );
  return JSON.parse(out) as DbPosition[];
}

function summary(rows: readonly PositionUpdate[]): DbPosition[] {
  return rows
    .map((p) => ({ id: p.id, current_price: p.current_price ?? null, status: p.status }))
    .sort((a, b) => a.id - b.id);
}

describe("client.snapshot", () => {
  test("returns the current rows as typed payloads, following every page once", async () => {
    const user = uniqueUser("snap-pages");
    const other = uniqueUser("snap-pages-other");
    const written: number[] = [];
    for (let i = 0; i < 7; i += 1) {
      const { position } = await simulate(bridge, {
        user_id: user,
        symbol: `P${i}`,
        entry_price: 10 + i,
        quantity: 2,
      });
      written.push(position.id);
    }
    await simulate(bridge, { user_id: other, symbol: "NOT-THIS-USER" });

    const { fetch, urls } = recordingFetch();
    const client = track(testClient(bridge, { fetch }));
    const snapshot = await client.snapshot("position-updates", { filters: { user_id: user }, limit: 3 });
    expectTypeOf(snapshot.records).toEqualTypeOf<PositionUpdate[]>();
    expectTypeOf(snapshot.seq).toEqualTypeOf<number>();

    // Every row once, in id order, and nothing of the other user.
    expect(snapshot.records.map((p) => p.id)).toEqual(written);
    expect(new Set(snapshot.records.map((p) => p.user_id))).toEqual(new Set([user]));
    // The plugin's payload (computed fields included), not the raw row.
    expect(snapshot.records[3]).toMatchObject({ symbol: "P3", entry_price: 13, quantity: 2, market_value: 26 });
    expect(snapshot.seq).toBeGreaterThan(0);

    // Three rows a page: at least three requests, each after the first with
    // the previous page's cursor, all with the same filter and limit.
    expect(urls.length).toBeGreaterThanOrEqual(3);
    const queries = urls.map((url) => new URL(url, "http://x").searchParams);
    expect(queries[0]?.has("cursor")).toBe(false);
    for (const query of queries.slice(1)) expect(query.get("cursor")).toMatch(/.+/);
    expect(new Set(queries.map((q) => q.get("cursor"))).size).toBe(urls.length);
    for (const query of queries) {
      expect(query.get("filter")).toBe(`user_id=eq.${user}`);
      expect(query.get("limit")).toBe("3");
    }
    expect(urls[0]).toContain("/api/channels/position-updates/snapshot?");
  });

  test("a filter string narrows the rows like a subscription's", async () => {
    const user = uniqueUser("snap-filter");
    const kept = await simulate(bridge, { user_id: user, symbol: "KEEP" });
    const closed = await simulate(bridge, { user_id: user, symbol: "CLOSED" });
    await sql(bridge, `UPDATE positions SET status = 'closed' WHERE id = ${closed.position.id}`);
    const client = track(testClient(bridge));
    const snapshot = await client.snapshot("position-updates", { filter: `user_id=eq.${user},status=eq.open` });
    expect(snapshot.records.map((p) => p.id)).toEqual([kept.position.id]);
  });

  test("a table channel gives raw rows", async () => {
    const user = uniqueUser("snap-table");
    const { position } = await simulate(bridge, { user_id: user, symbol: "RAW", entry_price: 5, quantity: 4 });
    const client = track(testClient(bridge));
    const snapshot = await client.snapshot("public.positions", { filters: { user_id: user } });
    expectTypeOf(snapshot.records).toEqualTypeOf<TableRow[]>();
    expect(snapshot.records).toHaveLength(1);
    expect(snapshot.records[0]).toMatchObject({ id: position.id, user_id: user, symbol: "RAW" });
    expect(snapshot.records[0]).not.toHaveProperty("market_value"); // no plugin model on a raw row
  });
});

describe("authorization", () => {
  test("a user token sees only that user's rows, without any filter", async () => {
    const user = uniqueUser("snap-mine");
    const other = uniqueUser("snap-theirs");
    const mine = [
      (await simulate(bridge, { user_id: user, symbol: "MINE-1" })).position.id,
      (await simulate(bridge, { user_id: user, symbol: "MINE-2" })).position.id,
    ];
    await simulate(bridge, { user_id: other, symbol: "THEIRS" });
    const token = await userToken(bridge.dataDir, user, 600);

    const asUser = track(testClient(bridge, { apiKey: bridge.anonKey, accessToken: token }));
    const snapshot = await asUser.snapshot("position-updates");
    expect(snapshot.records.map((p) => p.id)).toEqual(mine);

    // Asking for the other user's rows explicitly still gives none of them.
    const filtered = await asUser.snapshot("position-updates", { filters: { user_id: other } });
    expect(filtered.records).toEqual([]);

    // The service key, same filter: the other user's row is there (the scope is the token's).
    const service = track(testClient(bridge));
    const theirs = await service.snapshot("position-updates", { filters: { user_id: other } });
    expect(theirs.records.map((p) => p.symbol)).toEqual(["THEIRS"]);
  });

  test("the anon key alone is refused with `unauthorized` (401)", async () => {
    const client = track(testClient(bridge, { apiKey: bridge.anonKey }));
    const error = await refusal(client.snapshot("position-updates"));
    expect(error.code).toBe("unauthorized");
    expect(error.status).toBe(401);
    expect(error.channel).toBe("position-updates");
    expect(error.message).not.toBe("");
  });

  test("an expired token is renewed through getAccessToken and the request repeated", async () => {
    const user = uniqueUser("snap-renew");
    const { position } = await simulate(bridge, { user_id: user, symbol: "RENEWED" });
    const [expiring, fresh] = await Promise.all([
      userToken(bridge.dataDir, user, 1),
      userToken(bridge.dataDir, user, 600),
    ]);
    await new Promise((resolve) => setTimeout(resolve, 2100)); // `expiring` is now expired
    const { fetch, urls } = recordingFetch();
    const sentTokens: (string | null)[] = [];
    let renewals = 0;
    const client = track(
      testClient(bridge, {
        apiKey: bridge.anonKey,
        accessToken: expiring,
        fetch: (input, init) => {
          sentTokens.push(new Headers(init?.headers).get("authorization"));
          return fetch(input, init);
        },
        getAccessToken: () => {
          renewals += 1;
          return fresh;
        },
      }),
    );
    const snapshot = await client.snapshot("position-updates");
    expect(renewals).toBe(1);
    expect(urls).toHaveLength(2);
    expect(sentTokens).toEqual([`Bearer ${expiring}`, `Bearer ${fresh}`]);
    expect(snapshot.records.map((p) => p.id)).toEqual([position.id]);
  });

  test("an expired token with no getAccessToken rejects with `token_expired` and tells the listeners", async () => {
    const user = uniqueUser("snap-expired");
    const expiring = await userToken(bridge.dataDir, user, 1);
    await new Promise((resolve) => setTimeout(resolve, 2100));
    const client = track(testClient(bridge, { apiKey: bridge.anonKey, accessToken: expiring }));
    let told = 0;
    client.on("tokenExpired", () => (told += 1));
    const error = await refusal(client.snapshot("position-updates"));
    expect(error.code).toBe("token_expired");
    expect(error.status).toBe(401);
    expect(told).toBe(1);
  });
});

describe("errors", () => {
  test("an unknown channel rejects with `unknown_channel` (404)", async () => {
    const client = track(testClient(bridge));
    const error = await refusal(client.snapshot("no-such-channel"));
    expect(error.code).toBe("unknown_channel");
    expect(error.status).toBe(404);
    expect(error.channel).toBe("no-such-channel");
    expect(error.message).toMatch(/no-such-channel/);
  });

  test("an invalid filter rejects with `invalid_filter`, a bad limit with `bad_message` (400)", async () => {
    const client = track(testClient(bridge));
    const filter = await refusal(client.snapshot("position-updates", { filter: "nonsense" }));
    expect(filter.code).toBe("invalid_filter");
    expect(filter.status).toBe(400);
    const limit = await refusal(client.snapshot("position-updates", { limit: 0 }));
    expect(limit.code).toBe("bad_message");
    expect(limit.status).toBe(400);
  });

  test("an unreachable bridge rejects with `network_error`", async () => {
    const client = track(testClient({ ...bridge, url: "http://127.0.0.1:9" }));
    const error = await refusal(client.snapshot("position-updates"));
    expect(error.code).toBe("network_error");
    expect(error.status).toBeUndefined();
  });
});

describe("snapshot, then subscribe since its seq", () => {
  test("rows written before, during and after the snapshot end exactly as in the database", async () => {
    const user = uniqueUser("snap-gap");
    const before: number[] = [];
    for (let i = 0; i < 6; i += 1) {
      before.push((await simulate(bridge, { user_id: user, symbol: `B${i}`, entry_price: 100 + i })).position.id);
    }
    const client = track(testClient(bridge));

    // Writers run while the snapshot reads its pages (two rows a page).
    const during = (async () => {
      const ids: number[] = [];
      for (let i = 0; i < 6; i += 1) {
        ids.push((await simulate(bridge, { user_id: user, symbol: `D${i}` })).position.id);
        // Half the earlier rows change; the rest reach the state only through the snapshot.
        if (i < 3) await sql(bridge, `UPDATE positions SET current_price = ${200 + i} WHERE id = ${before[i]}`);
      }
      return ids;
    })();
    const snapshot = await client.snapshot("position-updates", { filters: { user_id: user }, limit: 2 });
    const duringIds = await during;

    // After the snapshot, before the subscription: inserts, an update, a delete.
    const gap = [
      (await simulate(bridge, { user_id: user, symbol: "G0" })).position.id,
      (await simulate(bridge, { user_id: user, symbol: "G1" })).position.id,
    ];
    await sql(bridge, `UPDATE positions SET current_price = 999 WHERE id = ${before[0]}`);
    await sql(bridge, `DELETE FROM positions WHERE id = ${before[1]}`);
    expect(snapshot.records.map((p) => p.id)).not.toContain(gap[0]);

    let state: RecordsState<PositionUpdate> = initSnapshot(snapshot.records, snapshot.seq);
    const seqs: number[] = [];
    let onReady = () => {};
    const ready = new Promise<void>((resolve) => (onReady = resolve));
    client.subscribe(
      "position-updates",
      { filters: { user_id: user }, since: snapshot.seq, onReady },
      (event: ChangeEvent<PositionUpdate>) => {
        seqs.push(event.seq);
        state = applyEvent(state, event);
      },
    );
    await ready;

    // And after the subscription.
    const after = (await simulate(bridge, { user_id: user, symbol: "A0" })).position.id;
    await sql(bridge, `UPDATE positions SET status = 'closed', current_price = 7 WHERE id = ${gap[1]}`);
    await sql(bridge, `DELETE FROM positions WHERE id = ${duringIds[0]}`);

    const expected = await positionsInDatabase(user);
    expect(expected.map((p) => p.id)).toEqual(
      [...before.filter((id) => id !== before[1]), ...duringIds.slice(1), ...gap, after].sort((a, b) => a - b),
    );
    await until(
      () => JSON.stringify(summary(recordsOf(state))) === JSON.stringify(expected),
      "the state to match the database",
    );
    expect(summary(recordsOf(state))).toEqual(expected);
    expect(seqs.every((seq) => seq > snapshot.seq)).toBe(true);
    expect(new Set(seqs).size).toBe(seqs.length); // once each
  });
});

/** Node's `ws`, recording every frame the client sends into `sent`. */
function recordingWebSocket(sent: Record<string, unknown>[]): WebSocketConstructor {
  return function (url: string) {
    const socket = new WebSocket(url);
    const send = socket.send.bind(socket);
    socket.send = (data: string) => {
      sent.push(JSON.parse(data) as Record<string, unknown>);
      send(data);
    };
    return socket;
  } as unknown as WebSocketConstructor;
}

/**
 * Two writers on `user`'s positions for `seconds`: every UPDATE adds one to a
 * row's `quantity` (sometimes to two rows in one transaction), and new rows
 * start at 1. Resolves to the number of statements run.
 */
async function countUp(user: string, seconds: number): Promise<number> {
  const out = await python(
    [
      "import asyncio, asyncpg, random, time",
      `URL, USER = ${JSON.stringify(bridge.databaseUrl)}, ${JSON.stringify(user)}`,
      "BUMP = 'UPDATE positions SET quantity = quantity + 1 WHERE id = $1'",
      "async def writer(seed, ids, deadline):",
      "    rng, count = random.Random(seed), 0",
      "    conn = await asyncpg.connect(URL)",
      "    while time.monotonic() < deadline:",
      "        choice = rng.random()",
      "        if choice < 0.1:",
      "            await conn.execute(\"INSERT INTO positions (user_id, symbol, quantity, entry_price)\"",
      "                               \" VALUES ($1, 'NEW', 1, 100)\", USER)",
      "        elif choice < 0.3:",
      "            async with conn.transaction():",
      "                for row in sorted(rng.sample(ids, 2)):  # sorted: no deadlock",
      "                    await conn.execute(BUMP, row)",
      "        else:",
      "            await conn.execute(BUMP, rng.choice(ids))",
      "        count += 1",
      "    await conn.close()",
      "    return count",
      "async def main():",
      "    conn = await asyncpg.connect(URL)",
      "    ids = [r['id'] for r in await conn.fetch('SELECT id FROM positions WHERE user_id = $1', USER)]",
      "    await conn.close()",
      `    deadline = time.monotonic() + ${seconds}`,
      "    print(sum(await asyncio.gather(writer(1, ids, deadline), writer(2, ids, deadline))))",
      "asyncio.run(main())",
    ].join("\n"),
    bridge.dataDir,
  );
  return Number(out.trim());
}

/** `user`'s positions as {id: quantity}, as Postgres has them (ids in order). */
async function quantities(user: string): Promise<Record<string, number>> {
  const out = await python(
    [
      "import asyncio, asyncpg, json",
      "async def main():",
      `    conn = await asyncpg.connect(${JSON.stringify(bridge.databaseUrl)})`,
      "    rows = await conn.fetch('SELECT id, quantity::float8 AS q FROM positions WHERE user_id = $1',",
      `                            ${JSON.stringify(user)})`,
      "    await conn.close()",
      "    print(json.dumps({r['id']: r['q'] for r in rows}))",
      "asyncio.run(main())",
    ].join("\n"),
    bridge.dataDir,
  );
  return JSON.parse(out) as Record<string, number>;
}

describe("the snapshot token", () => {
  test("each change arrives exactly once after the snapshot, across reconnects, under writers", async () => {
    const user = uniqueUser("snap-token");
    await sql(
      bridge,
      "INSERT INTO positions (user_id, symbol, quantity, entry_price)" +
        ` SELECT '${user}', 'T' || i, 1, 100 FROM generate_series(1, 20) AS i`,
    );
    const proxy = new TcpProxy(bridge.port);
    await proxy.listen();
    onCleanup(() => proxy.close());
    const sent: Record<string, unknown>[] = [];
    const client = track(
      testClient(bridge, {
        wsUrl: `ws://127.0.0.1:${proxy.port}/ws/db_subscriptions`,
        WebSocket: recordingWebSocket(sent),
        fallback: { enabled: false },
      }),
    );
    const writing = countUp(user, 2.5);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const snapshot = await client.snapshot("position-updates", { filters: { user_id: user }, limit: 10_000 });
    expect(typeof snapshot.snapshotToken).toBe("string");
    const token = snapshot.snapshotToken as string;

    // Each row's events must go on from its snapshot quantity: no gap (a change
    // in neither), no repeat (a change in both).
    const quantity = new Map(snapshot.records.map((p) => [p.id, p.quantity]));
    const wrong: unknown[] = [];
    const seqs: number[] = [];
    client.subscribe(
      "position-updates",
      { filters: { user_id: user }, since: snapshot.seq, snapshotToken: token },
      (event) => {
        seqs.push(event.seq);
        const row = event.data;
        const before = row === null ? undefined : quantity.get(row.id);
        if (row === null || event.operation === "DELETE") wrong.push(["unexpected", event]);
        else if (event.operation === "INSERT" && (before !== undefined || row.quantity !== 1)) {
          wrong.push(["inserted, yet in the snapshot or not at 1", before, event]);
        } else if (event.operation === "UPDATE" && row.quantity !== (before ?? NaN) + 1) {
          wrong.push(["not the next quantity", before, event]);
        }
        if (row !== null) quantity.set(row.id, row.quantity);
      },
    );
    await untilStatus(client, "realtime");

    // Twice, the network drops while the writers go on: each resume resubscribes.
    for (let cut = 0; cut < 2; cut += 1) {
      await new Promise((resolve) => setTimeout(resolve, 400));
      proxy.stopListening();
      proxy.cutAll();
      await untilStatus(client, "connecting");
      await new Promise((resolve) => setTimeout(resolve, 200));
      await proxy.listen();
      await untilStatus(client, "realtime");
    }
    const statements = await writing;
    const expected = await quantities(user);
    expect(Object.keys(expected).length).toBeGreaterThan(20);
    // Integer keys: both objects list their ids in ascending order.
    const current = () => JSON.stringify(Object.fromEntries(quantity));
    const want = JSON.stringify(expected);
    await until(() => current() === want, "the rows plus the events to be the table", 15_000);
    await new Promise((resolve) => setTimeout(resolve, 300)); // nothing more comes

    expect(statements).toBeGreaterThan(50);
    expect(wrong).toEqual([]);
    expect(current()).toBe(want);
    expect(seqs).toEqual([...new Set(seqs)].sort((a, b) => a - b));
    expect(seqs.every((seq) => seq > snapshot.seq)).toBe(true);
    const subscribes = sent.filter((frame) => frame.type === "subscribe");
    expect(subscribes.length).toBeGreaterThanOrEqual(3);
    expect(subscribes.map((frame) => frame.snapshot_token)).toEqual(subscribes.map(() => token));
    expect(subscribes[0]?.since).toBe(snapshot.seq);
  });
});
