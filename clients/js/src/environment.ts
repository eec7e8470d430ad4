/**
 * What the client learns from its runtime: network reachability and page
 * visibility. Browsers have both; Node, Deno, workers and React Native may
 * have neither, and then the client simply never hears about them.
 */

export interface EnvironmentEvents {
  online(): void;
  offline(): void;
  visible(): void;
  hidden(): void;
}

export interface ClientEnvironment {
  /** False only when the runtime knows the network is down. */
  isOnline(): boolean;
  /** False only when the page is known to be hidden. */
  isVisible(): boolean;
  /** Start listening; returns a function that stops. */
  listen(events: EnvironmentEvents): () => void;
}

interface EventTargetLike {
  addEventListener(type: string, listener: () => void): void;
  removeEventListener(type: string, listener: () => void): void;
}

function isEventTarget(value: unknown): value is EventTargetLike {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as EventTargetLike).addEventListener === "function" &&
    typeof (value as EventTargetLike).removeEventListener === "function"
  );
}

/** The browser's window / document / navigator, or null outside a browser. */
export function browserEnvironment(): ClientEnvironment | null {
  const scope = globalThis as {
    window?: unknown;
    document?: unknown;
    navigator?: { onLine?: unknown };
  };
  const win = scope.window;
  if (!isEventTarget(win)) return null;
  const doc = isEventTarget(scope.document)
    ? (scope.document as EventTargetLike & { visibilityState?: string })
    : null;
  return {
    isOnline: () => scope.navigator?.onLine !== false,
    isVisible: () => doc?.visibilityState !== "hidden",
    listen(events) {
      const onVisibility = () => {
        if (doc?.visibilityState === "hidden") events.hidden();
        else events.visible();
      };
      const online = () => events.online();
      const offline = () => events.offline();
      win.addEventListener("online", online);
      win.addEventListener("offline", offline);
      doc?.addEventListener("visibilitychange", onVisibility);
      return () => {
        win.removeEventListener("online", online);
        win.removeEventListener("offline", offline);
        doc?.removeEventListener("visibilitychange", onVisibility);
      };
    },
  };
}
