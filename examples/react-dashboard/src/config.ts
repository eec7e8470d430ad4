/**
 * Where the bridge is and who we are. First match wins:
 *
 * 1. the page URL: `?url=http://127.0.0.1:8000&apikey=<anon key>&token=<user JWT>`
 *    (`&user=` overrides the user id, otherwise the token's `sub`);
 * 2. what the setup form saved in this browser;
 * 3. build-time env: VITE_BRIDGE_URL, VITE_BRIDGE_ANON_KEY, VITE_BRIDGE_TOKEN (`.env.local`).
 *
 * `?reconnectMs=`, `?fallbackAfter=` and `?probeMs=` shorten the client's
 * reconnect and fallback timings (the browser tests use them).
 */

import type { ClientOptions } from "@realtime-bridge/client";

export interface Settings {
  url: string;
  apiKey: string;
  token: string;
}

export interface Config extends Settings {
  userId: string | null;
  timings: Pick<ClientOptions, "reconnect" | "fallback">;
}

const STORAGE_KEY = "realtime-bridge:dashboard";

function saved(): Partial<Settings> {
  try {
    return JSON.parse(window.localStorage.getItem(STORAGE_KEY) ?? "{}") as Partial<Settings>;
  } catch {
    return {};
  }
}

export function save(settings: Settings | null): void {
  try {
    if (settings) window.localStorage.setItem(STORAGE_KEY, JSON.stringify(settings));
    else window.localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled
  }
}

/** The `sub` claim of a JWT, read without verifying it (the bridge verifies). */
export function tokenSubject(token: string): string | null {
  const payload = token.split(".")[1];
  if (!payload) return null;
  try {
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as { sub?: unknown };
    return typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}

function positive(params: URLSearchParams, name: string): number | undefined {
  const value = Number(params.get(name));
  return Number.isFinite(value) && value > 0 ? value : undefined;
}

/** The settings found so far (some may be empty). */
export function currentSettings(search: string = window.location.search): Settings {
  const params = new URLSearchParams(search);
  const stored = saved();
  const env = import.meta.env;
  const pick = (param: string, key: keyof Settings, fromEnv: unknown): string =>
    params.get(param) || stored[key] || (typeof fromEnv === "string" ? fromEnv : "");
  return {
    url: pick("url", "url", env.VITE_BRIDGE_URL).replace(/\/+$/, ""),
    apiKey: pick("apikey", "apiKey", env.VITE_BRIDGE_ANON_KEY),
    token: pick("token", "token", env.VITE_BRIDGE_TOKEN),
  };
}

/** The full configuration, or null while the URL or the key is missing. */
export function readConfig(search: string = window.location.search): Config | null {
  const settings = currentSettings(search);
  if (!settings.url || !settings.apiKey) return null;
  const params = new URLSearchParams(search);
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
  const userId = params.get("user") || (settings.token ? tokenSubject(settings.token) : null);
  return { ...settings, userId, timings };
}
