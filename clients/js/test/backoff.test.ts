import { describe, expect, test } from "vitest";

import { backoffDelay, DEFAULT_BACKOFF } from "../src/index.js";

describe("backoffDelay", () => {
  test("doubles from 3 s and stops at 30 s by default (no randomness)", () => {
    const delays = Array.from({ length: 8 }, (_, attempt) => backoffDelay(attempt, {}, () => 0));
    expect(delays).toEqual([3000, 6000, 12_000, 24_000, 30_000, 30_000, 30_000, 30_000]);
  });

  test("jitter takes up to half of each delay by default", () => {
    expect(backoffDelay(0, {}, () => 0.999_999)).toBe(1500);
    expect(backoffDelay(4, {}, () => 0.5)).toBe(22_500);
    for (let attempt = 0; attempt < 10; attempt += 1) {
      const ceiling = Math.min(30_000, 3000 * 2 ** attempt);
      const delay = backoffDelay(attempt);
      expect(delay).toBeGreaterThanOrEqual(ceiling / 2);
      expect(delay).toBeLessThanOrEqual(ceiling);
    }
  });

  test("base, max, factor and jitter are configurable (tests use small values)", () => {
    const options = { baseMs: 10, maxMs: 35, factor: 3, jitter: 0 };
    expect([0, 1, 2, 3].map((n) => backoffDelay(n, options))).toEqual([10, 30, 35, 35]);
    expect(backoffDelay(0, { baseMs: 100, jitter: 1 }, () => 0.25)).toBe(75);
  });

  test("a huge attempt number neither overflows nor goes negative", () => {
    expect(backoffDelay(10_000, {}, () => 0)).toBe(DEFAULT_BACKOFF.maxMs);
    expect(backoffDelay(-3, {}, () => 0)).toBe(DEFAULT_BACKOFF.baseMs);
  });
});
