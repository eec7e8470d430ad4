import { describe, expect, test } from "vitest";

import {
  applyEvent,
  initRecords,
  initSnapshot,
  recordsOf,
  type ChangeEvent,
  type RecordsState,
} from "../src/index.js";

interface Row {
  id: number;
  name: string;
  status?: string;
}

let seq = 0;
function event(
  operation: ChangeEvent["operation"],
  data: Row | null,
  old: Row | null = null,
  at?: number,
): ChangeEvent<Row> {
  seq = at ?? seq + 1;
  const row = data ?? old;
  return {
    type: "db_change",
    channel: "things",
    event: "thing",
    table: "public.things",
    operation,
    user_id: null,
    record_id: row?.id ?? null,
    data,
    old,
    seq,
    timestamp: "2026-01-01T00:00:00Z",
  };
}

function apply(state: RecordsState<Row>, ...events: ChangeEvent<Row>[]): RecordsState<Row> {
  return events.reduce((s, e) => applyEvent(s, e), state);
}

describe("state keyed by id", () => {
  test("INSERT adds, UPDATE replaces in place, BROADCAST upserts, DELETE removes", () => {
    seq = 0;
    let state = initRecords<Row>([{ id: 1, name: "one" }]);
    state = apply(
      state,
      event("INSERT", { id: 2, name: "two" }),
      event("UPDATE", { id: 1, name: "ONE" }, { id: 1, name: "one" }),
      event("BROADCAST", { id: 3, name: "three" }),
      event("BROADCAST", { id: 2, name: "TWO" }),
      event("DELETE", null, { id: 3, name: "three" }),
    );
    expect(recordsOf(state)).toEqual([
      { id: 1, name: "ONE" },
      { id: 2, name: "TWO" },
    ]);
    expect(state.lastSeq).toBe(5);
    expect(state.latestId).toBe("2");
  });

  test("events apply in seq order: a duplicate or older seq changes nothing", () => {
    seq = 0;
    const start = apply(initRecords<Row>([]), event("INSERT", { id: 1, name: "v1" }, null, 10));
    const same = applyEvent(start, event("UPDATE", { id: 1, name: "stale" }, null, 9));
    expect(same).toBe(start);
    expect(applyEvent(start, event("UPDATE", { id: 1, name: "dup" }, null, 10))).toBe(start);
    const next = applyEvent(start, event("UPDATE", { id: 1, name: "v2" }, null, 11));
    expect(recordsOf(next)).toEqual([{ id: 1, name: "v2" }]);
  });

  test("prepend puts new records first; limit drops the oldest additions", () => {
    seq = 0;
    const newestFirst = { order: "prepend" as const, limit: 2 };
    let state = initRecords<Row>([]);
    for (const id of [1, 2, 3]) state = applyEvent(state, event("INSERT", { id, name: `n${id}` }), newestFirst);
    expect(recordsOf(state).map((r) => r.id)).toEqual([3, 2]);
    expect(state.byId["1"]).toBeUndefined();

    let appended = initRecords<Row>([]);
    for (const id of [1, 2, 3]) appended = applyEvent(appended, event("INSERT", { id, name: "" }), { limit: 2 });
    expect(recordsOf(appended).map((r) => r.id)).toEqual([2, 3]);
  });

  test("an UPDATE that takes a row out of the filter removes it", () => {
    seq = 0;
    const belongs = (row: Row) => row.status === "open";
    let state = initRecords<Row>([{ id: 1, name: "a", status: "open" }]);
    state = applyEvent(state, event("UPDATE", { id: 1, name: "a", status: "closed" }), { belongs });
    expect(recordsOf(state)).toEqual([]);
    // Unknown (undefined) keeps the row: the client cannot judge every column.
    state = applyEvent(state, event("INSERT", { id: 2, name: "b" }), { belongs: () => undefined });
    expect(recordsOf(state).map((r) => r.id)).toEqual([2]);
  });

  test("a custom key, and events without any key only advance the seq", () => {
    seq = 0;
    interface Quote {
      symbol: string;
      price: number;
    }
    const bySymbol = { getKey: (q: Quote) => q.symbol };
    let state = initRecords<Quote>([{ symbol: "AAPL", price: 1 }], bySymbol);
    const quote = (price: number): ChangeEvent<Quote> => ({
      ...(event("BROADCAST", null) as unknown as ChangeEvent<Quote>),
      record_id: null,
      data: { symbol: "AAPL", price },
    });
    state = applyEvent(state, quote(2), bySymbol);
    expect(recordsOf(state)).toEqual([{ symbol: "AAPL", price: 2 }]);
    const keyless = applyEvent(state, { ...quote(3), data: { price: 3 } as Quote }, { getKey: () => null });
    expect(recordsOf(keyless)).toEqual(recordsOf(state));
    expect(keyless.lastSeq).toBeGreaterThan(state.lastSeq);
  });
});

describe("a snapshot's records", () => {
  const rows: Row[] = [1, 2, 3, 4].map((id) => ({ id, name: `n${id}` }));

  test("start the state at the snapshot's seq: events at or below it are ignored", () => {
    const state = initSnapshot(rows, 50);
    expect(recordsOf(state).map((r) => r.id)).toEqual([1, 2, 3, 4]);
    expect(state.lastSeq).toBe(50);
    expect(applyEvent(state, event("DELETE", null, { id: 1, name: "n1" }, 50))).toBe(state);
    const after = applyEvent(state, event("DELETE", null, { id: 1, name: "n1" }, 51));
    expect(recordsOf(after).map((r) => r.id)).toEqual([2, 3, 4]);
  });

  test("come newest first with prepend, and keep only the newest `limit`", () => {
    expect(recordsOf(initSnapshot(rows, 1, { order: "prepend" })).map((r) => r.id)).toEqual([4, 3, 2, 1]);
    expect(recordsOf(initSnapshot(rows, 1, { order: "prepend", limit: 2 })).map((r) => r.id)).toEqual([4, 3]);
    expect(recordsOf(initSnapshot(rows, 1, { limit: 3 })).map((r) => r.id)).toEqual([2, 3, 4]);
    expect(rows.map((r) => r.id)).toEqual([1, 2, 3, 4]); // the input is not reordered in place
  });
});
