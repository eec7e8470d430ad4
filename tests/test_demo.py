"""The scripted demo (realtime_bridge.demo): a full trade life cycle, watched as the demo user.

The cycles run against a real bridge on a test database (DemoScript driven
directly: DEMO=1 itself refuses any DATABASE_URL, which is checked too).
"""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from realtime_bridge.demo import DEMO_USER, STOP, SYMBOL, TARGET, DemoScript, scripted_price
from realtime_bridge.settings import Settings
from realtime_bridge.testing import JsonSocket
from tests.conftest import BridgeFactory


async def drain(ws: JsonSocket, until: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Changes up to and including the first for which `until(frame)` holds."""
    got: list[dict[str, Any]] = []
    while True:
        frame = await ws.recv(timeout)
        if frame["type"] == "subscribed":
            continue
        assert frame["type"] == "db_change", frame
        got.append(frame)
        if until(frame):
            return got


async def test_a_life_cycle_opens_moves_stops_out_and_updates_portfolio_and_challenge(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    running = await start_bridge(demo_tick_interval=0.05, pnl_interval=0.05)
    script = DemoScript(running.bridge)
    await script._ensure_portfolio()
    token = running.user_token(DEMO_USER)
    challenge = await script._active_challenge()
    async with running.websocket(token) as ws:
        # since=0 (a fresh database): the starting rows too, however soon they were routed.
        for channel in ("position-updates", "trade-updates", "portfolio-updates"):
            await ws.send({"type": "subscribe", "channel": channel, "since": 0})
        await ws.send({"type": "subscribe", "channel": f"challenge_{challenge}", "since": 0})
        await drain(ws, lambda f: f["channel"] == "portfolio-updates")  # the starting cash
        exit_ = await script.cycle(winner=False)
        frames = await drain(ws, lambda f: f["event"] == "RISK_ALERT")
    assert (exit_.reason, exit_.price) == ("stop_loss", STOP)
    assert exit_.trigger <= STOP

    positions = [f["data"] for f in frames if f["channel"] == "position-updates"]
    assert positions[0]["status"] == "open"
    assert positions[0]["current_price"] == 100
    live = [p["unrealized_pnl"] for p in positions if p["status"] == "open"]
    # Live P&L moved with the ticks, both ways, before the exit.
    assert len(set(live)) >= 3, live
    assert any(p > 0 for p in live)
    assert any(p < 0 for p in live)
    closed = positions[-1]
    assert (closed["status"], closed["current_price"], closed["unrealized_pnl"]) == (
        "closed",
        STOP,
        -450,
    )
    trades = [f["data"] for f in frames if f["channel"] == "trade-updates"]
    assert [(t["status"], t["pnl"]) for t in trades] == [("open", None), ("closed", -450)]
    portfolio = [f["data"] for f in frames if f["channel"] == "portfolio-updates"]
    assert portfolio[-1]["cash"] == 9550
    assert portfolio[-1]["total_value"] == 9550
    room = [(f["event"], f["data"]) for f in frames if f["channel"] == f"challenge_{challenge}"]
    assert [event for event, _ in room] == ["EQUITY_UPDATED", "RISK_ALERT"]
    assert room[0][1]["current_equity"] == "9550.00"
    assert room[1][1]["drawdown_percentage"] == "4.50"
    # The order of one commit: the close's rows, then the challenge's events.
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs)
    row = await db.fetchrow("SELECT * FROM exits WHERE position_id = $1", closed["id"])
    assert (row["reason"], row["status"], float(row["level"])) == ("stop_loss", "executed", STOP)


async def test_three_cycles_fund_nothing_fail_the_challenge_and_start_another(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    running = await start_bridge(demo_tick_interval=0.01)
    script = DemoScript(running.bridge)
    await script._ensure_portfolio()
    first = await script._active_challenge()
    assert (await script.cycle(winner=False)).reason == "stop_loss"
    assert (await script.cycle(winner=True)).reason == "take_profit"
    assert (await script.cycle(winner=False)).reason == "stop_loss"
    status = await db.fetchrow("SELECT status, status_reason FROM challenges WHERE id = $1", first)
    assert tuple(status) == ("FAILED", "DAILY_LOSS_LIMIT")
    assert await script._active_challenge() == first + 1
    cash = await db.fetchval(
        "SELECT cash FROM portfolio_snapshots WHERE user_id = $1 ORDER BY id DESC LIMIT 1",
        DEMO_USER,
    )
    assert cash == 10_000 - 450 + 300 - 450
    open_positions = await db.fetchval(
        "SELECT count(*) FROM positions WHERE symbol = $1 AND status = 'open'", SYMBOL
    )
    assert open_positions == 0


def test_the_scripted_paths_reach_their_levels_with_moves_both_ways() -> None:
    losing = [scripted_price(step, winner=False) for step in range(1, 40)]
    winning = [scripted_price(step, winner=True) for step in range(1, 40)]
    assert min(losing) <= STOP
    assert max(winning) >= TARGET
    # Before reaching its level each path goes up and down (P&L visibly moves).
    before_stop = losing[: next(i for i, p in enumerate(losing) if p <= STOP)]
    assert any(b > a for a, b in itertools.pairwise(before_stop))
    assert any(b < a for a, b in itertools.pairwise(before_stop))


@pytest.mark.parametrize(
    "where",
    [
        {"database_url": "postgresql://someone@db.example.com/prod"},
        {"supabase_url": "https://abcd.supabase.co"},
    ],
)
def test_demo_never_runs_against_a_users_database(where: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="runs only on the embedded Postgres"):
        Settings(_env_file=None, demo=True, **where)  # type: ignore[call-arg, arg-type]
    assert Settings(_env_file=None, demo=True).price_feed == "simulated"  # type: ignore[call-arg]
