"""Pauses: garbage-collector runs and event-loop stalls, kept short and measured.

Every client's latency tail is the longest time the event loop could not
run. Two things stop it: a callback that runs too long, and CPython's
cyclic collector, whose full (generation 2) pass walks every tracked
object in the process while nothing else runs. Its cost grows with what
the process keeps (start-up state, connections, the replay window), so:

* `tune_collector` freezes what start-up built (modules, plugins, models,
  the app) into the permanent generation, which no collection walks again,
  and raises the collector's thresholds (see `GC_THRESHOLD`);
* `CollectorTimer` times every collection through `gc.callbacks`;
* `LoopMonitor` is a task that sleeps a fixed interval and records how
  late it woke: the longest stall any callback (or collection) caused.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# CPython's default is (700, 10, 10): a generation-0 pass per 700 net new
# container objects. Each pass promotes whatever is alive at that instant
# (futures, frames, half-sent batches of a fan-out), and promoted objects
# count towards the next full pass, which here walks every connection and
# the replay window. At 10,000 a generation-0 pass still walks only the
# young objects (well under a millisecond), transient objects mostly die
# before anyone looks at them, and full passes become several times rarer
# (measured in docs/performance.md). The older generations keep their
# ratios.
GC_THRESHOLD = (10_000, 10, 10)


def tune_collector(threshold: tuple[int, int, int] = GC_THRESHOLD) -> int:
    """Collect once, freeze what survives, set the thresholds; return the objects frozen.

    Called once start-up is done: what exists then lives as long as the
    process, and frozen objects are never walked again.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*threshold)
    frozen = gc.get_freeze_count()
    logger.debug("froze %d start-up objects; gc thresholds %s", frozen, threshold)
    return frozen


Observer = Callable[[int, float], None]


class CollectorTimer:
    """Times each collection; `observe(generation, seconds)` is called when one ends."""

    def __init__(self, observe: Observer) -> None:
        self._observe = observe
        self._started = 0.0
        self.counts = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        seconds = time.perf_counter() - self._started
        generation = int(info["generation"])
        self.counts[generation] += 1
        if seconds > self.longest[generation]:
            self.longest[generation] = seconds
        self._observe(generation, seconds)

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)


class LoopMonitor:
    """Sleeps `interval` seconds at a time and records how late each wake-up was."""

    def __init__(self, observe: Callable[[float], None], interval: float = 0.05) -> None:
        self.interval = interval
        self.longest = 0.0
        self._observe = observe

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            late = max(loop.time() - started - interval, 0.0)
            if late > self.longest:
                self.longest = late
            self._observe(late)
