/**
 * The realtime-bridge client: one WebSocket shared by every subscription,
 * with reconnect (exponential backoff with jitter), a heartbeat, resume from
 * each subscription's last seen seq, and a long-poll fallback when the socket
 * cannot be opened or keeps failing (and a way back when it works again).
 *
 * Delivery guarantee: per subscription, `onEvent` sees every matching event
 * after its starting point exactly once and in seq order, across reconnects,
 * bridge restarts and switches between the socket and polling. Every
 * transport resumes from the subscription's cursor (the last delivered seq),
 * and anything at or below the cursor is dropped as a duplicate. Started
 * from a snapshot with its token (`since: seq, snapshotToken`), it also skips
 * the changes after `seq` that the snapshot's rows already hold.
 *
 * Transport states:
 *
 *     connecting ──open──▶ realtime ──drop──▶ connecting (backoff) ──N failures──▶ polling
 *          ▲                   ▲                                                    │
 *          └──── online ───────┴────────────── probe opens the socket ◀─────────────┘
 *     offline: the runtime says the network is down, polling fails too, or close()
 */

import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { browserEnvironment, type ClientEnvironment } from "./environment.js";
import { pollOnce, pollUrl, type FetchLike } from "./poll.js";
import { snapshotPage, snapshotUrl } from "./snapshot.js";
import type {
  ChangeEvent,
  ClientFrame,
  ErrorFrame,
  FilterMap,
  PayloadOf,
  ServerFrame,
  SubscribeFrame,
} from "./protocol.js";

export type Status = "connecting" | "realtime" | "polling" | "offline";

/** The part of the WebSocket API the client uses (browsers', Node 22's, or the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  // `any` so that both the DOM's and the `ws` package's handler types fit.
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;
export type { FetchLike } from "./poll.js";
export type AccessTokenSource = () =>
  | string
  | null
  | undefined
  | Promise<string | null | undefined>;

export interface ClientOptions {
  /** The bridge's HTTP base URL, e.g. `https://bridge.example.com`. */
  url: string;
  /** The project key (anon key in browsers), sent as `apikey`. */
  apiKey: string;
  /** A user's JWT; sent as an `access_token` frame and as `Authorization: Bearer`. */
  accessToken?: string | undefined;
  /** Called for a fresh token when the bridge says the current one expired. */
  getAccessToken?: AccessTokenSource | undefined;
  /** Override the socket URL (default: `url` with ws(s):// + `/ws/db_subscriptions`). */
  wsUrl?: string | undefined;
  /** A WebSocket implementation (default: the global one; none → polling only). */
  WebSocket?: WebSocketConstructor | undefined;
  /** A fetch implementation (default: the global one). */
  fetch?: FetchLike | undefined;
  /** Network / visibility source (default: the browser's, none elsewhere; null: none). */
  environment?: ClientEnvironment | null | undefined;
  /** Reconnect backoff (default 3 s doubling to 30 s, half of it random). */
  reconnect?: BackoffOptions | undefined;
  heartbeat?: {
    /** How often to ping (default 25 s). */
    intervalMs?: number | undefined;
    /** How long to wait for any frame after a ping before dropping the socket (default 10 s). */
    timeoutMs?: number | undefined;
  };
  /** How long a socket may take to open (default 10 s). */
  connectTimeoutMs?: number | undefined;
  /** A connection that stays up this long resets the failure count and backoff (default 10 s). */
  stableAfterMs?: number | undefined;
  fallback?: {
    /** Fall back to long-polling at all (default true). */
    enabled?: boolean | undefined;
    /** Consecutive socket failures before polling (default 3). */
    afterFailures?: number | undefined;
    /** How often to try the socket again while polling (default 30 s). */
    probeIntervalMs?: number | undefined;
    /** Long-poll `wait`, in seconds (default 25). */
    waitSeconds?: number | undefined;
    /** Long-poll `limit` (default 500). */
    limit?: number | undefined;
    /** Backoff between failed poll requests (default 1 s doubling to 30 s). */
    retry?: BackoffOptions | undefined;
  };
}

export interface SubscribeOptions {
  /** A Supabase filter string (`user_id=eq.u1`) or an equality map. */
  filter?: string | FilterMap | undefined;
  /** An equality map (`{user_id: "u1", status: ["open", "pending"]}`). */
  filters?: FilterMap | undefined;
  /** Deliver events after this seq first (what you last processed). */
  since?: number | undefined;
  /**
   * The `snapshotToken` of the snapshot whose `seq` is `since`: the bridge then
   * skips the changes after `seq` that the snapshot's rows already hold, so each
   * change reaches you exactly once. Needs `since`. Sent again on every resume
   * of this subscription (reconnect, polling); forgotten on `resync_required`,
   * after which it no longer applies. Null (no database log) sends nothing.
   */
  snapshotToken?: string | null | undefined;
  /** The retained log no longer reaches back to the cursor: reload a snapshot. */
  onResync?: ((info: ResyncInfo) => void) | undefined;
  /** The bridge refused or ended this subscription. */
  onError?: ((error: RealtimeError) => void) | undefined;
  /**
   * The subscription is established (again): confirmed on the socket, or a
   * first poll answered. Called after every reconnect or transport switch.
   */
  onReady?: ((info: ReadyInfo) => void) | undefined;
}

