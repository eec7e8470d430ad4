/**
 * React hooks: live state keyed by id, from a shared realtime-bridge client.
 *
 *     const client = createClient({ url, apiKey });
 *     <RealtimeBridgeProvider client={client}><App /></RealtimeBridgeProvider>
 *
 *     const { positions, isConnected, lastUpdate, mode } = useRealtimePositions(initial);
 *
 * Each hook subscribes on mount and unsubscribes on unmount; reconnects,
 * resume and the polling fallback are the client's business. Events apply in
 * seq order: INSERT / UPDATE / BROADCAST upsert by id, DELETE removes, and an
 * UPDATE that moves a row out of the hook's filter removes it too.
 *
 * With `snapshot: true` a hook loads its rows itself (`client.snapshot`),
 * subscribes from the snapshot's seq, and loads it again on `resync_required`:
 *
 *     const { positions, isLoading } = useRealtimePositions([], { userId, snapshot: true });
 */

import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useReducer,
  useRef,
  useSyncExternalStore,
  type ReactNode,
} from "react";

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import {
  RealtimeError,
  type RealtimeClient,
  type ResyncInfo,
  type Snapshot,
  type Status,
  type Unsubscribe,
} from "./client.js";
import { compileFilter, filterToString } from "./filters.js";
import type { PortfolioUpdate, PositionUpdate, TradeUpdate } from "./generated/channels.js";
import type { ChangeEvent, FilterMap, PayloadOf } from "./protocol.js";
import {
  applyEvent,
  initRecords,
  initSnapshot,
  recordsOf,
  type RecordKey,
  type RecordsOptions,
  type RecordsState,
} from "./records.js";

const ClientContext = createContext<RealtimeClient | null>(null);

export interface RealtimeBridgeProviderProps {
  client: RealtimeClient;
  children?: ReactNode;
}

/** Makes `client` the one every hook below uses (unless given `options.client`). */
export function RealtimeBridgeProvider({ client, children }: RealtimeBridgeProviderProps) {
  return createElement(ClientContext.Provider, { value: client }, children);
}

/** The client from `explicit`, else from the nearest `<RealtimeBridgeProvider>`. */
export function useRealtimeClient(explicit?: RealtimeClient): RealtimeClient {
  const fromContext = useContext(ClientContext);
  const client = explicit ?? fromContext;
  if (client === null) {
    throw new Error(
      "no realtime-bridge client: wrap your app in <RealtimeBridgeProvider client={...}> " +
        "or pass options.client",
    );
  }
  return client;
}

const serverStatus = (): Status => "connecting";

/** The client's status: `connecting | realtime | polling | offline`. */
export function useRealtimeStatus(explicit?: RealtimeClient): Status {
  const client = useRealtimeClient(explicit);
  const subscribe = useCallback((notify: () => void) => client.onStatusChange(notify), [client]);
  const current = useCallback(() => client.status, [client]);
  return useSyncExternalStore(subscribe, current, serverStatus);
}

export interface UseChannelOptions<T> extends RecordsOptions<T> {
  /** The client to use instead of the provider's. */
  client?: RealtimeClient | undefined;
  /** A Supabase filter string or an equality map. */
  filter?: string | FilterMap | undefined;
  /** An equality map, e.g. `{ user_id: "u1" }`. */
  filters?: FilterMap | undefined;
  /** Resume after this seq (e.g. the seq your snapshot was taken at). Not used with `snapshot`. */
  since?: number | undefined;
  /**
   * The records to start from (e.g. loaded over REST). When records that
   * differ arrive (a reload), the state is reset to them; later events still
   * apply on top. With `snapshot`, they only show until the snapshot arrives.
   */
  initial?: readonly T[] | undefined;
  /**
   * Load the records with `client.snapshot` (every page, same filter), then
   * subscribe with `since` = its seq, and load it again whenever the bridge
   * says `resync_required`. `true`, or `{ limit }` for the rows per request.
   * `isLoading` is true meanwhile; a failed load sets `error` (and is retried
   * with backoff when the failure is temporary: network, 5xx, 429).
   * Default false: `initial` and `since` as given.
   */
  snapshot?: boolean | SnapshotHookOptions | undefined;
  /** Called with every snapshot the hook loads (with `snapshot`). */
  onSnapshot?: ((snapshot: Snapshot<T>) => void) | undefined;
  /** Subscribe only while true (default true). */
  enabled?: boolean | undefined;
  onEvent?: ((event: ChangeEvent<T>) => void) | undefined;
  onResync?: ((info: ResyncInfo) => void) | undefined;
  onError?: ((error: RealtimeError) => void) | undefined;
}

