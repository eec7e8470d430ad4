/** The bridge's HTTP endpoints the inspector reads: `/health`, `/api/stats`, `/api`. */

export interface Health {
  status: string;
  mode: string;
  last_seq: number;
  lag_ms: number | null;
}

export interface Stats {
  connections: number;
  subscriptions: Record<string, number>;
  channels: string[];
  head_seq: number;
  events_in: number;
  events_out: number;
}

export type Fetched<T> = { ok: true; body: T } | { ok: false; status: number; message: string };

async function get<T>(url: string, key: string | null): Promise<Fetched<T>> {
  try {
    const response = await fetch(url, {
      headers: {
        Accept: "application/json",
        ...(key ? { Authorization: `Bearer ${key}` } : {}),
      },
    });
    const body = (await response.json().catch(() => ({}))) as T & { message?: string };
    // /health answers 503 with the same body when the source is down: still worth showing.
    if (response.ok || (response.status === 503 && url.endsWith("/health"))) {
      return { ok: true, body };
    }
    return { ok: false, status: response.status, message: body.message ?? response.statusText };
  } catch (error) {
    return { ok: false, status: 0, message: String(error) };
  }
}

export const fetchHealth = (base: string, key: string | null) =>
  get<Health>(`${base}/health`, key);
export const fetchStats = (base: string, key: string | null) =>
  get<Stats>(`${base}/api/stats`, key);
/** The open JSON index: lists the channels without a key. */
export const fetchIndex = (base: string) => get<{ channels: string[] }>(`${base}/api`, null);
