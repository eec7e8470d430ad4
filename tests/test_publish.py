"""Publishing from backend code: the event exists if and only if the caller's change commits."""

from __future__ import annotations

import asyncpg
import pytest

import realtime_bridge.bridge as bridge_module
import realtime_bridge.publish as publish_module
from realtime_bridge import (
    broadcast,
    broadcast_portfolio_update,
    broadcast_position_update,
    broadcast_trade_update,
)
from realtime_bridge.errors import PayloadInvalid, PublishError
from tests.conftest import BridgeFactory

POSITION = {
    "user_id": "u1",
    "symbol": "AAPL",
    "quantity": 3,
    "entry_price": 10,
    "current_price": 12,
}


async def test_inside_the_callers_transaction(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        tx = db.transaction()
        await tx.start()
        await broadcast_position_update(1, POSITION, conn=db)
        await tx.rollback()
        assert await ws.silent(0.5)

        async with db.transaction():
            await broadcast_position_update(2, POSITION, conn=db)
        (event,) = await ws.changes(1)
    assert event["operation"] == "BROADCAST"
    assert event["event"] == "position_update"
    assert event["record_id"] == 2
    assert event["user_id"] == "u1"
    assert event["data"]["market_value"] == 36.0


async def test_through_the_bridge_running_in_this_process(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="trade-updates", filters={"user_id": "u9"})
        await ws.subscribe(channel="portfolio-updates")
        await broadcast_trade_update(
            7,
            {
                "user_id": "u9",
                "symbol": "X",
                "signal_type": "SELL",
                "quantity": 1,
                "entry_price": 5,
            },
        )
        await broadcast_portfolio_update(
            "u9", {"id": 3, "total_value": 100, "cash": 60, "positions_value": 40}
        )
        frames = await ws.changes(2)
    assert [f["event"] for f in frames] == ["trade_update", "portfolio_update"]
    assert frames[0]["data"]["signal_type"] == "SELL"
    assert frames[1]["data"]["user_id"] == "u9"
    assert frames[0]["seq"] < frames[1]["seq"]


async def test_invalid_payloads_are_refused_before_anything_is_written(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await start_bridge()
    with pytest.raises(PayloadInvalid, match="PositionUpdate"):
        await broadcast("position-updates", None, {"id": 1}, conn=db)
    assert await db.fetchval("SELECT count(*) FROM realtime_bridge.outbox") == 0


async def test_over_http_to_a_bridge_with_its_service_key(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        seq = await broadcast(
            "position-updates",
            None,
            {"id": 4, **POSITION},
            bridge_url=bridge.url,
            api_key=bridge.service_key,
        )
        (event,) = await ws.changes(1)
    assert event["seq"] == seq
    assert event["record_id"] == 4
    with pytest.raises(PublishError, match="403"):
        await broadcast(
            "position-updates", None, {"id": 5, **POSITION}, bridge_url=bridge.url,
            api_key=bridge.anon_key,
        )  # fmt: skip
    with pytest.raises(PublishError, match="could not reach"):
        await broadcast(
            "position-updates", None, {"id": 5, **POSITION}, bridge_url="http://127.0.0.1:9",
            api_key=bridge.service_key,
        )  # fmt: skip


async def test_a_service_without_database_uses_realtime_bridge_url(
    start_bridge: BridgeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await start_bridge()
    # As in another process: no bridge here, no DATABASE_URL, only the bridge's URL and key.
    monkeypatch.setattr(bridge_module, "_current", None)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("REALTIME_BRIDGE_URL", bridge.url)
    monkeypatch.setenv("REALTIME_BRIDGE_KEY", bridge.service_key)
    publish_module._standalone_registry.cache_clear()
    try:
        async with bridge.websocket() as ws:
            await ws.subscribe(channel="trade-updates")
            await broadcast_trade_update(
                9,
                {
                    "user_id": "u1",
                    "symbol": "X",
                    "signal_type": "BUY",
                    "quantity": 1,
                    "entry_price": 2,
                },
            )
            (event,) = await ws.changes(1)
        assert event["record_id"] == 9
        with pytest.raises(PayloadInvalid):
            await broadcast_trade_update(9, {"user_id": "u1"})
    finally:
        publish_module._standalone_registry.cache_clear()
