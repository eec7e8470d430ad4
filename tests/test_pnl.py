"""Live P&L: positions marked from ticks, throttled, row-scoped, written back only as configured."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from realtime_bridge.market import Tick
from realtime_bridge.testing import JsonSocket, RunningBridge
from tests.helpers import insert_position, until


async def frames_for(ws: JsonSocket, seconds: float) -> list[dict[str, Any]]:
    frames = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        try:
            frames.append(await ws.recv(max(end - loop.time(), 0.01)))
        except TimeoutError:
            break
    return [f for f in frames if f.get("type") == "db_change"]


async def open_positions(bridge: RunningBridge, db: asyncpg.Connection) -> tuple[int, int]:
    mine = await insert_position(db, "u1", "AAPL", quantity=10, entry_price=100, current_price=None)
    short = await insert_position(
        db, "u2", "AAPL", quantity=-5, entry_price=100, current_price=None
    )
    await db.execute(
        "INSERT INTO portfolio_snapshots (user_id, total_value, cash, positions_value) "
        "VALUES ('u1', 1000, 1000, 0)"
    )
    pnl = bridge.bridge.pnl
    await until(lambda: {mine, short} <= set(pnl.positions), what="positions followed")
    await until(lambda: "u1" in pnl.snapshots, what="snapshot followed")
    return mine, short


async def test_ticks_move_pnl_per_user_throttled_and_not_written(
    start_bridge: Any, db: asyncpg.Connection
) -> None:
    bridge: RunningBridge = await start_bridge(pnl_interval=0.1, pnl_write_back=0)
    mine, short = await open_positions(bridge, db)
    async with (
        bridge.websocket(bridge.user_token("u1")) as u1,
        bridge.websocket(bridge.user_token("u2")) as u2,
    ):
        for ws in (u1, u2):
            assert (await ws.subscribe(channel="position-updates"))["type"] == "subscribed"
        assert (await u1.subscribe(channel="portfolio-updates"))["type"] == "subscribed"
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.0
        price = 100.0
        while loop.time() < end:
            price = round(price + 0.01, 2)
            bridge.bridge.market.publish([Tick.of("AAPL", price), Tick.of("MSFT", 1.0)])
            await asyncio.sleep(0.002)
        final = 110.0
        bridge.bridge.market.publish([Tick.of("AAPL", final)])
        seen1 = await frames_for(u1, 0.6)
        seen2 = await frames_for(u2, 0.3)
    positions1 = [f for f in seen1 if f["channel"] == "position-updates"]
    portfolios = [f for f in seen1 if f["channel"] == "portfolio-updates"]
    assert positions1
    assert all(f["data"]["id"] == mine for f in positions1)
    assert all(f["user_id"] == "u1" for f in seen1)  # never u2's position
    # ~300 ticks in 1.1 s at one event per 0.1 s: a dozen events, not hundreds.
    assert len(positions1) <= 16, len(positions1)
    last = positions1[-1]["data"]
    assert (last["current_price"], last["unrealized_pnl"], last["unrealized_pnl_pct"]) == (
        110.0,
        100.0,
        10.0,
    )
    assert portfolios[-1]["data"]["total_value"] == 1000 + 10 * 110.0
    assert portfolios[-1]["data"]["positions_value"] == 1100.0
    short_last = [f for f in seen2 if f["channel"] == "position-updates"][-1]["data"]
    assert short_last["id"] == short
    assert short_last["unrealized_pnl"] == -50.0  # a short loses when the price rises
    assert short_last["unrealized_pnl_pct"] == -10.0
    # PNL_WRITE_BACK=0: the table still has no price.
    assert await db.fetchval("SELECT current_price FROM positions WHERE id = $1", mine) is None


async def test_write_back_updates_the_rows_periodically(
    start_bridge: Any, db: asyncpg.Connection
) -> None:
    bridge: RunningBridge = await start_bridge(pnl_interval=0.05, pnl_write_back=0.3)
    mine, _ = await open_positions(bridge, db)
    for price in (101.0, 102.0, 103.5):
        bridge.bridge.market.publish([Tick.of("AAPL", price)])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    row = None
    while loop.time() < deadline:
        row = await db.fetchrow(
            "SELECT current_price, unrealized_pnl FROM positions WHERE id = $1", mine
        )
        if row is not None and row["current_price"] is not None:
            break
        await asyncio.sleep(0.05)
    assert row is not None
    assert (float(row["current_price"]), float(row["unrealized_pnl"])) == (103.5, 35.0)
    # A closed position stops being marked.
    await db.execute("UPDATE positions SET status = 'closed' WHERE id = $1", mine)
    await until(lambda: mine not in bridge.bridge.pnl.positions, what="closed dropped")
