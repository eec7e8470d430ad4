/**
 * One long-poll request: `GET /api/channels/{channel}/events`, the fallback
 * transport. The loop around it (cursor, backoff, status) is the client's.
 */

import { filterToString } from "./filters.js";
import type { FilterMap, PollResponse } from "./protocol.js";

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface PollQuery {
  /** The bridge's HTTP base URL. */
  url: string;
  apiKey: string;
  channel: string;
  since: number | undefined;
  /** A snapshot's token, sent only with `since` (the bridge refuses it alone). */
  snapshotToken?: string | null | undefined;
  /** Seconds the bridge may wait for a first event. */
  wait: number;
  limit: number;
  filter?: string | FilterMap | undefined;
}

export type PollOutcome =
  | { kind: "events"; body: PollResponse }
  | { kind: "error"; status: number; code: string; body: Record<string, unknown> }
  | { kind: "failed" };

/** The request URL; throws `FilterError` for a map the string syntax cannot spell. */
export function pollUrl(query: PollQuery): string {
  const params = new URLSearchParams();
  if (query.since !== undefined) {
    params.set("since", String(query.since));
    if (typeof query.snapshotToken === "string") params.set("snapshot_token", query.snapshotToken);
  }
  params.set("wait", String(query.wait));
  params.set("limit", String(query.limit));
  const { filter } = query;
  if (filter !== undefined) {
    params.set("filter", typeof filter === "string" ? filter : filterToString(filter));
  }
  params.set("apikey", query.apiKey);
  const base = query.url.replace(/\/+$/, "");
  return `${base}/api/channels/${encodeURIComponent(query.channel)}/events?${params.toString()}`;
}

/**
 * Send one poll. `events` on success, `error` with the bridge's code for an
 * HTTP error, `failed` when nothing usable came back (network, timeout).
 */
export async function pollOnce(
  fetchImpl: FetchLike,
  url: string,
  headers: Record<string, string>,
  wait: number,
  signal: AbortSignal,
): Promise<PollOutcome> {
  const request = new AbortController();
  const abort = () => request.abort();
  signal.addEventListener("abort", abort);
  // A long-poll answers within `wait`; a request that hangs well past it is dead.
  const timer = setTimeout(abort, (wait + 15) * 1000);
  try {
    const response = await fetchImpl(url, { signal: request.signal, headers });
    const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
    if (response.ok && Array.isArray(body.events) && typeof body.next_seq === "number") {
      return { kind: "events", body: body as unknown as PollResponse };
    }
    if (response.ok) return { kind: "failed" };
    const code = typeof body.code === "string" ? body.code : `http_${response.status}`;
    return { kind: "error", status: response.status, code, body };
  } catch {
    return { kind: "failed" };
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", abort);
  }
}
