"""examples/exit_monitor.py against a real bridge: one exit per crossing position, sub-second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from examples.exit_monitor import ExitMonitor, Options, Position, percentile, run
from realtime_bridge.market import Tick
from realtime_bridge.testing import RunningBridge
from tests.conftest import ROOT, BridgeFactory
from tests.helpers import until

POSITION = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, stop_loss, take_profit) "
    "VALUES ($1, $2, $3, 100, $4, $5) RETURNING id"
)


def options(bridge: RunningBridge, dsn: str, tmp_path: Path, **overrides: Any) -> Options:
    values: dict[str, Any] = {
        "url": bridge.url,
        "key": bridge.service_key,
        "database_url": dsn,
        "log_path": tmp_path / "exits.jsonl",
    }
    values.update(overrides)
    return Options(**values)


@contextlib.asynccontextmanager
async def monitoring(opts: Options) -> AsyncIterator[ExitMonitor]:
    monitor = ExitMonitor(log_path=opts.log_path)
    ready = asyncio.Event()
    task = asyncio.create_task(run(opts, monitor, ready))
    try:
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([waiter, task], timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        assert ready.is_set(), "the monitor never became ready"
        yield monitor
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def exits(db: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await db.fetch("SELECT * FROM exits ORDER BY id")
    return rows


def publish(bridge: RunningBridge, symbol: str, price: float) -> float:
    sent = time.time()
    bridge.bridge.market.publish([Tick.of(symbol, price)])
    return sent


async def tick_seen(monitor: ExitMonitor, bridge: RunningBridge, symbol: str, price: float) -> None:
    """Send one tick and wait until the monitor has checked it."""
    seen = monitor.stats.ticks
    publish(bridge, symbol, price)
    await until(lambda: monitor.stats.ticks > seen, what="the tick")


# the rules --------------------------------------------------------------------


def test_stops_and_targets_of_longs_and_shorts() -> None:
    long = Position(1, "u1", "AAPL", 10, 100, stop_loss=95, take_profit=120)
    short = Position(2, "u1", "AAPL", -10, 100, stop_loss=105, take_profit=90)
    assert long.crossed(100) is None
    assert short.crossed(100) is None
    assert long.crossed(95) == ("stop_loss", 95)
    assert long.crossed(121) == ("take_profit", 120)
    assert short.crossed(105.5) == ("stop_loss", 105)
    assert short.crossed(89) == ("take_profit", 90)
    assert Position(3, "u1", "X", 1, 100, None, None).crossed(0.01) is None
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99
    assert percentile([], 0.5) is None


# end to end -------------------------------------------------------------------


async def test_a_crossing_tick_makes_exactly_one_exit_within_a_second(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    bridge = await start_bridge()
    stopped = await db.fetchval(POSITION, "u1", "AAPL", 10, 95, 120)
    untouched = await db.fetchval(POSITION, "u2", "MSFT", 10, 95, 120)
    # A wider band on the same symbol keeps AAPL watched after the first exit.
    await db.fetchval(POSITION, "u3", "AAPL", 10, 80, 200)
    async with monitoring(options(bridge, dsn, tmp_path)) as monitor:
        await until(lambda: monitor.symbols() == {"AAPL", "MSFT"}, what="positions loaded")
        publish(bridge, "MSFT", 100.0)  # inside its band: no exit
        sent = publish(bridge, "AAPL", 94.5)  # through the stop
        await until(lambda: monitor.stats.exits == 1, timeout=1.0, what="the exit")
        assert time.time() - sent < 1.0
        for price in (94.0, 93.0, 125.0, 94.5):  # still crossing: still one exit
            await tick_seen(monitor, bridge, "AAPL", price)
        publish(bridge, "MSFT", 96.0)
        await until(lambda: monitor.last_tick.get("MSFT", 0) > sent, what="the MSFT tick")
        await asyncio.sleep(0.3)
    rows = await exits(db)
    assert [(r["position_id"], r["reason"], r["mode"], r["status"]) for r in rows] == [
        (stopped, "stop_loss", "simulation", "simulated")
    ]
    (row,) = rows
    assert float(row["trigger_price"]) == 94.5
    assert float(row["level"]) == 95
    assert float(row["pnl"]) == -55
    assert row["source"] == "websocket"
    assert 0 <= row["latency_ms"] < 1000
    # Simulation: the position stays open.
    assert await db.fetchval("SELECT status FROM positions WHERE id = $1", stopped) == "open"
    assert untouched not in {r["position_id"] for r in rows}
    logged = [json.loads(line) for line in (tmp_path / "exits.jsonl").read_text().splitlines()]
    assert [(e["position_id"], e["trigger_price"]) for e in logged] == [(stopped, 94.5)]
    summary = monitor.stats.summary()
    assert summary["exits"] == 1
    assert summary["ticks"] >= 7
    assert summary["p50_ms"] is not None
    assert summary["p50_ms"] < 1000


async def test_positions_opened_later_and_moved_stops_are_followed(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    bridge = await start_bridge()
    async with monitoring(options(bridge, dsn, tmp_path)) as monitor:
        later = await db.fetchval(POSITION, "u1", "NVDA", -5, 110, 80)  # a short
        await until(lambda: "NVDA" in monitor.symbols(), what="the new position")
        publish(bridge, "NVDA", 100.0)
        await until(lambda: monitor.stats.ticks >= 1, what="a tick")
        await db.execute("UPDATE positions SET stop_loss = 99 WHERE id = $1", later)
        await until(lambda: monitor.positions[later].stop_loss == 99, what="the moved stop")
        publish(bridge, "NVDA", 99.5)  # above the short's new stop
        await until(lambda: monitor.stats.exits == 1, timeout=1.0, what="the exit")
    (row,) = await exits(db)
    assert (row["position_id"], row["reason"], float(row["trigger_price"])) == (
        later,
        "stop_loss",
        99.5,
    )


async def test_execute_closes_the_position_through_the_broker_once(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    bridge = await start_bridge()
    target = await db.fetchval(POSITION, "u1", "TSLA", 2, 90, 130)
    async with monitoring(options(bridge, dsn, tmp_path, execute=True)) as monitor:
        await until(lambda: "TSLA" in monitor.symbols(), what="positions loaded")
        publish(bridge, "TSLA", 131.0)
        await until(lambda: monitor.stats.exits == 1, timeout=1.0, what="the exit")
        publish(bridge, "TSLA", 132.0)
        await until(lambda: monitor.symbols() == frozenset(), what="the closed position gone")
        await asyncio.sleep(0.2)
    assert monitor.stats.exits == 1
    row = await db.fetchrow("SELECT * FROM positions WHERE id = $1", target)
    assert row["status"] == "closed"
    assert float(row["exit_price"]) == 131.0
    assert row["closed_at"] is not None
    (exit_row,) = await exits(db)
    assert (exit_row["mode"], exit_row["status"], exit_row["reason"]) == (
        "execute",
        "executed",
        "take_profit",
    )


async def test_once_polls_over_rest_and_a_second_run_adds_nothing(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    bridge = await start_bridge()
    stopped = await db.fetchval(POSITION, "u1", "AAPL", 10, 95, 120)
    await db.fetchval(POSITION, "u1", "MSFT", 10, 95, 120)
    publish(bridge, "AAPL", 90.0)
    publish(bridge, "MSFT", 100.0)
    first = ExitMonitor()
    await run(options(bridge, dsn, tmp_path, once=True), first)
    assert first.stats.summary()["exits"] == 1
    assert first.stats.ticks == 2
    second = ExitMonitor()
    await run(options(bridge, dsn, tmp_path, once=True), second)
    assert second.stats.exits == 0
    assert second.stats.duplicates == 1  # decided again, refused by the table
    (row,) = await exits(db)
    assert (row["position_id"], row["source"]) == (stopped, "rest")


async def test_no_websocket_polls_every_interval(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    bridge = await start_bridge()
    stopped = await db.fetchval(POSITION, "u1", "AAPL", 10, 95, 120)
    opts = options(bridge, dsn, tmp_path, websocket=False, interval=0.1)
    async with monitoring(opts) as monitor:
        publish(bridge, "AAPL", 100.0)
        await until(lambda: monitor.stats.ticks >= 1, what="a polled price")
        publish(bridge, "AAPL", 94.0)
        await until(lambda: monitor.stats.exits == 1, what="the exit")
    (row,) = await exits(db)
    assert (row["position_id"], row["source"]) == (stopped, "rest")


async def test_the_command_prints_its_stats(
    bridge: RunningBridge, dsn: str, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.exit_monitor",
        "--url",
        bridge.url,
        "--key",
        bridge.service_key,
        "--database-url",
        dsn,
        "--once",
        "--log",
        str(tmp_path / "log.jsonl"),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["mode"] == "simulation"
    assert (stats["ticks"], stats["exits"]) == (0, 0)
