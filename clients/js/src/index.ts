/**
 * @realtime-bridge/client: typed, resumable realtime events from a
 * realtime-bridge server, with reconnect, heartbeat and polling fallback.
 * React hooks live in `@realtime-bridge/client/react`.
 */

export {
  createClient,
  RealtimeClient,
  RealtimeError,
  type AccessTokenSource,
  type ClientEvents,
  type ClientOptions,
  type ClientStats,
  type FetchLike,
  type ReadyInfo,
  type ResyncInfo,
  type Snapshot,
  type SnapshotOptions,
  type Status,
  type SubscribeOptions,
  type Unsubscribe,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
export {
  browserEnvironment,
  type ClientEnvironment,
  type EnvironmentEvents,
} from "./environment.js";
export { canonical, compileFilter, filterToString, FilterError } from "./filters.js";
export {
  applyEvent,
  initRecords,
  initSnapshot,
  recordsOf,
  type ApplyOptions,
  type RecordKey,
  type RecordsOptions,
  type RecordsState,
} from "./records.js";
export type {
  ChangeEvent,
  ClientFrame,
  ErrorFrame,
  FilterCondition,
  FilterMap,
  FilterOperator,
  FilterValue,
  Operation,
  PayloadOf,
  PollResponse,
  ResyncRequiredFrame,
  ServerFrame,
  SnapshotPage,
  SubscribedFrame,
  SubscribeFrame,
  TableRow,
} from "./protocol.js";
export * from "./generated/channels.js";
