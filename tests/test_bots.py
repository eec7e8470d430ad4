"""The bot channels (plugins/bots.py) against a real bridge, on both capture paths.

Each qualifying change is exactly one event, in commit order, seen only by
the row's owner: users "1" and "0001" are different people. Every stream
ends with a marker change, so an extra event anywhere shows up as a frame
out of place, not as a silence that came too early.
"""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import httpx
import pytest

from realtime_bridge.testing import JsonSocket, RunningBridge
from tests.conftest import BOTH_CAPTURES

ONE, ZERO_ONE = "1", "0001"


async def new_bot(db: asyncpg.Connection, user: str, ticker: str = "BTC/USDT", **extra: Any) -> int:
    columns = {"user_id": user, "ticker": ticker, "exchange": "binance", "quantity": 1, **extra}
    names = ", ".join(columns)
    places = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    bot_id: int = await db.fetchval(
        f"INSERT INTO bots ({names}) VALUES ({places}) RETURNING id", *columns.values()
    )
    return bot_id


async def new_order(db: asyncpg.Connection, user: str, bot_id: int, status: str = "PENDING") -> int:
    order_id: int = await db.fetchval(
        "INSERT INTO orders (user_id, bot_id, ticker, exchange, side, price, quantity, status)"
        " VALUES ($1, $2, 'BTC/USDT', 'binance', 'BUY', 100, 2, $3) RETURNING id",
        user,
        bot_id,
        status,
    )
    return order_id


async def subscribed(ws: JsonSocket, channel: str) -> None:
    reply = await ws.subscribe(channel=channel)
    assert reply["type"] == "subscribed", reply