export interface SnapshotHookOptions {
  /** Rows per snapshot request (1 to 10,000; the bridge's default is 1000). */
  limit?: number | undefined;
  /** Backoff between failed loads (default 1 s doubling to 30 s). */
  retry?: BackoffOptions | undefined;
}

export interface ChannelState<T> {
  /** The records, in order (new ones appended, or prepended with `order: "prepend"`). */
  records: T[];
  byId: Readonly<Record<RecordKey, T>>;
  /** The record most recently inserted or updated. */
  latest: T | null;
  /** True while events flow, over the socket or by polling. */
  isConnected: boolean;
  lastUpdate: Date | null;
  lastSeq: number;
  mode: Status;
  /** Set when the bridge refused the subscription (e.g. `unauthorized`) or a snapshot. */
  error: RealtimeError | null;
  /** True while the `snapshot` option loads the records (at first, and after a resync). */
  isLoading: boolean;
}

interface HookState<T> {
  records: RecordsState<T>;
  error: RealtimeError | null;
  loading: boolean;
}

type Action<T> =
  | {
      type: "event";
      event: ChangeEvent<T>;
      options: RecordsOptions<T>;
      belongs: (record: T) => boolean | undefined;
    }
  | { type: "reset"; records: readonly T[]; options: RecordsOptions<T>; keepSeq: boolean }
  | { type: "loading" }
  | { type: "snapshot"; records: readonly T[]; seq: number; options: RecordsOptions<T> }
  | { type: "error"; error: RealtimeError; settled?: boolean };

function reducer<T>(state: HookState<T>, action: Action<T>): HookState<T> {
  switch (action.type) {
    case "event": {
      const records = applyEvent(state.records, action.event, {
        ...action.options,
        belongs: action.belongs,
      });
      return records === state.records ? state : { ...state, records };
    }
    case "reset":
      return {
        ...state,
        error: null,
        records: initRecords(
          action.records,
          action.options,
          action.keepSeq ? state.records.lastSeq : 0,
        ),
      };
    case "loading":
      return state.loading ? state : { ...state, loading: true };
    case "snapshot":
      return {
        error: null,
        loading: false,
        records: initSnapshot(action.records, action.seq, action.options),
      };
    case "error":
      return { ...state, error: action.error, loading: action.settled ? false : state.loading };
  }
}

/**
 * Whether a new `initial` array holds the same records. Identity first; then by
 * value, so an inline literal (a new array every render) does not reset the
 * state, and re-render, forever.
 */
function sameItems<T>(a: readonly T[] | undefined, b: readonly T[] | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined || a.length !== b.length) return false;
  if (a.every((item, index) => item === b[index])) return true;
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false; // not serialisable: treat as new
  }
}

const EMPTY: readonly never[] = [];

/** Worth loading again later: the network, the bridge or its database was away. */
function temporary(error: RealtimeError): boolean {
  const { status } = error;
  if (status === undefined) return error.code === "network_error";
  return status >= 500 || status === 429 || status === 408;
}

