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

import type { RealtimeClient, RealtimeError, ResyncInfo, Status } from "./client.js";
import { compileFilter, filterToString } from "./filters.js";
import type { PortfolioUpdate, PositionUpdate, TradeUpdate } from "./generated/channels.js";
import type { ChangeEvent, FilterMap, PayloadOf } from "./protocol.js";
import {
  applyEvent,
  initRecords,
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
  /** Resume after this seq (e.g. the seq your snapshot was taken at). */
  since?: number | undefined;
  /**
   * The records to start from (e.g. loaded over REST). When records that
   * differ arrive (a reload), the state is reset to them; later events still
   * apply on top.
   */
  initial?: readonly T[] | undefined;
  /** Subscribe only while true (default true). */
  enabled?: boolean | undefined;
  onEvent?: ((event: ChangeEvent<T>) => void) | undefined;
  onResync?: ((info: ResyncInfo) => void) | undefined;
  onError?: ((error: RealtimeError) => void) | undefined;
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
  /** Set when the bridge refused the subscription (e.g. `unauthorized`). */
  error: RealtimeError | null;
}

interface HookState<T> {
  records: RecordsState<T>;
  error: RealtimeError | null;
}

type Action<T> =
  | {
      type: "event";
      event: ChangeEvent<T>;
      options: RecordsOptions<T>;
      belongs: (record: T) => boolean | undefined;
    }
  | { type: "reset"; records: readonly T[]; options: RecordsOptions<T>; keepSeq: boolean }
  | { type: "error"; error: RealtimeError };

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
        error: null,
        records: initRecords(
          action.records,
          action.options,
          action.keepSeq ? state.records.lastSeq : 0,
        ),
      };
    case "error":
      return { ...state, error: action.error };
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
  const recordOptions = (): RecordsOptions<T> => {
    const { getKey, order, limit } = latestOptions.current;
    return {
      ...(getKey !== undefined && { getKey }),
      ...(order !== undefined && { order }),
      ...(limit !== undefined && { limit }),
    };
  };

  const [state, dispatch] = useReducer(
    reducer<T>,
    undefined,
    (): HookState<T> => ({ records: initRecords(initial, recordOptions()), error: null }),
  );

  const seenInitial = useRef<readonly T[]>(initial);
  useEffect(() => {
    if (sameItems(seenInitial.current, initial)) return;
    seenInitial.current = initial;
    dispatch({ type: "reset", records: initial, options: recordOptions(), keepSeq: true });
  }, [initial]);

  const filterKey = JSON.stringify(filters ?? filter ?? null);
  const subscribedTo = useRef<string | null>(null);
  useEffect(() => {
    if (!enabled) return undefined;
    const key = `${channel}\u0000${filterKey}\u0000${since ?? ""}`;
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
    return client.subscribe(
      channel,
      {
        ...(filter !== undefined && { filter }),
        ...(filters !== undefined && { filters }),
        ...(since !== undefined && { since }),
        onResync: (info) => latestOptions.current.onResync?.(info),
        onError: (error) => {
          dispatch({ type: "error", error });
          latestOptions.current.onError?.(error);
        },
      },
      (event) => {
        const typed = event as unknown as ChangeEvent<T>;
        dispatch({ type: "event", event: typed, options: recordOptions(), belongs });
        latestOptions.current.onEvent?.(typed);
      },
    );
    // filterKey stands for filter / filters by value, so inline objects do not resubscribe.
  }, [client, channel, filterKey, since, enabled]);

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
  };
}

export type HookOptions<T> = Omit<UseChannelOptions<T>, "initial"> & {
  /** Only this user's rows (adds `user_id` to the filter). */
  userId?: string | undefined;
};

function scoped<T>({ userId, ...options }: HookOptions<T>): UseChannelOptions<T> {
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

function view<T, E extends object>(state: ChannelState<T>, extra: E): RealtimeView & E {
  return {
    ...extra,
    isConnected: state.isConnected,
    lastUpdate: state.lastUpdate,
    mode: state.mode,
    error: state.error,
  };
}
