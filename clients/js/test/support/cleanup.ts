/** What a test opened, closed after it (newest first): clients, mounted hooks, proxies. */

import { afterEach } from "vitest";

import type { RealtimeClient } from "../../src/index.js";
import { renderHook, type Rendered } from "./render.js";

const cleanups: (() => unknown)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** Run `cleanup` after the current test. */
export function onCleanup(cleanup: () => unknown): void {
  cleanups.push(cleanup);
}

/** `client`, closed after the current test. */
export function track<T extends RealtimeClient>(client: T): T {
  onCleanup(() => client.close());
  return client;
}

/** Render `hook` under `client`'s provider; unmounted after the current test. */
export function mount<R>(hook: () => R, client: RealtimeClient): Rendered<R> {
  (globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean }).IS_REACT_ACT_ENVIRONMENT = false;
  const view = renderHook(hook, client);
  onCleanup(() => view.unmount());
  return view;
}
