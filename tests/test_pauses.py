"""The collector's tuning, its timer and the event-loop stall monitor."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time

from realtime_bridge.pauses import GC_THRESHOLD, CollectorTimer, LoopMonitor, tune_collector
from tests.conftest import BridgeFactory


def test_tune_collector_freezes_start_up_and_sets_thresholds() -> None:
    threshold = gc.get_threshold()
    try:
        frozen = tune_collector()
        assert frozen > 0
        assert gc.get_freeze_count() >= frozen
        assert gc.get_threshold() == GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_collector_timer_times_passes_until_uninstalled() -> None:
    seen: list[tuple[int, float]] = []
    timer = CollectorTimer(lambda generation, seconds: seen.append((generation, seconds)))
    timer.install()
    timer.install()  # once only
    try:
        gc.collect()
    finally:
        timer.uninstall()
    assert [g for g, _ in seen] == [2]
    assert timer.counts[2] == 1
    assert 0 < seen[0][1] == timer.longest[2]
    gc.collect()
    assert len(seen) == 1


async def test_loop_monitor_records_a_blocking_callback() -> None:
    stalls: list[float] = []
    monitor = LoopMonitor(stalls.append, interval=0.01)
    task = asyncio.create_task(monitor.run())
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # noqa: ASYNC251 - blocks the loop, as a long callback or a full pass would
    await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert 0.15 <= monitor.longest < 1.0
    assert max(stalls) == monitor.longest
    assert min(stalls) < 0.1


async def test_bridge_owns_its_monitor_and_collector_callback(start_bridge: BridgeFactory) -> None:
    threshold = gc.get_threshold()
    try:
        running = await start_bridge(gc_tuning=True)
        bridge = running.bridge
        assert gc.get_threshold() == GC_THRESHOLD
        assert gc.get_freeze_count() > 0
        assert bridge.collector_timer._callback in gc.callbacks
        monitor = bridge._tasks["loop-monitor"]
        assert not monitor.done()
        await bridge.stop()
        assert monitor.cancelled()
        assert bridge.collector_timer._callback not in gc.callbacks
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