/** Live records of any channel, keyed by id. */
export function useChannel<C extends string, T = PayloadOf<C>>(
  channel: C,
  options: UseChannelOptions<T> = {},
): ChannelState<T> {
  const client = useRealtimeClient(options.client);
  const mode = useRealtimeStatus(client);
  const latestOptions = useRef(options);
  latestOptions.current = options;
  const { filter, filters, since, enabled = true } = options;
  const initial = options.initial ?? EMPTY;
  const snapshot = options.snapshot ?? false;
  const useSnapshot = snapshot !== false;
  const snapshotLimit = typeof snapshot === "object" ? snapshot.limit : undefined;
  const recordOptions = (): RecordsOptions<T> => {
    const { getKey, order, limit, removes } = latestOptions.current;
    return {
      ...(getKey !== undefined && { getKey }),
      ...(order !== undefined && { order }),
      ...(limit !== undefined && { limit }),
      ...(removes !== undefined && { removes }),
    };
  };

  const [state, dispatch] = useReducer(
    reducer<T>,
    undefined,
    (): HookState<T> => ({
      records: initRecords(initial, recordOptions()),
      error: null,
      loading: useSnapshot && enabled,
    }),
  );

  const seenInitial = useRef<readonly T[]>(initial);
  useEffect(() => {
    if (sameItems(seenInitial.current, initial)) return;
    seenInitial.current = initial;
    // With `snapshot`, the snapshot is the truth: `initial` only fills the wait.
    if (latestOptions.current.snapshot) return;
    dispatch({ type: "reset", records: initial, options: recordOptions(), keepSeq: true });
  }, [initial]);

  const filterKey = JSON.stringify(filters ?? filter ?? null);
  // With `snapshot`, `since` plays no part (the snapshot's seq does).
  const startAt = useSnapshot ? undefined : since;
  const subscribedTo = useRef<string | null>(null);
  useEffect(() => {
    if (!enabled) return undefined;
    const from = useSnapshot ? `snapshot:${snapshotLimit ?? ""}` : (since ?? "");
    const key = `${channel}\u0000${filterKey}\u0000${from}`;
    if (subscribedTo.current !== null && subscribedTo.current !== key) {
      // Another channel or filter: the old rows do not belong any more.
      const start = latestOptions.current.initial ?? EMPTY;
      dispatch({ type: "reset", records: start, options: recordOptions(), keepSeq: false });
    }
    subscribedTo.current = key;
    let matches: (row: Record<string, unknown> | null | undefined) => boolean | undefined;
    try {
      matches = compileFilter(filters ?? filter);
    } catch {
      matches = () => undefined; // the bridge will say what is wrong with it
    }
    const belongs = (record: T) => matches(record as Record<string, unknown>);
    const onError = (error: RealtimeError) => {
      dispatch({ type: "error", error });
      latestOptions.current.onError?.(error);
    };
    const onEvent = (event: ChangeEvent<PayloadOf<C>>) => {
      const typed = event as unknown as ChangeEvent<T>;
      dispatch({ type: "event", event: typed, options: recordOptions(), belongs });
      latestOptions.current.onEvent?.(typed);
    };
    const filterOptions = {
      ...(filter !== undefined && { filter }),
      ...(filters !== undefined && { filters }),
    };
    if (!useSnapshot) {
      return client.subscribe(
        channel,
        {
          ...filterOptions,
          ...(since !== undefined && { since }),
          onResync: (info) => latestOptions.current.onResync?.(info),
          onError,
        },
        onEvent,
      );
    }

    // Snapshot, then subscribe from its seq; on resync_required, again. The
    // subscription in place keeps applying events until the new snapshot
    // replaces it (and the records), and the next one starts from its seq.
    let stopped = false;
    let unsubscribe: Unsubscribe | null = null;
    let loads: AbortController | null = null;
    let retryTimer: ReturnType<typeof setTimeout> | null = null;
    const load = (attempt: number): void => {
      loads?.abort();
      if (retryTimer !== null) clearTimeout(retryTimer);
      retryTimer = null;
      const controller = new AbortController();
      loads = controller;
      dispatch({ type: "loading" });
      client
        .snapshot(channel, {
          ...filterOptions,
          ...(snapshotLimit !== undefined && { limit: snapshotLimit }),
          signal: controller.signal,
        })
        .then(
          (loaded) => {
            if (stopped || loads !== controller) return;
            loads = null;
            unsubscribe?.();
            const records = loaded.records as unknown as T[];
            dispatch({ type: "snapshot", records, seq: loaded.seq, options: recordOptions() });
            latestOptions.current.onSnapshot?.({
              seq: loaded.seq,
              snapshotToken: loaded.snapshotToken,
              records,
            });
            // No `snapshotToken`: the reducer applies events as state (upsert /
            // remove by id), so a change already in the records is harmless.
            unsubscribe = client.subscribe(
              channel,
              {
                ...filterOptions,
                since: loaded.seq,
                onResync: (info) => {
                  latestOptions.current.onResync?.(info);
                  if (!stopped) load(0);
                },
                onError,
              },
              onEvent,
            );
          },
          (reason: unknown) => {
            if (stopped || loads !== controller) return;
            loads = null;
            const error =
              reason instanceof RealtimeError
                ? reason
                : new RealtimeError("snapshot_failed", String(reason), channel);
            const again = temporary(error);
            dispatch({ type: "error", error, settled: !again });
            latestOptions.current.onError?.(error);
            if (!again) return;
            const current = latestOptions.current.snapshot;
            const retry = typeof current === "object" ? current.retry : undefined;
            retryTimer = setTimeout(
              () => load(attempt + 1),
              backoffDelay(attempt, retry ?? { baseMs: 1000 }),
            );
          },
        );
    };
    load(0);
    return () => {
      stopped = true;
      loads?.abort();
      if (retryTimer !== null) clearTimeout(retryTimer);
      unsubscribe?.();
    };
    // filterKey stands for filter / filters by value, so inline objects do not resubscribe.
  }, [client, channel, filterKey, startAt, enabled, useSnapshot, snapshotLimit]);

  const records = useMemo(() => recordsOf(state.records), [state.records]);
  const { latestId } = state.records;
  return {
    records,
    byId: state.records.byId,
    latest: latestId === null ? null : (state.records.byId[latestId] ?? null),
    isConnected: mode === "realtime" || mode === "polling",
    lastUpdate: state.records.lastUpdate,
    lastSeq: state.records.lastSeq,
    mode,
    error: state.error,
    isLoading: state.loading && useSnapshot && enabled,
  };
}

