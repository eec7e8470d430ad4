/**
 * The bridge's wire formats: the `/ws/db_subscriptions` JSON frames and the
 * long-poll response. Payload types come from the generated channel map;
 * table channels (`public.my_table`) carry the raw row.
 */

import type { ChannelPayloads } from "./generated/channels.js";

/** A raw row of a table channel without a plugin. */
export type TableRow = Record<string, unknown>;

/** The payload type of a channel: its plugin model, or a raw row for table channels. */
export type PayloadOf<C extends string> = C extends keyof ChannelPayloads
  ? ChannelPayloads[C]
  : TableRow;

export type Operation = "INSERT" | "UPDATE" | "DELETE" | "BROADCAST";

/** One event, as received on the socket or from the long-poll endpoint. */
export interface ChangeEvent<T = TableRow> {
  type: "db_change";
  /** Present on the socket: the server's id of the subscription. */
  subscription_id?: string;
  channel: string;
  event: string;
  /** `schema.table` the change came from; null for published (BROADCAST) events. */
  table: string | null;
  operation: Operation;
  user_id: unknown;
  record_id: string | number | null;
  /** The typed payload of the new row; null for DELETE. */
  data: T | null;
  /** The payload of the old row (UPDATE, DELETE). */
  old: T | null;
  /** Global, gap-free, increasing; the resume cursor. */
  seq: number;
  timestamp: string;
}

/**
 * A filter: either an equality map (`{user_id: "u1", status: ["open", "pending"]}`,
 * a list is `in`, null is `is null`, `{gte: 10}` picks an operator) or a
 * Supabase filter string (`user_id=eq.u1,status=in.(open,pending)`).
 */
export type FilterValue = string | number | boolean | null;
export type FilterOperator =
  | "eq"
  | "neq"
  | "lt"
  | "lte"
  | "gt"
  | "gte"
  | "in"
  | "is"
  | "like"
  | "ilike";
/** One column's test: a scalar is `eq`, a list `in`, null `is null`, or `{ op: value }`. */
export type FilterCondition =
  | FilterValue
  | FilterValue[]
  | { [op in FilterOperator]?: FilterValue | FilterValue[] };
/** Column → condition; `{ not: condition }` negates it (`not.eq`, `not.in`, `not.is.null`…). */
export type FilterMap = Record<string, FilterCondition | { not: FilterCondition }>;

export interface SubscribeFrame {
  type: "subscribe";
  channel: string;
  filters?: FilterMap;
  filter?: string;
  client_id?: string;
  since?: number;
  /** The snapshot's `snapshot_token` (only with `since`): changes already in its rows are skipped. */
  snapshot_token?: string;
}

export type ClientFrame =
  | SubscribeFrame
  | { type: "unsubscribe"; subscription_id: string }
  | { type: "ping" }
  | { type: "access_token"; token: string };

export interface SubscribedFrame {
  type: "subscribed";
  subscription_id: string;
  channel: string;
  /** The latest seq when the subscription was made. */
  seq: number;
  client_id?: string;
  filter?: string;
}

export interface ResyncRequiredFrame {
  type: "resync_required";
  subscription_id: string;
  channel: string;
  earliest_seq: number;
  /** The subscription continues live after this seq (take the snapshot after the frame). */
  next_seq?: number;
}

export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
  subscription_id?: string;
  channel?: string;
  [detail: string]: unknown;
}

export type ServerFrame =
  | ChangeEvent
  | SubscribedFrame
  | ResyncRequiredFrame
  | ErrorFrame
  | { type: "unsubscribed"; subscription_id: string; channel: string }
  | { type: "pong" }
  | { type: "access_token"; status: string; expires_at?: number | null };

/** `GET /api/channels/{channel}/snapshot`: one page of a channel's current rows. */
export interface SnapshotPage<T = TableRow> {
  channel: string;
  /** Subscribe with `since` = the *first* page's seq to follow the rows live. */
  seq: number;
  records: T[];
  /**
   * The first page only: the Postgres snapshot the rows were read in. Subscribe
   * with it and `since` = `seq`, and the changes after `seq` that the rows already
   * hold are skipped. Null on later pages and without a database log (polling,
   * hosted Supabase mode); absent from bridges that predate it.
   */
  snapshot_token?: string | null;
  /** Ask again with `cursor` = this while it is not null. */
  next_cursor: string | null;
}

/** `GET /api/channels/{channel}/events` */
export interface PollResponse {
  events: ChangeEvent[];
  next_seq: number;
}
