"""Domain events from challenge rows (supabase/demo/20261204100000_challenges.sql).

EQUITY_UPDATED per trade, CHALLENGE_STATUS_CHANGED on transitions only,
RISK_ALERT once per upward crossing of the drawdown alert level; all made in
the writer's transaction, on both capture paths, against a real bridge.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from realtime_bridge.testing import JsonSocket
from tests.conftest import BOTH_CAPTURES, BridgeFactory

pytestmark = BOTH_CAPTURES

TRADE = "INSERT INTO challenge_trades (challenge_id, user_id, symbol, pnl) VALUES ($1, $2, $3, $4)"


async def new_challenge(db: asyncpg.Connection, user: str = "u1", **columns: Any) -> int:
    names = ["user_id", *columns]
    marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    sql = f"INSERT INTO challenges ({', '.join(names)}) VALUES ({marks}) RETURNING id"
    return int(await db.fetchval(sql, user, *columns.values()))


async def frames(ws: JsonSocket, count: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(channel, event, data) of the next `count` changes, checking seqs increase."""
    got = await ws.changes(count)
    seqs = [f["seq"] for f in got]
    assert seqs == sorted(set(seqs)), seqs
    return [(f["channel"], f["event"], f["data"]) for f in got]


async def test_a_trade_emits_equity_then_the_row_changes_in_commit_order(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    cid = await new_challenge(db)
    async with bridge.websocket() as ws:
        assert (await ws.subscribe(channel=f"challenge_{cid}"))["type"] == "subscribed"
        assert (await ws.subscribe(table="public.challenge_trades"))["type"] == "subscribed"
        # since=0: the challenge's INSERT too, whether or not it was routed yet.
        reply = await ws.subscribe(channel="challenge-updates", since=0)
        assert reply["type"] == "subscribed"
        # Rolled back: neither the rows nor their events exist.
        abandoned = db.transaction()
        await abandoned.start()
        await db.execute(TRADE, cid, "u1", "EURUSD", -450)
        await abandoned.rollback()
        await db.execute(TRADE, cid, "u1", "EURUSD", 200)
        async with db.transaction():
            await db.execute(TRADE, cid, "u1", "GBPUSD", Decimal("-50.555"))
            await db.execute(TRADE, cid, "u1", "USDJPY", 10)
        inserted, *got = await frames(ws, 10)
        assert await ws.silent(0.3)
    assert inserted[:2] == ("challenge-updates", "challenge_update")
    assert inserted[2]["current_equity"] == 10000
    room = f"challenge_{cid}"
    assert [(c, e) for c, e, _ in got] == [
        ("public.challenge_trades", "row_change"),
        (room, "EQUITY_UPDATED"),
        ("challenge-updates", "challenge_update"),
        ("public.challenge_trades", "row_change"),
        (room, "EQUITY_UPDATED"),
        ("challenge-updates", "challenge_update"),
        ("public.challenge_trades", "row_change"),
        (room, "EQUITY_UPDATED"),
        ("challenge-updates", "challenge_update"),
    ]
    first, second, third = got[1][2], got[4][2], got[7][2]
    assert first == {
        "challenge_id": str(cid),
        "user_id": "u1",
        "previous_equity": "10000.00",
        "current_equity": "10200.00",
        "max_equity_ever": "10200.00",
        "daily_start_equity": "10000.00",
        "daily_max_equity": "10200.00",
        "daily_min_equity": "10000.00",
        "total_pnl": "200.00",
        "total_trades": 1,
        "last_trade_at": first["last_trade_at"],
        "trade_pnl": "200.00",
        "trade_symbol": "EURUSD",
        "executed_at": first["executed_at"],
    }
    assert (second["previous_equity"], second["current_equity"]) == ("10200.00", "10149.45")
    assert (second["trade_pnl"], second["total_trades"]) == ("-50.56", 2)
    assert (third["current_equity"], third["total_pnl"], third["total_trades"]) == (
        "10159.45",
        "159.45",
        3,
    )
    assert third["daily_min_equity"] == "10000.00"
    assert got[8][2]["current_equity"] == pytest.approx(10159.445)


async def test_status_changes_only_on_transitions_with_their_reason(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    cid = await new_challenge(db, profit_target_pct=5)
    async with bridge.websocket() as ws:
        await ws.subscribe(channel=f"challenge_{cid}")
        # Not a status change: nothing on the room.
        await db.execute("UPDATE challenges SET risk_alert_fraction = 0.9 WHERE id = $1", cid)
        await db.execute("UPDATE challenges SET status = status WHERE id = $1", cid)
        await db.execute(TRADE, cid, "u1", "EURUSD", 600)  # 10,600: past the 5% target
        got = await frames(ws, 2)
        assert [e for _, e, _ in got] == ["EQUITY_UPDATED", "CHALLENGE_STATUS_CHANGED"]
        changed = got[1][2]
        assert {k: changed[k] for k in ("old_status", "new_status", "reason")} == {
            "old_status": "ACTIVE",
            "new_status": "FUNDED",
            "reason": "PROFIT_TARGET",
        }
        assert changed["challenge_id"] == str(cid)
        # Trades of a funded challenge move its equity, its status stays.
        await db.execute(TRADE, cid, "u1", "EURUSD", -300)
        assert [e for _, e, _ in await frames(ws, 1)] == ["EQUITY_UPDATED"]
        assert await ws.silent(0.3)
        # A manual transition is one too.
        await db.execute(
            "UPDATE challenges SET status = 'FAILED', status_reason = 'RULE_BREACH' WHERE id = $1",
            cid,
        )
        (_, event, data), *_ = await frames(ws, 1)
        assert (event, data["old_status"], data["new_status"], data["reason"]) == (
            "CHALLENGE_STATUS_CHANGED",
            "FUNDED",
            "FAILED",
            "RULE_BREACH",
        )


async def test_risk_alert_once_per_crossing_of_the_configured_fraction(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    # Limit 5% of 10,000 a day, alert at 0.8 of it: a drawdown of 4.00%.
    cid = await new_challenge(db, risk_alert_fraction=Decimal("0.8"))
    async with bridge.websocket() as ws:
        await ws.subscribe(channel=f"challenge_{cid}")

        async def trade(pnl: str) -> list[str]:
            await db.execute(TRADE, cid, "u1", "EURUSD", Decimal(pnl))
            first = await frames(ws, 1)
            assert first[0][1] == "EQUITY_UPDATED"
            rest: list[str] = []
            try:
                while True:
                    frame = await ws.recv(0.4)
                    rest.append(frame["event"])
                    alerts.append(frame["data"])
            except TimeoutError:
                return rest

        alerts: list[dict[str, Any]] = []
        assert await trade("-399.99") == []  # 3.9999%: below
        assert await trade("-0.01") == ["RISK_ALERT"]  # exactly 4.00%: crossed
        assert await trade("-50") == []  # 4.50%: still above, no second alert
        assert await trade("+100") == []  # 3.50%: back below
        assert await trade("-60") == ["RISK_ALERT"]  # 4.10%: a new crossing
        assert await trade("-100") == ["CHALLENGE_STATUS_CHANGED"]  # 5.10%: failed, no alert
    first, second = alerts[0], alerts[1]
    assert first == {
        "challenge_id": str(cid),
        "user_id": "u1",
        "alert_type": "HIGH_DAILY_DRAWDOWN",
        "severity": "MEDIUM",
        "title": "High Daily Drawdown Warning",
        "message": "Daily drawdown at 4.00% (limit: 5.00%)",
        "current_equity": "9600.00",
        "daily_start_equity": "10000.00",
        "drawdown_percentage": "4.00",
        "threshold_percentage": "5.00",
        "alert_timestamp": first["alert_timestamp"],
    }
    assert (second["drawdown_percentage"], second["current_equity"]) == ("4.10", "9590.00")
    assert alerts[2]["reason"] == "DAILY_LOSS_LIMIT"


async def test_a_new_trading_day_starts_from_its_own_equity(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    cid = await new_challenge(db)
    await db.execute(
        "UPDATE challenges SET trading_day = current_date - 1, current_equity = 9550, "
        "daily_start_equity = 10000, daily_min_equity = 9550 WHERE id = $1",
        cid,
    )
    async with bridge.websocket() as ws:
        # Setting up yesterday crossed today's level: that alert first (since=0).
        await ws.subscribe(channel=f"challenge_{cid}", since=0)
        (_, setup, _), *_ = await frames(ws, 1)
        assert setup == "RISK_ALERT"
        # Yesterday's 4.5% drawdown is not today's: today starts at 9,550.
        await db.execute(TRADE, cid, "u1", "EURUSD", -10)
        (_, _, equity), *_ = await frames(ws, 1)
        assert (equity["daily_start_equity"], equity["daily_min_equity"]) == ("9550.00", "9540.00")
        assert await ws.silent(0.4)
        # Today's 4% of 9,550 = 382: crossed with -372 more.
        await db.execute(TRADE, cid, "u1", "EURUSD", -372)
        got = await frames(ws, 2)
        assert [e for _, e, _ in got] == ["EQUITY_UPDATED", "RISK_ALERT"]
        assert got[1][2]["drawdown_percentage"] == "4.00"


async def test_a_trade_for_someone_elses_challenge_is_refused_and_emits_nothing(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    cid = await new_challenge(db, user="u1")
    async with bridge.websocket() as ws:
        await ws.subscribe(channel=f"challenge_{cid}")
        with pytest.raises(asyncpg.RaiseError, match="does not own challenge"):
            await db.execute(TRADE, cid, "u2", "EURUSD", 100)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await db.execute(TRADE, cid + 1000, "u1", "EURUSD", 100)
        assert await ws.silent(0.4)


async def test_concurrent_trades_of_one_challenge_chain_their_equity(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str
) -> None:
    bridge = await start_bridge()
    cid = await new_challenge(db)
    other = await asyncpg.connect(dsn)
    try:
        async with bridge.websocket() as ws:
            await ws.subscribe(channel=f"challenge_{cid}")
            first = db.transaction()
            await first.start()
            await db.execute(TRADE, cid, "u1", "EURUSD", 100)  # holds the challenge's row
            # The second trade waits for the first to commit, then builds on its equity.
            second = asyncio.create_task(other.execute(TRADE, cid, "u1", "GBPUSD", 50))
            await asyncio.sleep(0.3)
            assert not second.done()
            await first.commit()
            await second
            got = await frames(ws, 2)
    finally:
        await other.close()
    chain = [(d["trade_symbol"], d["previous_equity"], d["current_equity"]) for _, _, d in got]
    assert chain == [("EURUSD", "10000.00", "10100.00"), ("GBPUSD", "10100.00", "10150.00")]
    assert await db.fetchval("SELECT current_equity FROM challenges WHERE id = $1", cid) == 10150