export type HookOptions<T> = Omit<UseChannelOptions<T>, "initial"> & {
  /** Only this user's rows (adds `user_id` to the filter). */
  userId?: string | undefined;
};

/** `options` with `userId` turned into a `user_id` filter (for hooks built on `useChannel`). */
export function scoped<T>({ userId, ...options }: HookOptions<T>): UseChannelOptions<T> {
  if (userId === undefined) return options;
  const { filter, filters, ...rest } = options;
  if (typeof filter === "string" && filter !== "") {
    return { ...rest, filter: `${filterToString({ user_id: userId })},${filter}` };
  }
  const map = filters ?? (typeof filter === "object" ? filter : undefined) ?? {};
  return { ...rest, filters: { ...map, user_id: userId } };
}

export interface RealtimeView {
  isConnected: boolean;
  lastUpdate: Date | null;
  mode: Status;
  error: RealtimeError | null;
  /** True while the `snapshot` option loads the records. */
  isLoading: boolean;
}

/** Live positions (channel `position-updates`), starting from `initialPositions`. */
export function useRealtimePositions(
  initialPositions: readonly PositionUpdate[] = EMPTY,
  options: HookOptions<PositionUpdate> = {},
): RealtimeView & { positions: PositionUpdate[] } {
  const state = useChannel<"position-updates", PositionUpdate>("position-updates", {
    ...scoped(options),
    initial: initialPositions,
  });
  return view(state, { positions: state.records });
}

/** Live trades (channel `trade-updates`), newest first. */
export function useRealtimeTrades(
  initialTrades: readonly TradeUpdate[] = EMPTY,
  options: HookOptions<TradeUpdate> = {},
): RealtimeView & { trades: TradeUpdate[] } {
  const state = useChannel<"trade-updates", TradeUpdate>("trade-updates", {
    order: "prepend",
    ...scoped(options),
    initial: initialTrades,
  });
  return view(state, { trades: state.records });
}

/** A user's latest portfolio snapshot (channel `portfolio-updates`) and recent history. */
export function usePortfolio(
  userId: string | null | undefined,
  options: Omit<HookOptions<PortfolioUpdate>, "userId"> & {
    initial?: readonly PortfolioUpdate[] | undefined;
  } = {},
): RealtimeView & { portfolio: PortfolioUpdate | null; history: PortfolioUpdate[] } {
  const { initial, enabled = true, ...rest } = options;
  const state = useChannel<"portfolio-updates", PortfolioUpdate>("portfolio-updates", {
    order: "prepend",
    limit: 100,
    ...scoped({ ...rest, ...(userId ? { userId } : {}) }),
    ...(initial !== undefined && { initial }),
    enabled: enabled && Boolean(userId),
  });
  return view(state, {
    portfolio: state.latest ?? state.records[0] ?? null,
    history: state.records,
  });
}

/** A hook's result: `extra` with the channel's connection state. */
export function view<T, E extends object>(state: ChannelState<T>, extra: E): RealtimeView & E {
  return {
    ...extra,
    isConnected: state.isConnected,
    lastUpdate: state.lastUpdate,
    mode: state.mode,
    error: state.error,
    isLoading: state.isLoading,
  };
}

// The bot hooks (bots, orders, activity log, P&L) live in their own module.
export * from "./bot-hooks.js";

export { useLiveChallenge, type LiveChallenge, type LiveChallengeOptions } from "./challenge.js";