export interface SnapshotOptions {
  /** A Supabase filter string (`user_id=eq.u1`) or an equality map, as for `subscribe`. */
  filter?: string | FilterMap | undefined;
  /** An equality map (`{user_id: "u1"}`). */
  filters?: FilterMap | undefined;
  /** Rows per request (1 to 10,000; the bridge's default is 1000). Every page is read. */
  limit?: number | undefined;
  /** Abort the requests (the promise then rejects with the signal's reason). */
  signal?: AbortSignal | undefined;
}

/** A channel's current rows, the seq to subscribe from (`since: seq`) and its token. */
export interface Snapshot<T> {
  /** Every change up to this seq is in `records`; subscribe with `since: seq` for the rest. */
  seq: number;
  /**
   * Subscribe with `snapshotToken` = this beside `since: seq` and no change in
   * `records` arrives again. It is the first page's: rows on later pages may
   * still meet a change made between the pages. Null when the bridge has no
   * database log (polling, hosted Supabase mode): then some changes after
   * `seq` may be in `records`.
   */
  snapshotToken: string | null;
  records: T[];
}

export interface ReadyInfo {
  transport: "socket" | "polling";
  /** The subscription's cursor: events after it will follow. */
  seq: number;
}

export interface ResyncInfo {
  channel: string;
  /** The oldest seq the bridge still has (when it says). */
  earliestSeq: number | null;
  /** Events continue after this seq: reload a snapshot now (when the bridge says). */
  nextSeq: number | null;
}

export type Unsubscribe = () => void;

/** An error the bridge reported, with its stable `code` (see the README's error codes). */
export class RealtimeError extends Error {
  override name = "RealtimeError";
  readonly code: string;
  readonly channel: string | undefined;
  readonly details: Readonly<Record<string, unknown>>;
  /** The HTTP status, for a refused HTTP request (e.g. `client.snapshot`). */
  readonly status: number | undefined;

  constructor(
    code: string,
    message: string,
    channel?: string,
    details: Record<string, unknown> = {},
    status?: number,
  ) {
    super(message);
    this.code = code;
    this.channel = channel;
    this.details = details;
    this.status = status;
  }
}

export interface ClientEvents {
  status: (status: Status) => void;
  resync: (info: ResyncInfo) => void;
  error: (error: RealtimeError) => void;
  /** The token expired and no `getAccessToken` is set: call `setAccessToken`. */
  tokenExpired: () => void;
}

/** Counters, mainly for tests and diagnostics. */
export interface ClientStats {
  socketsOpened: number;
  socketFailures: number;
  pollRequests: number;
  eventsDelivered: number;
  duplicatesDropped: number;
}

type SubState = "idle" | "subscribing" | "active" | "needs-token" | "failed";

interface Sub {
  key: string;
  channel: string;
  options: SubscribeOptions;
  onEvent: (event: ChangeEvent<never>) => void;
  /** The last seq delivered (or the starting point); undefined: live from subscribe. */
  cursor: number | undefined;
  /** Sent with every (re)subscribe until a resync voids it. */
  snapshotToken: string | null;
  state: SubState;
  failure: string | null;
  serverId: string | null;
  poll: AbortController | null;
}

type Pending =
  | { kind: "subscribe"; sub: Sub }
  | { kind: "unsubscribe" }
  | { kind: "ping" }
  | { kind: "access_token" };

const OPEN = 1;
// Errors the bridge sends on its own, never as the reply to a frame.
const UNSOLICITED = new Set(["slow_consumer", "too_large"]);
const AUTH_CODES = new Set(["unauthorized", "token_expired"]);
const RETRY_LATER_MS = 1000;
const MIN_REFRESH_INTERVAL_MS = 5000;

const noop = (): void => {};

/** Said once per client made without a WebSocket: polling works, but nobody chose it. */
export const NO_WEBSOCKET_WARNING =
  "@realtime-bridge/client: this runtime has no global WebSocket (Node before 22), so the " +
  "client will only long-poll, never use the socket. Run on Node 22+, or pass an " +
  "implementation, such as the `ws` package's: createClient({ ..., WebSocket }).";

function defaultWebSocket(): WebSocketConstructor | undefined {
  const candidate = (globalThis as { WebSocket?: unknown }).WebSocket;
  return typeof candidate === "function" ? (candidate as WebSocketConstructor) : undefined;
}

