import WebSocket from "ws";

import { createClient, type ClientOptions, type RealtimeClient, type Status } from "../../src/index.js";
import type { BridgeInfo } from "./bridge.js";

let counter = 0;

/** A user id no other test uses, so tests can share one bridge. */
export function uniqueUser(label: string): string {
  counter += 1;
  return `${label}-${process.pid}-${Date.now().toString(36)}-${counter}`;
}

/** A client of the test bridge with the service key, Node's `ws`, and quick timings. */
export function testClient(bridge: BridgeInfo, options: Partial<ClientOptions> = {}): RealtimeClient {
  return createClient({
    url: bridge.url,
    apiKey: bridge.serviceKey,
    WebSocket: WebSocket as unknown as ClientOptions["WebSocket"] & object,
    environment: null,
    reconnect: { baseMs: 50, maxMs: 400 },
    stableAfterMs: 200,
    ...options,
  });
}

export interface Signal {
  symbol: string;
  user_id: string;
  signal_type?: "BUY" | "SELL";
  entry_price?: number;
  quantity?: number;
}

export interface Simulated {
  trade: { id: number; user_id: string; symbol: string; signal_type: string };
  position: { id: number; user_id: string; symbol: string; market_value: number | null };
}

/** POST /api/testing/simulate-signal: writes a trade and a position (two events). */
export async function simulate(bridge: BridgeInfo, signal: Signal): Promise<Simulated> {
  const response = await fetch(`${bridge.url}/api/testing/simulate-signal`, {
    method: "POST",
    headers: { Authorization: `Bearer ${bridge.serviceKey}`, "Content-Type": "application/json" },
    body: JSON.stringify({ signal_type: "BUY", entry_price: 100, ...signal }),
  });
  if (response.status !== 201) throw new Error(`simulate-signal: ${response.status} ${await response.text()}`);
  return (await response.json()) as Simulated;
}

/** Resolve when `check()` is true, polling every 10 ms; fail after `timeoutMs`. */
export async function until(check: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Resolve when the client reaches `status`. */
export function untilStatus(client: RealtimeClient, status: Status, timeoutMs = 10_000): Promise<void> {
  return until(() => client.status === status, `status ${status} (is ${client.status})`, timeoutMs);
}
