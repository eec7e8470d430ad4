"""The example services in `examples/`, fed by a real bridge from real writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg

from examples.active_trade_supervisor import ActiveTradeSupervisor, load_plugins
from examples.active_trade_supervisor import supervise as supervise_trades
from examples.auto_entry_supervisor import AutoEntrySupervisor, EntryRules
from examples.auto_entry_supervisor import supervise as supervise_settings
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge_client import Client, connect
from tests.conftest import BridgeFactory
from tests.helpers import until

TRADE = (
    "INSERT INTO trades (user_id, symbol, signal_type, quantity, entry_price, status) "
    "VALUES ($1, $2, 'BUY', 10, 100, $3) RETURNING id"
)
SETTINGS = (
    "INSERT INTO auto_trade_settings (user_id, setting_name, settings) "
    "VALUES ($1, $2, $3::jsonb) RETURNING id"
)


@contextlib.asynccontextmanager
async def running(
    supervise: Callable[[Client, Any, asyncio.Event], Coroutine[Any, Any, None]],
    client: Client,
    supervisor: Any,
) -> AsyncIterator[None]:
    """Run an example's `supervise` loop until the block ends."""
    ready = asyncio.Event()
    task = asyncio.create_task(supervise(client, supervisor, ready))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_active_trade_supervisor_follows_trades_as_they_open_and_close(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    supervisor = ActiveTradeSupervisor()
    plugins = load_plugins()
    async with (
        connect(bridge.url, api_key=bridge.service_key, registry=plugins) as client,
        running(supervise_trades, client, supervisor),
    ):
        opened = await db.fetchval(TRADE, "u1", "AAPL", "open")
        later = await db.fetchval(TRADE, "u2", "MSFT", "pending")
        never = await db.fetchval(TRADE, "u2", "TSLA", "pending")
        await db.execute("UPDATE trades SET status = 'open' WHERE id = $1", later)
        await db.execute("UPDATE trades SET stop_loss = 95 WHERE id = $1", opened)
        await db.execute("UPDATE trades SET status = 'cancelled' WHERE id = $1", never)
        gone = await db.fetchval(TRADE, "u1", "NVDA", "open")
        await db.execute("DELETE FROM trades WHERE id = $1", gone)
        await db.execute(
            "UPDATE trades SET status = 'closed', exit_price = 110, pnl = 100 WHERE id = $1",
            opened,
        )
        await until(lambda: len(supervisor.actions) == 5)
        await asyncio.sleep(0.2)  # nothing else is coming
    assert supervisor.actions == [
        ("start", opened),
        ("start", later),
        ("start", gone),
        ("stop", gone),
        ("stop", opened),
    ]
    assert list(supervisor.monitored) == [later]
    trade = supervisor.monitored[later]
    assert isinstance(trade, plugins.by_channel["trade-updates"].model)
    assert type(trade).__name__ == "TradeUpdate"
    assert trade.model_dump(include={"symbol", "status", "user_id"}) == {
        "symbol": "MSFT",
        "status": "open",
        "user_id": "u2",
    }


async def test_active_trade_supervisor_keeps_the_latest_values_of_an_open_trade(
    start_bridge: BridgeFactory, db: asyncpg.Connection, registry: PluginRegistry
) -> None:
    bridge = await start_bridge()
    supervisor = ActiveTradeSupervisor()
    async with (
        connect(bridge.url, api_key=bridge.service_key, registry=registry) as client,
        running(supervise_trades, client, supervisor),
    ):
        trade_id = await db.fetchval(TRADE, "u1", "AAPL", "open")
        await db.execute(
            "UPDATE trades SET stop_loss = 95, take_profit = 120 WHERE id = $1", trade_id
        )
        await until(lambda: trade_id in supervisor.monitored)
        await until(lambda: supervisor.monitored[trade_id].take_profit == 120)
    assert supervisor.monitored[trade_id].stop_loss == 95
    assert supervisor.actions == [("start", trade_id)]


async def test_auto_entry_supervisor_applies_settings_as_they_change(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    supervisor = AutoEntrySupervisor()
    rules = {"enabled": True, "symbols": ["AAPL", "MSFT"], "max_positions": 2}
    async with (
        connect(bridge.url, api_key=bridge.service_key) as client,
        running(supervise_settings, client, supervisor),
    ):
        u1 = await db.fetchval(SETTINGS, "u1", "auto_entry_settings", json.dumps(rules))
        # Another setting of the same user: filtered out by the bridge.
        await db.execute(SETTINGS, "u1", "notifications", json.dumps({"enabled": False}))
        await db.execute(
            "UPDATE auto_trade_settings SET settings = settings || '{\"enabled\": false}' "
            "WHERE id = $1",
            u1,
        )
        # Touched, not changed: no action.
        await db.execute("UPDATE auto_trade_settings SET updated_at = now() WHERE id = $1", u1)
        u2 = await db.fetchval(
            SETTINGS, "u2", "auto_entry_settings", json.dumps({"enabled": True, "symbols": ["X"]})
        )
        await db.execute("DELETE FROM auto_trade_settings WHERE id = $1", u2)
        await until(lambda: len(supervisor.actions) == 4)
        await asyncio.sleep(0.2)  # nothing else is coming
    assert supervisor.actions == [("apply", "u1"), ("apply", "u1"), ("apply", "u2"), ("off", "u2")]
    assert supervisor.rules == {
        "u1": EntryRules(enabled=False, symbols=["AAPL", "MSFT"], max_positions=2)
    }


async def test_the_settings_table_channel_is_for_the_service_key_only(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket(key=bridge.user_token("u1")) as user:
        refused = await user.subscribe(table="public.auto_trade_settings")
    assert refused["code"] == "unauthorized"
    async with bridge.websocket() as service:
        accepted = await service.subscribe(table="public.auto_trade_settings")
    assert accepted["channel"] == "public.auto_trade_settings"
