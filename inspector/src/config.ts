/**
 * What the page is pointed at: the bridge (the page's own origin unless
 * `?url=`), the key (`?apikey=`, else the one stored in this browser) and a
 * channel to start watching (`?channel=&filter=&since=`). `?reconnectMs=`,
 * `?fallbackAfter=` and `?probeMs=` tune the client's reconnect and fallback
 * timings (the browser tests use them to see a fallback within seconds).
 */

import type { ClientOptions } from "@realtime-bridge/client";

const STORAGE_KEY = "realtime-bridge:inspector:apikey";

export interface Config {
  url: string;
  key: string | null;
  /** True when the key came from the page URL (and so is not stored). */
  keyFromUrl: boolean;
  channel: string | null;
  filter: string;
  since: string;
  timings: Pick<ClientOptions, "reconnect" | "fallback">;
}

function positive(params: URLSearchParams, name: string): number | undefined {
  const value = Number(params.get(name));
  return Number.isFinite(value) && value > 0 ? value : undefined;
}

export function readConfig(location: Location = window.location): Config {
  const params = new URLSearchParams(location.search);
  const urlKey = params.get("apikey");
  const reconnectMs = positive(params, "reconnectMs");
  const fallbackAfter = positive(params, "fallbackAfter");
  const probeMs = positive(params, "probeMs");
  const timings: Config["timings"] = {};
  if (reconnectMs !== undefined) timings.reconnect = { baseMs: reconnectMs, maxMs: reconnectMs * 4 };
  if (fallbackAfter !== undefined || probeMs !== undefined) {
    timings.fallback = {
      ...(fallbackAfter !== undefined && { afterFailures: fallbackAfter }),
      ...(probeMs !== undefined && { probeIntervalMs: probeMs }),
    };
  }
  return {
    url: (params.get("url") ?? location.origin).replace(/\/+$/, ""),
    key: urlKey || storedKey(),
    keyFromUrl: Boolean(urlKey),
    channel: params.get("channel"),
    filter: params.get("filter") ?? "",
    since: params.get("since") ?? "",
    timings,
  };
}

function storedKey(): string | null {
  try {
    return window.localStorage.getItem(STORAGE_KEY);
  } catch {
    return null; // storage disabled
  }
}

export function storeKey(key: string | null): void {
  try {
    if (key) window.localStorage.setItem(STORAGE_KEY, key);
    else window.localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: the key lasts as long as the page
  }
}