def summary(frames: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [(f["event"], f["operation"], f["record_id"]) for f in frames]


def in_order(frames: list[dict[str, Any]]) -> None:
    seqs = [f["seq"] for f in frames]
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs


@BOTH_CAPTURES
async def test_bot_events_once_per_change_in_order_and_only_for_the_owner(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with (
        bridge.websocket(key=bridge.user_token(ONE)) as one,
        bridge.websocket(key=bridge.user_token(ZERO_ONE)) as zero_one,
        bridge.websocket(key=bridge.user_token(ONE)) as one_pnl,
    ):
        await subscribed(one, "bot-updates")
        await subscribed(zero_one, "bot-updates")
        await subscribed(one_pnl, "pnl-updates")

        bot = await new_bot(db, ONE)
        other = await new_bot(db, ZERO_ONE, ticker="ETH/USDT")
        await db.execute("UPDATE bots SET status = 'ACTIVE' WHERE id = $1", bot)
        await db.execute("UPDATE bots SET pnl = 12.5, total_trades = 1 WHERE id = $1", bot)
        # The same P&L written again (12.50 is 12.5): a bot update, not a P&L update.
        await db.execute("UPDATE bots SET pnl = 12.50, status = 'STOPPED' WHERE id = $1", bot)
        await db.execute("UPDATE bots SET pnl = -3 WHERE id = $1", bot)
        await db.execute("DELETE FROM bots WHERE id = $1", bot)
        marker = await new_bot(db, ONE, ticker="MARKER")
        other_marker = await new_bot(db, ZERO_ONE, ticker="MARKER")

        frames = await one.changes(7)
        assert summary(frames) == [
            ("bot_created", "INSERT", bot),
            ("bot_updated", "UPDATE", bot),
            ("bot_updated", "UPDATE", bot),
            ("bot_updated", "UPDATE", bot),
            ("bot_updated", "UPDATE", bot),
            ("bot_deleted", "DELETE", bot),
            ("bot_created", "INSERT", marker),
        ]
        in_order(frames)
        assert all(f["channel"] == "bot-updates" and f["user_id"] == ONE for f in frames)
        created, activated = frames[0], frames[1]
        assert created["data"]["ticker"] == "BTC/USDT"
        assert created["data"]["status"] == "STOPPED"
        assert activated["data"]["status"] == "ACTIVE"
        assert activated["old"]["status"] == "STOPPED"
        deleted = frames[5]
        assert deleted["data"] is None
        assert deleted["old"]["id"] == bot

        assert summary(await zero_one.changes(2)) == [
            ("bot_created", "INSERT", other),
            ("bot_created", "INSERT", other_marker),
        ]

        pnl = await one_pnl.changes(4)
        assert [(f["event"], f["record_id"], f["data"]["pnl"]) for f in pnl] == [
            ("pnl_update", bot, 0),
            ("pnl_update", bot, 12.5),
            ("pnl_update", bot, -3),
            ("pnl_update", marker, 0),
        ]
        in_order(pnl)
        assert pnl[1]["data"] == {
            "bot_id": bot,
            "user_id": ONE,
            "ticker": "BTC/USDT",
            "exchange": "binance",
            "pnl": 12.5,
            "total_trades": 1,
            "updated_at": pnl[1]["data"]["updated_at"],
        }
        assert isinstance(pnl[1]["data"]["updated_at"], str)
        assert await one.silent()
        assert await zero_one.silent()
        assert await one_pnl.silent()


@BOTH_CAPTURES
async def test_order_filled_once_when_the_status_becomes_filled(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    bot = await new_bot(db, ONE)
    other_bot = await new_bot(db, ZERO_ONE)
    async with (
        bridge.websocket(key=bridge.user_token(ONE)) as one,
        bridge.websocket(key=bridge.user_token(ZERO_ONE)) as zero_one,
    ):
        await subscribed(one, "order-updates")
        await subscribed(zero_one, "order-updates")

        order = await new_order(db, ONE, bot)
        for status, filled in (("OPEN", 0), ("PARTIALLY_FILLED", 1), ("FILLED", 2)):
            await db.execute(
                "UPDATE orders SET status = $2, filled_quantity = $3 WHERE id = $1",
                order,
                status,
                filled,
            )
        # Updates after the fill are order updates, never a second fill.
        await db.execute("UPDATE orders SET average_fill_price = 99.5 WHERE id = $1", order)
        await db.execute("UPDATE orders SET status = 'FILLED' WHERE id = $1", order)
        at_once = await new_order(db, ONE, bot, status="FILLED")
        cancelled = await new_order(db, ONE, bot)
        await db.execute("UPDATE orders SET status = 'CANCELLED' WHERE id = $1", cancelled)
        other = await new_order(db, ZERO_ONE, other_bot, status="FILLED")

        frames = await one.changes(9)
        assert summary(frames) == [
            ("order_update", "INSERT", order),
            ("order_update", "UPDATE", order),
            ("order_update", "UPDATE", order),
            ("order_filled", "UPDATE", order),
            ("order_update", "UPDATE", order),
            ("order_update", "UPDATE", order),
            ("order_filled", "INSERT", at_once),
            ("order_update", "INSERT", cancelled),
            ("order_update", "UPDATE", cancelled),
        ]
        in_order(frames)
        fill = frames[3]["data"]
        assert fill["order_id"] == fill["id"] == order
        assert (fill["bot_id"], fill["status"], fill["filled_quantity"]) == (bot, "FILLED", 2)
        assert frames[3]["old"]["status"] == "PARTIALLY_FILLED"
        assert frames[4]["data"]["average_fill_price"] == 99.5
        assert summary(await zero_one.changes(1)) == [("order_filled", "INSERT", other)]
        assert await one.silent()
        assert await zero_one.silent()


async def test_an_order_or_log_cannot_be_filed_under_another_users_bot(
    db: asyncpg.Connection,
) -> None:
    bot = await new_bot(db, ONE)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await new_order(db, ZERO_ONE, bot)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO activity_logs (user_id, bot_id, message) VALUES ($1, $2, 'x')",
            ZERO_ONE,
            bot,
        )


@BOTH_CAPTURES
async def test_log_created_for_new_lines_only_and_only_for_the_owner(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    bot = await new_bot(db, ONE)
    async with (
        bridge.websocket(key=bridge.user_token(ONE)) as one,
        bridge.websocket(key=bridge.user_token(ZERO_ONE)) as zero_one,
    ):
        await subscribed(one, "activity-logs")
        await subscribed(zero_one, "activity-logs")
        insert = "INSERT INTO activity_logs (user_id, bot_id, level, message, extra) VALUES ($1, $2, $3, $4, $5::jsonb) RETURNING id"  # noqa: E501
        deep = '{"a": ' * 50 + "1" + "}" * 50
        first = await db.fetchval(insert, ONE, bot, "SUCCESS", "Bot started", deep)
        await db.execute("UPDATE activity_logs SET message = 'edited' WHERE id = $1", first)
        account = await db.fetchval(insert, ONE, None, "WARNING", "Low balance", None)
        await db.execute("DELETE FROM activity_logs WHERE id = $1", account)
        theirs = await db.fetchval(insert, ZERO_ONE, None, "ERROR", "Not yours", None)
        huge = "stack frame\n" * 30_000  # 360 KB in one line
        big = await db.fetchval(insert, ONE, bot, "ERROR", huge, None)
        marker = await db.fetchval(insert, ONE, None, "INFO", "marker", None)

        frames = await one.changes(4)
        assert summary(frames) == [
            ("log_created", "INSERT", first),
            ("log_created", "INSERT", account),
            ("log_created", "INSERT", big),
            ("log_created", "INSERT", marker),
        ]
        assert frames[2]["data"]["message"] == huge
        in_order(frames)
        line = frames[0]["data"]
        assert (line["level"], line["message"], line["bot_id"], line["botId"]) == (
            "SUCCESS",
            "Bot started",
            bot,
            bot,
        )
        nested = line["extra"]
        for _ in range(49):
            nested = nested["a"]
        assert nested == {"a": 1}
        assert isinstance(line["timestamp"], str)
        assert frames[1]["data"]["botId"] is None
        assert summary(await zero_one.changes(1)) == [("log_created", "INSERT", theirs)]
        assert await one.silent()
        assert await zero_one.silent()


@BOTH_CAPTURES
async def test_snapshots_of_the_bot_channels_are_the_owners_rows(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    mine = await new_bot(db, ONE, pnl=7)
    await new_bot(db, ZERO_ONE)
    headers = {"Authorization": f"Bearer {bridge.user_token(ONE)}"}
    async with httpx.AsyncClient(base_url=bridge.url, headers=headers) as http:
        bots = (await http.get("/api/channels/bot-updates/snapshot")).json()
        pnl = (await http.get("/api/channels/pnl-updates/snapshot")).json()
    assert [row["id"] for row in bots["records"]] == [mine], bots
    assert [(row["bot_id"], row["pnl"]) for row in pnl["records"]] == [(mine, 7)], pnl


@BOTH_CAPTURES
async def test_a_bot_that_changes_hands_leaves_one_owner_and_reaches_the_other(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with (
        bridge.websocket(key=bridge.user_token(ONE)) as one,
        bridge.websocket(key=bridge.user_token(ZERO_ONE)) as zero_one,
    ):
        for ws in (one, zero_one):
            await subscribed(ws, "bot-updates")
            await subscribed(ws, "pnl-updates")
        bot = await new_bot(db, ONE, pnl=4)
        await db.execute("UPDATE bots SET user_id = $2 WHERE id = $1", bot, ZERO_ONE)
        await db.execute("UPDATE bots SET user_id = $2 WHERE id = $1", bot, ONE)

        def seen(frames: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
            return [(f["channel"], f["event"], f["operation"]) for f in frames]

        # The old owner sees the bot leave (a DELETE), the new one arrive (an INSERT).
        assert seen(await one.changes(6)) == [
            ("bot-updates", "bot_created", "INSERT"),
            ("pnl-updates", "pnl_update", "INSERT"),
            ("bot-updates", "bot_updated", "DELETE"),
            ("pnl-updates", "pnl_update", "DELETE"),
            ("bot-updates", "bot_updated", "INSERT"),
            ("pnl-updates", "pnl_update", "INSERT"),
        ]
        arrived = await zero_one.changes(4)
        assert seen(arrived) == [
            ("bot-updates", "bot_updated", "INSERT"),
            ("pnl-updates", "pnl_update", "INSERT"),
            ("bot-updates", "bot_updated", "DELETE"),
            ("pnl-updates", "pnl_update", "DELETE"),
        ]
        assert arrived[1]["data"] == {**arrived[1]["data"], "bot_id": bot, "pnl": 4}
        assert await one.silent()
        assert await zero_one.silent()
