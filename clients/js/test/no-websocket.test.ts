/** Without a WebSocket (Node 20) the client still works by long-polling, and says so loudly. */

import { afterEach, expect, test, vi } from "vitest";

import { createClient } from "../src/index.js";
import { NO_WEBSOCKET_WARNING, type WebSocketConstructor } from "../src/client.js";

const fetch = vi.fn(() => new Promise<Response>(() => {}));

afterEach(() => {
  vi.unstubAllGlobals();
  vi.restoreAllMocks();
});

test("a client made where there is no WebSocket warns once, naming the fix", () => {
  vi.stubGlobal("WebSocket", undefined);
  const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
  const client = createClient({ url: "http://b", apiKey: "k", environment: null, fetch });
  expect(warn).toHaveBeenCalledOnce();
  expect(warn).toHaveBeenCalledWith(NO_WEBSOCKET_WARNING);
  expect(NO_WEBSOCKET_WARNING).toMatch(/only long-poll/);
  expect(NO_WEBSOCKET_WARNING).toMatch(/Node 22\+/);
  expect(NO_WEBSOCKET_WARNING).toMatch(/`ws` package's: createClient\(\{ \.\.\., WebSocket \}\)/);
  client.subscribe("trade-updates", {}, () => {});
  expect(client.status).toBe("polling");
  client.close();
});

test("a client given a WebSocket says nothing", () => {
  vi.stubGlobal("WebSocket", undefined);
  const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
  const WebSocket = vi.fn() as unknown as WebSocketConstructor;
  const client = createClient({ url: "http://b", apiKey: "k", environment: null, fetch, WebSocket });
  expect(warn).not.toHaveBeenCalled();
  client.close();
});
