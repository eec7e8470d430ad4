/** Exponential backoff with jitter, as a pure function so it can be tested exactly. */

export interface BackoffOptions {
  /** The first delay, in ms (default 3000). */
  baseMs?: number | undefined;
  /** The largest delay, in ms (default 30000). */
  maxMs?: number | undefined;
  /** Growth per attempt (default 2). */
  factor?: number | undefined;
  /**
   * How much of each delay is random, 0..1 (default 0.5): the delay is drawn
   * from [d × (1 − jitter), d], so clients that dropped together do not all
   * come back in the same millisecond.
   */
  jitter?: number | undefined;
}

export const DEFAULT_BACKOFF = { baseMs: 3000, maxMs: 30_000, factor: 2, jitter: 0.5 } as const;

/** The delay before retry number `attempt` (0 for the first retry). */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const base = options.baseMs ?? DEFAULT_BACKOFF.baseMs;
  const max = Math.max(base, options.maxMs ?? DEFAULT_BACKOFF.maxMs);
  const factor = options.factor ?? DEFAULT_BACKOFF.factor;
  const jitter = Math.min(1, Math.max(0, options.jitter ?? DEFAULT_BACKOFF.jitter));
  const ceiling = Math.min(max, base * factor ** Math.max(0, attempt));
  return Math.round(ceiling * (1 - jitter * random()));
}
