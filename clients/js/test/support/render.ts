/** A minimal renderHook for React 18+/19 (no testing-library needed). */

import { act, createElement, type ReactNode } from "react";
import { createRoot, type Root } from "react-dom/client";

import type { RealtimeClient } from "../../src/index.js";
import { RealtimeBridgeProvider } from "../../src/react.js";

export interface Rendered<R> {
  result: { current: R };
  rerender(hook: () => R): void;
  unmount(): void;
}

/** `act`, with React told it is in a test environment just for this call. */
function inAct(callback: () => void): void {
  const scope = globalThis as { IS_REACT_ACT_ENVIRONMENT?: boolean | undefined };
  const before = scope.IS_REACT_ACT_ENVIRONMENT;
  scope.IS_REACT_ACT_ENVIRONMENT = true;
  try {
    act(callback);
  } finally {
    scope.IS_REACT_ACT_ENVIRONMENT = before;
  }
}

export function renderHook<R>(hook: () => R, client?: RealtimeClient): Rendered<R> {
  const result = { current: undefined as R };
  let current = hook;
  function Probe(): null {
    result.current = current();
    return null;
  }
  const root: Root = createRoot(document.createElement("div"));
  const tree = (): ReactNode =>
    client ? createElement(RealtimeBridgeProvider, { client }, createElement(Probe)) : createElement(Probe);
  inAct(() => root.render(tree()));
  let unmounted = false;
  const rendered: Rendered<R> = {
    result,
    rerender(next) {
      current = next;
      inAct(() => root.render(tree()));
    },
    unmount() {
      if (unmounted) return;
      unmounted = true;
      mounted.delete(rendered);
      inAct(() => root.unmount());
    },
  };
  mounted.add(rendered);
  return rendered;
}

const mounted = new Set<Rendered<unknown>>();

/** Unmount everything still mounted (call before closing the clients). */
export function cleanup(): void {
  for (const view of [...mounted]) view.unmount();
}
