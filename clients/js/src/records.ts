/**
 * State keyed by id, driven by events: the reducer behind the React hooks,
 * usable without React. INSERT, UPDATE and BROADCAST upsert the record,
 * DELETE removes it, and events apply in seq order (an event whose seq is
 * not above the last applied one is a duplicate or stale, and is ignored).
 */

import type { ChangeEvent } from "./protocol.js";

export type RecordKey = string;

export interface RecordsState<T> {
  /** Keys in display order. */
  readonly ids: readonly RecordKey[];
  readonly byId: Readonly<Record<RecordKey, T>>;
  /** The seq of the last applied event (0 before any). */
  readonly lastSeq: number;
  /** When the last event was applied. */
  readonly lastUpdate: Date | null;
  /** The key of the record most recently inserted or updated. */
  readonly latestId: RecordKey | null;
}

export interface RecordsOptions<T> {
  /** The key of a record (default: its `id`). Events use their `record_id` first. */
  getKey?: ((record: T) => unknown) | undefined;
  /** Where a new record goes: at the end (default) or the start (newest first). */
  order?: "append" | "prepend" | undefined;
  /** Keep at most this many records, dropping the oldest additions. */
  limit?: number | undefined;
  /**
   * Whether an event removes its record although it is no DELETE (e.g. a
   * published `bot_deleted`, which arrives as a BROADCAST carrying the bot).
   */
  removes?: ((event: ChangeEvent<T>) => boolean) | undefined;
}

export interface ApplyOptions<T> extends RecordsOptions<T> {
  /**
   * Whether a record still belongs (e.g. still matches the subscription's
   * filter). `false` removes it; `true` or `undefined` keeps it.
   */
  belongs?: ((record: T) => boolean | undefined) | undefined;
  /** The time to record as `lastUpdate` (default: now). */
  now?: Date | undefined;
}

function defaultKey(record: unknown): unknown {
  return typeof record === "object" && record !== null
    ? (record as { id?: unknown }).id
    : undefined;
}

function keyOf(value: unknown): RecordKey | null {
  if (value === null || value === undefined) return null;
  return String(value);
}

/** A state holding `records` (keyed, in the given order), as after a snapshot load. */
export function initRecords<T>(
  records: readonly T[],
  options: RecordsOptions<T> = {},
  lastSeq = 0,
): RecordsState<T> {
  const getKey = options.getKey ?? defaultKey;
  const ids: RecordKey[] = [];
  const byId: Record<RecordKey, T> = {};
  for (const record of records) {
    const key = keyOf(getKey(record));
    if (key === null) continue;
    if (!(key in byId)) ids.push(key);
    byId[key] = record;
  }
  return { ids, byId, lastSeq, lastUpdate: null, latestId: null };
}

/**
 * A state holding a snapshot's records (`client.snapshot`, which lists them in
 * id order) at its `seq`: in display order (newest first with `order:
 * "prepend"`), at most `limit` of them (the newest), and events at or below
 * `seq` ignored from then on.
 */
export function initSnapshot<T>(
  records: readonly T[],
  seq: number,
  options: RecordsOptions<T> = {},
): RecordsState<T> {
  const prepend = options.order === "prepend";
  let ordered: readonly T[] = prepend ? [...records].reverse() : records;
  const { limit } = options;
  if (limit !== undefined && limit >= 0 && ordered.length > limit) {
    ordered = prepend ? ordered.slice(0, limit) : ordered.slice(ordered.length - limit);
  }
  return initRecords(ordered, options, seq);
}

/** The state after `event` (the same object when the event changes nothing). */
export function applyEvent<T>(
  state: RecordsState<T>,
  event: ChangeEvent<T>,
  options: ApplyOptions<T> = {},
): RecordsState<T> {
  if (event.seq <= state.lastSeq) return state;
  const getKey = options.getKey ?? defaultKey;
  const row = event.data ?? event.old;
  const key = keyOf(event.record_id) ?? (row === null ? null : keyOf(getKey(row)));
  const stamped = { lastSeq: event.seq, lastUpdate: options.now ?? new Date() };
  if (key === null) return { ...state, ...stamped };
  const leaves =
    event.operation === "DELETE" ||
    event.data === null ||
    options.removes?.(event) === true ||
    options.belongs?.(event.data) === false;
  if (leaves) {
    if (!(key in state.byId)) return { ...state, ...stamped };
    const byId = { ...state.byId };
    delete byId[key];
    return {
      ...stamped,
      ids: state.ids.filter((id) => id !== key),
      byId,
      latestId: state.latestId === key ? null : state.latestId,
    };
  }
  const byId = { ...state.byId, [key]: event.data as T };
  let ids: readonly RecordKey[] = state.ids;
  if (!(key in state.byId)) {
    ids = options.order === "prepend" ? [key, ...ids] : [...ids, key];
    const limit = options.limit;
    if (limit !== undefined && limit >= 0 && ids.length > limit) {
      const dropped =
        options.order === "prepend" ? ids.slice(limit) : ids.slice(0, ids.length - limit);
      ids = options.order === "prepend" ? ids.slice(0, limit) : ids.slice(ids.length - limit);
      for (const id of dropped) delete byId[id];
    }
  }
  return { ...stamped, ids, byId, latestId: key };
}

/** The records in display order. */
export function recordsOf<T>(state: RecordsState<T>): T[] {
  const out: T[] = [];
  for (const id of state.ids) {
    const record = state.byId[id];
    if (record !== undefined) out.push(record);
  }
  return out;
}