function trimSlash(url: string): string {
  return url.replace(/\/+$/, "");
}

function socketUrl(options: ClientOptions): string {
  const base =
    options.wsUrl ?? `${trimSlash(options.url).replace(/^http/i, "ws")}/ws/db_subscriptions`;
  const separator = base.includes("?") ? "&" : "?";
  // batch=1: frames queued together arrive as one JSON array (see `received`).
  return `${base}${separator}apikey=${encodeURIComponent(options.apiKey)}&batch=1`;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done);
  });
}

function textOf(data: unknown): string {
  if (typeof data === "string") return data;
  if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
    return new TextDecoder().decode(data as ArrayBuffer);
  }
  return String(data);
}

export class RealtimeClient {
  readonly stats: ClientStats = {
    socketsOpened: 0,
    socketFailures: 0,
    pollRequests: 0,
    eventsDelivered: 0,
    duplicatesDropped: 0,
  };

  private readonly options: ClientOptions;
  private readonly WebSocketImpl: WebSocketConstructor | undefined;
  private readonly fetchImpl: FetchLike;
  private readonly heartbeatMs: number;
  private readonly heartbeatTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly stableAfterMs: number;
  private readonly fallbackEnabled: boolean;
  private readonly fallbackAfter: number;
  private readonly probeMs: number;
  private readonly pollWait: number;
  private readonly pollLimit: number;

  private currentStatus: Status = "connecting";
  private token: string | undefined;
  private refreshing: Promise<boolean> | null = null;
  private lastRefresh = -Infinity;
  private readonly listeners: { [K in keyof ClientEvents]: Set<ClientEvents[K]> } = {
    status: new Set(),
    resync: new Set(),
    error: new Set(),
    tokenExpired: new Set(),
  };

  private readonly subs = new Map<string, Sub>();
  private readonly byServerId = new Map<string, Sub>();
  /** Unsubscribed before the bridge confirmed: unsubscribe when it does. */
  private readonly orphans = new Map<string, Sub>();
  private nextKey = 1;

  private socket: WebSocketLike | null = null;
  private socketOpen = false;
  private stable = false;
  private pending: Pending[] = [];
  private failures = 0;
  private attempt = 0;
  private mode: "socket" | "polling" = "socket";
  private pollHealthy: boolean | undefined = undefined;
  private online = true;
  private closed = false;
  private started = false;

  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private probeTimer: ReturnType<typeof setTimeout> | null = null;
  private connectTimer: ReturnType<typeof setTimeout> | null = null;
  private stableTimer: ReturnType<typeof setTimeout> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private heartbeatTimer: ReturnType<typeof setInterval> | null = null;
  private stopEnvironment: () => void = noop;

  constructor(options: ClientOptions) {
    if (!options.url) throw new TypeError("createClient: `url` is required");
    if (!options.apiKey) throw new TypeError("createClient: `apiKey` is required");
    this.options = options;
    this.token = options.accessToken;
    this.WebSocketImpl = options.WebSocket ?? defaultWebSocket();
    const fetchImpl = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    this.fetchImpl = fetchImpl
      ? (input, init) => fetchImpl(input, init)
      : () => Promise.reject(new TypeError("no fetch implementation"));
    this.heartbeatMs = options.heartbeat?.intervalMs ?? 25_000;
    this.heartbeatTimeoutMs = options.heartbeat?.timeoutMs ?? 10_000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.stableAfterMs = options.stableAfterMs ?? 10_000;
    this.fallbackEnabled = options.fallback?.enabled ?? true;
    this.fallbackAfter = Math.max(1, options.fallback?.afterFailures ?? 3);
    this.probeMs = options.fallback?.probeIntervalMs ?? 30_000;
    this.pollWait = options.fallback?.waitSeconds ?? 25;
    this.pollLimit = options.fallback?.limit ?? 500;
    if (this.WebSocketImpl === undefined && !this.fallbackEnabled) {
      throw new TypeError(
        "createClient: no WebSocket in this runtime; pass `WebSocket` or enable the fallback",
      );
    }
    if (this.WebSocketImpl === undefined) console.warn(NO_WEBSOCKET_WARNING);
  }

  /** `connecting | realtime | polling | offline` */
  get status(): Status {
    return this.currentStatus;
  }

