/**
 * One snapshot page: `GET /api/channels/{channel}/snapshot`, a channel's
 * current rows with the seq to subscribe from. The loop over pages (cursor,
 * tokens) is the client's (`client.snapshot`).
 */

import { filterToString } from "./filters.js";
import type { FetchLike } from "./poll.js";
import type { FilterMap, SnapshotPage } from "./protocol.js";

export interface SnapshotQuery {
  /** The bridge's HTTP base URL. */
  url: string;
  apiKey: string;
  channel: string;
  filter?: string | FilterMap | undefined;
  /** Rows per page (the bridge allows 1 to 10,000; its default is 1000). */
  limit?: number | undefined;
  /** The previous page's `next_cursor`. */
  cursor?: string | null | undefined;
}

export type SnapshotOutcome =
  | { kind: "page"; body: SnapshotPage }
  | { kind: "error"; status: number; code: string; body: Record<string, unknown> };

/**
 * The request URL, with the filter spelled as the long-poll endpoint takes it;
 * throws `FilterError` for a map the string syntax cannot spell.
 */
export function snapshotUrl(query: SnapshotQuery): string {
  const params = new URLSearchParams();
  const { filter } = query;
  if (filter !== undefined) {
    params.set("filter", typeof filter === "string" ? filter : filterToString(filter));
  }
  if (query.limit !== undefined) params.set("limit", String(query.limit));
  if (query.cursor !== undefined && query.cursor !== null) params.set("cursor", query.cursor);
  params.set("apikey", query.apiKey);
  const base = query.url.replace(/\/+$/, "");
  return `${base}/api/channels/${encodeURIComponent(query.channel)}/snapshot?${params.toString()}`;
}

function isPage(body: Record<string, unknown>): boolean {
  return (
    typeof body.seq === "number" &&
    Array.isArray(body.records) &&
    (body.next_cursor === null ||
      body.next_cursor === undefined ||
      typeof body.next_cursor === "string")
  );
}

/**
 * Fetch one page: `page` on success, `error` with the bridge's code for an
 * HTTP error (or a 200 whose body is not a snapshot: code `bad_response`).
 * A network failure or an abort rejects, as `fetch` does.
 */
export async function snapshotPage(
  fetchImpl: FetchLike,
  url: string,
  headers: Record<string, string>,
  signal?: AbortSignal,
): Promise<SnapshotOutcome> {
  const response = await fetchImpl(url, signal ? { headers, signal } : { headers });
  const body = (await response.json().catch(() => ({}))) as Record<string, unknown>;
  if (response.ok && isPage(body)) {
    const next = (body.next_cursor as string | null | undefined) ?? null;
    return { kind: "page", body: { ...(body as unknown as SnapshotPage), next_cursor: next } };
  }
  if (response.ok) {
    return {
      kind: "error",
      status: response.status,
      code: "bad_response",
      body: { message: "the bridge's answer is not a snapshot page" },
    };
  }
  const code = typeof body.code === "string" ? body.code : `http_${response.status}`;
  return { kind: "error", status: response.status, code, body };
}