  on<K extends keyof ClientEvents>(type: K, listener: ClientEvents[K]): () => void {
    const set = this.listeners[type] as Set<ClientEvents[K]>;
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  onStatusChange(listener: (status: Status) => void): () => void {
    return this.on("status", listener);
  }

  /**
   * Receive `channel`'s events; returns the function that stops. The first
   * subscription opens the shared socket.
   */
  subscribe<C extends string>(
    channel: C,
    options: SubscribeOptions,
    onEvent: (event: ChangeEvent<PayloadOf<C>>) => void,
  ): Unsubscribe {
    if (this.closed) throw new Error("this realtime-bridge client is closed");
    if (options.filter !== undefined && options.filters !== undefined) {
      throw new TypeError("subscribe: give `filter` or `filters`, not both");
    }
    const snapshotToken = options.snapshotToken ?? null;
    if (snapshotToken !== null && options.since === undefined) {
      throw new TypeError("subscribe: `snapshotToken` needs `since` (the snapshot's seq)");
    }
    const sub: Sub = {
      key: `sub-${this.nextKey++}`,
      channel,
      options,
      onEvent: onEvent as (event: ChangeEvent<never>) => void,
      cursor: options.since,
      snapshotToken,
      state: "idle",
      failure: null,
      serverId: null,
      poll: null,
    };
    this.subs.set(sub.key, sub);
    this.start();
    if (this.mode === "polling") this.startPolling(sub);
    else if (this.socketOpen) this.sendSubscribe(sub);
    return () => this.unsubscribe(sub);
  }

  /**
   * `channel`'s current rows (the same row scope and filter as a subscription),
   * every page of them, the seq they were read at and the first page's
   * `snapshotToken`: subscribe with `since: seq, snapshotToken` and each change
   * arrives exactly once, none of them already in the rows. Without a token
   * (null: the bridge has no database log), and for rows on later pages of a
   * paged snapshot, a few events after `seq` may already be in the rows: apply
   * each as state, "this row is now `data`" (DELETE: "is gone"), which makes
   * them harmless.
   *
   * Uses the current access token (renewed through `getAccessToken` when the
   * bridge says it expired). Rejects with a `RealtimeError` carrying the
   * bridge's `code`, `message` and HTTP `status` (`unknown_channel`,
   * `unauthorized`, `invalid_filter`, `unavailable`, ...), or `network_error`
   * when the bridge could not be reached.
   */
  async snapshot<C extends string>(
    channel: C,
    options: SnapshotOptions = {},
  ): Promise<Snapshot<PayloadOf<C>>> {
    if (this.closed) throw new Error("this realtime-bridge client is closed");
    if (options.filter !== undefined && options.filters !== undefined) {
      throw new TypeError("snapshot: give `filter` or `filters`, not both");
    }
    const { signal } = options;
    const records: PayloadOf<C>[] = [];
    let seq: number | undefined;
    let snapshotToken: string | null = null;
    let cursor: string | null = null;
    let authRetries = 0;
    for (;;) {
      signal?.throwIfAborted();
      let url: string;
      try {
        url = snapshotUrl({
          url: this.options.url,
          apiKey: this.options.apiKey,
          channel,
          filter: options.filters ?? options.filter,
          limit: options.limit,
          cursor,
        });
      } catch (error) {
        throw new RealtimeError("invalid_filter", String(error), channel);
      }
      const token = this.token;
      let outcome: Awaited<ReturnType<typeof snapshotPage>>;
      try {
        outcome = await snapshotPage(this.fetchImpl, url, this.authHeaders(), signal);
      } catch (error) {
        signal?.throwIfAborted();
        throw new RealtimeError(
          "network_error",
          `could not load the snapshot of ${channel}: ${String(error)}`,
          channel,
        );
      }
      if (outcome.kind === "page") {
        authRetries = 0;
        if (seq === undefined) {
          // The first page's seq and token cover every page.
          seq = outcome.body.seq;
          snapshotToken = outcome.body.snapshot_token ?? null;
        }
        for (const record of outcome.body.records) records.push(record as PayloadOf<C>);
        cursor = outcome.body.next_cursor;
        if (cursor === null) return { seq, snapshotToken, records };
        continue;
      }
      const { status, code, body } = outcome;
      const authProblem =
        code === "token_expired" || (code === "unauthorized" && this.refreshing !== null);
      if (authProblem && authRetries < 2 && !this.closed) {
        authRetries += 1;
        // A new token may have come meanwhile (from the socket's own renewal): use it.
        if (this.token !== token && this.token !== undefined) continue;
        if (await this.refreshToken()) continue;
      }
      const message = typeof body.message === "string" ? body.message : `HTTP ${status}`;
      throw new RealtimeError(code, message, channel, body, status);
    }
  }

  /** Open the connection now instead of at the first subscription. */
  connect(): void {
    if (this.closed) throw new Error("this realtime-bridge client is closed");
    this.start();
  }

  /** Use a new user token from now on (e.g. after signing in or a refresh). */
  setAccessToken(token: string | null): void {
    this.token = token ?? undefined;
    if (token !== null && this.socketOpen) {
      this.send({ type: "access_token", token }, { kind: "access_token" });
    }
    for (const sub of this.subs.values()) {
      const refused = sub.state === "failed" && AUTH_CODES.has(sub.failure ?? "");
      if (sub.state === "needs-token" || refused) {
        sub.state = "idle";
        sub.failure = null;
        if (this.mode === "polling") this.startPolling(sub);
        else if (this.socketOpen) this.sendSubscribe(sub);
      }
    }
  }

  /** Stop everything: the socket, polls, timers and listeners. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.clearTimers();
    this.stopEnvironment();
    for (const sub of this.subs.values()) this.stopPolling(sub);
    this.subs.clear();
    this.dropSocket("client closed", false);
    this.refreshStatus();
  }

  // lifecycle ---------------------------------------------------------------

  private start(): void {
    if (this.started) return;
    this.started = true;
    const environment =
      this.options.environment === undefined ? browserEnvironment() : this.options.environment;
    if (environment) {
      this.online = environment.isOnline();
      this.stopEnvironment = environment.listen({
        online: () => this.wentOnline(),
        offline: () => this.wentOffline(),
        visible: () => this.becameVisible(),
        hidden: noop,
      });
    }
    if (this.WebSocketImpl === undefined) this.enterPolling();
    else if (this.online) this.openSocket();
    this.refreshStatus();
  }

  private wentOffline(): void {
    this.online = false;
    this.clearTimer("reconnectTimer");
    this.clearTimer("probeTimer");
    for (const sub of this.subs.values()) this.stopPolling(sub);
    this.dropSocket("offline", false);
    this.refreshStatus();
  }

  private wentOnline(): void {
    if (this.closed || this.online) return;
    this.online = true;
    this.failures = 0;
    this.attempt = 0;
    if (this.mode === "polling") {
      for (const sub of this.subs.values()) this.startPolling(sub);
    }
    if (this.WebSocketImpl !== undefined) this.openSocket();
    this.refreshStatus();
  }

  private becameVisible(): void {
    if (this.closed || !this.online) return;
    if (this.socketOpen) {
      this.ping(); // a sleeping laptop's socket may be dead without knowing it
    } else if (this.socket === null && this.WebSocketImpl !== undefined) {
      this.clearTimer("reconnectTimer");
      this.clearTimer("probeTimer");
      this.openSocket();
    }
  }

  // the socket --------------------------------------------------------------

  private openSocket(): void {
    if (this.closed || !this.online || this.socket !== null || !this.WebSocketImpl) return;
    this.clearTimer("reconnectTimer");
    this.clearTimer("probeTimer");
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(socketUrl(this.options));
    } catch {
      this.socketGone(false);
      return;
    }
    this.socket = socket;
    this.connectTimer = setTimeout(
      () => this.dropSocket("connect timeout", true),
      this.connectTimeoutMs,
    );
    socket.onopen = () => {
      if (this.socket === socket) this.opened();
    };
    socket.onmessage = (event: { data: unknown }) => {
      if (this.socket === socket) this.received(textOf(event.data));
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.socketGone(true);
    };
    socket.onerror = noop; // a close always follows
    this.refreshStatus();
  }

  private opened(): void {
    this.clearTimer("connectTimer");
    this.socketOpen = true;
    this.stats.socketsOpened += 1;
    this.stableTimer = setTimeout(() => {
      this.stable = true;
      this.failures = 0;
      this.attempt = 0;
    }, this.stableAfterMs);
    if (this.mode === "polling") this.leavePolling();
    if (this.token !== undefined) {
      this.send({ type: "access_token", token: this.token }, { kind: "access_token" });
    }
    for (const sub of this.subs.values()) {
      if (sub.state === "idle") this.sendSubscribe(sub);
    }
    this.heartbeatTimer = setInterval(() => this.ping(), this.heartbeatMs);
    this.refreshStatus();
  }

  /** Forget the socket now (without waiting for a close handshake a dead peer never sends). */
  private dropSocket(reason: string, failure: boolean): void {
    const socket = this.socket;
    if (socket === null) return;
    this.socket = null;
    socket.onopen = noop;
    socket.onmessage = noop;
    socket.onclose = noop;
    socket.onerror = noop;
    try {
      socket.close(4000, reason);
    } catch {
      // already closing
    }
    this.socketGone(failure);
  }

  private socketGone(failure: boolean): void {
    const wasStable = this.stable;
    this.stable = false;
    this.socketOpen = false;
    this.clearTimer("connectTimer");
    this.clearTimer("stableTimer");
    this.clearTimer("pongTimer");
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    this.pending = [];
    this.byServerId.clear();
    this.orphans.clear();
    for (const sub of this.subs.values()) {
      sub.serverId = null;
      const onSocket = sub.state === "subscribing" || sub.state === "active";
      if (onSocket && sub.poll === null) sub.state = "idle";
    }
    if (this.closed) return;
    if (failure && !wasStable) {
      this.failures += 1;
      this.stats.socketFailures += 1;
    }
    if (!this.online) {
      this.refreshStatus();
      return;
    }
    if (this.mode === "polling") this.scheduleProbe();
    else if (this.fallbackEnabled && this.failures >= this.fallbackAfter) this.enterPolling();
    else this.scheduleReconnect();
    this.refreshStatus();
  }

  private scheduleReconnect(): void {
    this.clearTimer("reconnectTimer");
    const delay = backoffDelay(this.attempt, this.options.reconnect);
    this.attempt += 1;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.openSocket();
    }, delay);
  }

  private ping(): void {
    if (!this.socketOpen) return;
    this.send({ type: "ping" }, { kind: "ping" });
    if (this.pongTimer === null) {
      this.pongTimer = setTimeout(() => {
        this.pongTimer = null;
        this.dropSocket("heartbeat timeout", true);
      }, this.heartbeatTimeoutMs);
    }
  }

  private send(frame: ClientFrame, pending: Pending): void {
    const socket = this.socket;
    if (socket === null || !this.socketOpen || socket.readyState !== OPEN) return;
    this.pending.push(pending);
    socket.send(JSON.stringify(frame));
  }

  private sendSubscribe(sub: Sub): void {
    const frame: SubscribeFrame = { type: "subscribe", channel: sub.channel, client_id: sub.key };
    const { filter, filters } = sub.options;
    if (filters !== undefined) frame.filters = filters;
    else if (typeof filter === "string") frame.filter = filter;
    else if (filter !== undefined) frame.filters = filter;
    if (sub.cursor !== undefined) {
      frame.since = sub.cursor;
      if (sub.snapshotToken !== null) frame.snapshot_token = sub.snapshotToken;
    }
    sub.state = "subscribing";
    this.send(frame, { kind: "subscribe", sub });
  }

  private received(text: string): void {
    this.clearTimer("pongTimer"); // any frame proves the connection is alive
    let parsed: ServerFrame | ServerFrame[];
    try {
      parsed = JSON.parse(text) as ServerFrame | ServerFrame[];
    } catch {
      return;
    }
    // A batch frame: the frames it holds, in the order they were sent.
    if (Array.isArray(parsed)) for (const frame of parsed) this.handle(frame);
    else this.handle(parsed);
  }

  private handle(frame: ServerFrame): void {
    switch (frame.type) {
      case "db_change": {
        const sub = frame.subscription_id ? this.byServerId.get(frame.subscription_id) : undefined;
        if (sub) this.deliver(sub, frame);
        return;
      }
      case "subscribed":
        this.pending.shift();
        this.confirmed(frame.client_id, frame.subscription_id, frame.seq);
        return;
      case "resync_required": {
        const sub = this.byServerId.get(frame.subscription_id);
        if (sub) this.resync(sub, frame.earliest_seq, frame.next_seq);
        return;
      }
      case "error":
        this.errorFrame(frame);
        return;
      case "pong":
      case "unsubscribed":
      case "access_token":
        this.pending.shift();
        return;
      default:
        return;
    }
  }

  private confirmed(clientId: string | undefined, serverId: string, head: number): void {
    const orphan = clientId ? this.orphans.get(clientId) : undefined;
    if (orphan) {
      this.orphans.delete(orphan.key);
      this.send({ type: "unsubscribe", subscription_id: serverId }, { kind: "unsubscribe" });
      return;
    }
    const sub = clientId ? this.subs.get(clientId) : undefined;
    if (!sub) return;
    sub.serverId = serverId;
    sub.state = "active";
    this.byServerId.set(serverId, sub);
    // Live from here: a later resume must start at the head the bridge saw.
    if (sub.cursor === undefined) sub.cursor = head;
    sub.options.onReady?.({ transport: "socket", seq: sub.cursor });
  }

  private errorFrame(frame: ErrorFrame): void {
    const error = new RealtimeError(frame.code, frame.message, frame.channel, frame);
    if (frame.code === "unknown_subscription") {
      this.pending.shift(); // the reply to an unsubscribe that crossed the bridge's own ending
      return;
    }
    if (frame.subscription_id !== undefined) {
      const sub = this.byServerId.get(frame.subscription_id);
      if (!sub) return;
      // The bridge ended this subscription (replay failed, or a new token's
      // identity may not keep it): subscribe again, from the cursor.
      this.byServerId.delete(frame.subscription_id);
      sub.serverId = null;
      sub.state = "idle";
      setTimeout(() => {
        if (this.subs.get(sub.key) === sub && sub.state === "idle" && this.socketOpen) {
          this.sendSubscribe(sub);
        }
      }, frame.code === "replay_failed" ? RETRY_LATER_MS : 0);
      return;
    }
    const unsolicited =
      this.pending.length === 0 ||
      UNSOLICITED.has(frame.code) ||
      (frame.code === "token_expired" && /paused/i.test(frame.message));
    if (unsolicited) {
      if (frame.code === "token_expired") void this.refreshToken();
      else this.emitError(error);
      return;
    }
    const request = this.pending.shift();
    if (request?.kind === "subscribe") this.subscribeRefused(request.sub, error);
    else if (request?.kind === "access_token") {
      if (error.code === "token_expired") void this.refreshToken();
      else this.emitError(error);
    }
  }

  private subscribeRefused(sub: Sub, error: RealtimeError): void {
    if (this.subs.get(sub.key) !== sub) return;
    if (error.code === "rate_limited") {
      sub.state = "idle";
      setTimeout(() => {
        if (this.subs.get(sub.key) === sub && sub.state === "idle" && this.socketOpen) {
          this.sendSubscribe(sub);
        }
      }, RETRY_LATER_MS);
      return;
    }
    // Refused for the token (or while a fresh one is on its way, since the
    // bridge then still judges by the old one): subscribe again once it is.
    if (error.code === "token_expired" || (error.code === "unauthorized" && this.refreshing)) {
      sub.state = "needs-token";
      void this.refreshToken();
      return;
    }
    this.fail(sub, error);
  }

  // delivery ----------------------------------------------------------------

  private deliver(sub: Sub, event: ChangeEvent): void {
    if (this.subs.get(sub.key) !== sub) return;
    if (sub.cursor !== undefined && event.seq <= sub.cursor) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    sub.cursor = event.seq;
    this.stats.eventsDelivered += 1;
    try {
      sub.onEvent(event as ChangeEvent<never>);
    } catch (error) {
      // The application's bug, not ours: report it and keep delivering.
      const report = (globalThis as { reportError?: (error: unknown) => void }).reportError;
      if (typeof report === "function") report(error);
      else console.error("[realtime-bridge] onEvent threw:", error);
    }
  }

  private resync(sub: Sub, earliestSeq: number | null, nextSeq: unknown): void {
    // The missed events are gone; resume (after any later reconnect) from
    // where the bridge continues, or the next resume would resync again.
    const next = typeof nextSeq === "number" ? nextSeq : null;
    if (next !== null && (sub.cursor === undefined || next > sub.cursor)) sub.cursor = next;
    // The token no longer applies (the bridge has dropped it too): resumes go without it.
    sub.snapshotToken = null;
    const info: ResyncInfo = { channel: sub.channel, earliestSeq, nextSeq: next };
    sub.options.onResync?.(info);
    for (const listener of this.listeners.resync) listener(info);
  }

  private fail(sub: Sub, error: RealtimeError): void {
    sub.state = "failed";
    sub.failure = error.code;
    this.stopPolling(sub);
    if (sub.options.onError) sub.options.onError(error);
    else this.emitError(error);
  }

  private emitError(error: RealtimeError): void {
    if (this.listeners.error.size === 0) {
      console.warn(`[realtime-bridge] ${error.code}: ${error.message}`);
      return;
    }
    for (const listener of this.listeners.error) listener(error);
  }

  private unsubscribe(sub: Sub): void {
    if (this.subs.get(sub.key) !== sub) return;
    this.subs.delete(sub.key);
    this.stopPolling(sub);
    if (sub.serverId !== null) {
      this.byServerId.delete(sub.serverId);
      this.send({ type: "unsubscribe", subscription_id: sub.serverId }, { kind: "unsubscribe" });
    } else if (sub.state === "subscribing") {
      this.orphans.set(sub.key, sub);
    }
  }

  // tokens ------------------------------------------------------------------

  private refreshToken(): Promise<boolean> {
    const source = this.options.getAccessToken;
    if (!source) {
      for (const listener of this.listeners.tokenExpired) listener();
      if (this.listeners.tokenExpired.size === 0) {
        this.emitError(
          new RealtimeError("token_expired", "the access token expired; call setAccessToken"),
        );
      }
      return Promise.resolve(false);
    }
    const now = Date.now();
    if (this.refreshing === null && now - this.lastRefresh < MIN_REFRESH_INTERVAL_MS) {
      // getAccessToken just gave a token the bridge calls expired: do not spin.
      this.emitError(
        new RealtimeError("token_expired", "getAccessToken returned an expired token"),
      );
      return Promise.resolve(false);
    }
    this.refreshing ??= (async () => {
      this.lastRefresh = now;
      try {
        const token = await source();
        if (!token || this.closed) return false;
        this.setAccessToken(token);
        return true;
      } catch (error) {
        this.emitError(new RealtimeError("token_refresh_failed", String(error)));
        return false;
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  private authHeaders(): Record<string, string> {
    return this.token !== undefined ? { Authorization: `Bearer ${this.token}` } : {};
  }

  // polling -----------------------------------------------------------------

  private enterPolling(): void {
    this.mode = "polling";
    this.pollHealthy = undefined;
    this.clearTimer("reconnectTimer");
    for (const sub of this.subs.values()) this.startPolling(sub);
    this.scheduleProbe();
    this.refreshStatus();
  }

  private leavePolling(): void {
    this.mode = "socket";
    this.pollHealthy = undefined;
    this.clearTimer("probeTimer");
    for (const sub of this.subs.values()) {
      this.stopPolling(sub);
      if (sub.state === "active" || sub.state === "subscribing") sub.state = "idle";
    }
  }

  private scheduleProbe(): void {
    this.clearTimer("probeTimer");
    if (this.WebSocketImpl === undefined || this.closed) return;
    this.probeTimer = setTimeout(() => {
      this.probeTimer = null;
      this.openSocket();
    }, this.probeMs);
  }

  private startPolling(sub: Sub): void {
    const waiting = sub.state === "failed" || sub.state === "needs-token";
    if (sub.poll !== null || !this.online || waiting) return;
    const controller = new AbortController();
    sub.poll = controller;
    sub.state = "active";
    void this.pollLoop(sub, controller.signal);
  }

  private stopPolling(sub: Sub): void {
    sub.poll?.abort();
    sub.poll = null;
  }

  private async pollLoop(sub: Sub, signal: AbortSignal): Promise<void> {
    let failures = 0;
    // The first request answers at once: it confirms HTTP works and catches up.
    let wait = 0;
    let ready = false;
    while (!signal.aborted && this.subs.get(sub.key) === sub) {
      let url: string;
      try {
        url = pollUrl({
          url: this.options.url,
          apiKey: this.options.apiKey,
          channel: sub.channel,
          since: sub.cursor,
          snapshotToken: sub.snapshotToken,
          wait,
          limit: this.pollLimit,
          filter: sub.options.filters ?? sub.options.filter,
        });
      } catch (error) {
        this.fail(sub, new RealtimeError("invalid_filter", String(error), sub.channel));
        return;
      }
      this.stats.pollRequests += 1;
      const outcome = await pollOnce(this.fetchImpl, url, this.authHeaders(), wait, signal);
      if (signal.aborted || this.subs.get(sub.key) !== sub) return;
      if (outcome.kind === "events") {
        failures = 0;
        wait = this.pollWait;
        this.setPollHealth(true);
        for (const event of outcome.body.events) this.deliver(sub, event);
        if (sub.cursor === undefined || outcome.body.next_seq > sub.cursor) {
          sub.cursor = outcome.body.next_seq;
        }
        if (!ready) {
          ready = true;
          sub.options.onReady?.({ transport: "polling", seq: sub.cursor });
        }
        continue;
      }
      if (outcome.kind === "error") {
        const { status, code, body } = outcome;
        if (status === 409 && code === "resync_required") {
          this.setPollHealth(true);
          const earliest = typeof body.earliest_seq === "number" ? body.earliest_seq : null;
          if (typeof body.next_seq === "number") sub.cursor = body.next_seq;
          this.resync(sub, earliest, body.next_seq);
          continue;
        }
        if (code === "token_expired" && (await this.refreshToken())) continue;
        if (status >= 400 && status < 500 && status !== 429 && status !== 408) {
          this.setPollHealth(true);
          const message = typeof body.message === "string" ? body.message : `HTTP ${status}`;
          this.fail(sub, new RealtimeError(code, message, sub.channel, body));
          return;
        }
      }
      this.setPollHealth(false);
      await sleep(backoffDelay(failures, this.options.fallback?.retry ?? { baseMs: 1000 }), signal);
      failures += 1;
    }
  }

  private setPollHealth(healthy: boolean): void {
    if (this.pollHealthy === healthy) return;
    this.pollHealthy = healthy;
    this.refreshStatus();
  }

  // status ------------------------------------------------------------------

  private refreshStatus(): void {
    let next: Status;
    if (this.closed || !this.online) next = "offline";
    else if (this.socketOpen) next = "realtime";
    else if (this.mode === "polling") next = this.pollHealthy === false ? "offline" : "polling";
    else next = "connecting";
    if (next === this.currentStatus) return;
    this.currentStatus = next;
    for (const listener of this.listeners.status) listener(next);
  }

  private clearTimer(
    name: "reconnectTimer" | "probeTimer" | "connectTimer" | "stableTimer" | "pongTimer",
  ): void {
    const timer = this[name];
    if (timer !== null) clearTimeout(timer);
    this[name] = null;
  }

  private clearTimers(): void {
    this.clearTimer("reconnectTimer");
    this.clearTimer("probeTimer");
    this.clearTimer("connectTimer");
    this.clearTimer("stableTimer");
    this.clearTimer("pongTimer");
    if (this.heartbeatTimer !== null) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }
}

/** A client for the bridge at `url`; nothing connects until the first `subscribe`. */
export function createClient(options: ClientOptions): RealtimeClient {
  return new RealtimeClient(options);
}
