"""Plugins: discovery, typing, failure isolation, and tables without a plugin."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest
from pydantic import BaseModel

from realtime_bridge import Change, Plugin
from realtime_bridge.change import Operation, Row
from realtime_bridge.errors import ConfigurationError, PayloadInvalid, UnknownChannel
from realtime_bridge.plugins import PluginRegistry, _plugins_of, discover
from tests.conftest import ROOT, BridgeFactory

FRAGILE = textwrap.dedent(
    """
    from pydantic import BaseModel
    from realtime_bridge import Plugin

    class Tick(BaseModel):
        id: int
        symbol: str

    def explode_on_boom(row):
        if row["symbol"] == "BOOM":
            raise ValueError("cannot type this row")
        return row

    PLUGINS = [
        Plugin(
            channel="fragile-positions",
            event="tick",
            model=Tick,
            tables=("positions",),
            transform=explode_on_boom,
        )
    ]
    """
)


class Payload(BaseModel):
    id: int


def test_bundled_trading_plugins_are_discovered(registry: PluginRegistry) -> None:
    channels = {p.channel: p for p in registry}
    assert {"position-updates", "trade-updates", "portfolio-updates"} <= set(channels)
    assert {"bot-updates", "order-updates", "activity-logs", "pnl-updates"} <= set(channels)
    assert [p.channel for p in registry.by_table["public.bots"]] == ["bot-updates", "pnl-updates"]
    position = channels["position-updates"]
    assert position.tables == ("public.positions",)
    assert position.event == "position_update"
    assert position.model.__name__ == "PositionUpdate"
    assert position.owner_column == "user_id"
    assert not position.public
    assert {"market_value", "unrealized_pnl_pct"} <= position.columns()
    assert registry.by_table["public.trades"][0].channel == "trade-updates"


def test_bundled_challenge_room_and_channel_are_discovered(registry: PluginRegistry) -> None:
    assert registry.by_channel["challenge-updates"].tables == ("public.challenges",)
    room, room_id = registry.room_for("challenge_42") or (None, None)
    assert room is not None
    assert room.name == "challenge_{challenge_id}"
    assert room_id == "42"
    assert set(room.events) == {"EQUITY_UPDATED", "CHALLENGE_STATUS_CHANGED", "RISK_ALERT"}
    assert registry.room_for("challenge-updates") is None  # the plugin's channel, not a room
    assert registry.room_for("position-updates") is None


def test_computed_fields_are_derived_on_the_server(registry: PluginRegistry) -> None:
    plugin = registry.by_channel["position-updates"]
    short = plugin.payload(
        {
            "id": 1,
            "user_id": "u",
            "symbol": "X",
            "quantity": -2,
            "entry_price": 100,
            "current_price": 90,
        }
    )
    assert short["market_value"] == -180.0
    assert short["unrealized_pnl_pct"] == 10.0  # a short gains when the price falls
    unpriced = plugin.payload(
        {"id": 1, "user_id": "u", "symbol": "X", "quantity": 1, "entry_price": 1}
    )
    assert unpriced["market_value"] is None


def test_broadcast_payloads_are_validated_by_the_channel_model(registry: PluginRegistry) -> None:
    with pytest.raises(PayloadInvalid) as caught:
        registry.validate_broadcast("trade-updates", None, {"id": 1, "signal_type": "HOLD"})
    fields = {tuple(e["loc"]) for e in caught.value.details["errors"]}
    assert ("signal_type",) in fields
    with pytest.raises(UnknownChannel):
        registry.validate_broadcast("nope", None, {})
    event, data = registry.validate_broadcast(
        "portfolio-updates",
        None,
        {"id": 1, "user_id": "u", "total_value": 10, "cash": 5, "positions_value": 5},
    )
    assert event == "portfolio_update"
    assert data["total_value"] == 10.0


def test_plugin_files_and_entry_point_shapes(tmp_path: Path) -> None:
    (tmp_path / "fragile.py").write_text(FRAGILE)
    (tmp_path / "_helper.py").write_text("raise RuntimeError('private files are not plugins')")
    registry = discover([tmp_path, tmp_path / "missing"], use_entry_points=False)
    assert list(registry.by_channel) == ["fragile-positions"]
    assert registry.by_table["public.positions"][0].event == "tick"

    one = Plugin(channel="one", event="e", model=Payload)
    assert _plugins_of(one, "entry point") == [one]
    assert _plugins_of([one], "entry point") == [one]
    assert _plugins_of(SimpleNamespace(PLUGINS=lambda: [one]), "module") == [one]
    with pytest.raises(ConfigurationError, match="no PLUGINS"):
        _plugins_of(SimpleNamespace(), "module without plugins")


def test_bad_plugins_fail_at_start_up_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="two plugins declare channel 'one'"):
        PluginRegistry(
            [
                Plugin(channel="one", event="e", model=Payload),
                Plugin(channel="one", event="f", model=Payload),
            ]
        )
    with pytest.raises(ConfigurationError, match="without dots"):
        Plugin(channel="public.positions", event="e", model=Payload)
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigurationError, match=r"broken\.py failed to import"):
        discover([tmp_path], use_entry_points=False)


async def test_a_plugin_failing_on_one_row_is_counted_and_disturbs_nothing_else(
    start_bridge: BridgeFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    (tmp_path / "fragile.py").write_text(FRAGILE)
    bridge = await start_bridge(plugin_paths=[ROOT / "plugins", tmp_path])
    async with bridge.websocket() as ws:
        fragile = await ws.subscribe(channel="fragile-positions")
        typed = await ws.subscribe(channel="position-updates")
        for symbol in ("OK1", "BOOM", "OK2"):
            await db.execute(
                "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
                "VALUES ('u', $1, 1, 1)",
                symbol,
            )
        frames = await ws.changes(5)
        assert await ws.silent()
    by_sub: dict[str, list[str]] = {}
    for frame in frames:
        by_sub.setdefault(frame["subscription_id"], []).append(frame["data"]["symbol"])
    assert by_sub[fragile["subscription_id"]] == ["OK1", "OK2"]
    assert by_sub[typed["subscription_id"]] == ["OK1", "BOOM", "OK2"]
    assert bridge.bridge.stats()["plugin_errors"] == {"fragile-positions": 1}


async def test_a_tracked_table_without_a_plugin_is_a_raw_table_channel(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute(
        "CREATE TABLE public.auto_settings_demo "
        "(id int PRIMARY KEY, setting_name text, value jsonb)"
    )
    await db.execute("SELECT realtime_bridge.track('public.auto_settings_demo')")
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(
            table="auto_settings_demo", filters={"setting_name": "auto_entry_settings"}
        )
        assert reply["channel"] == "public.auto_settings_demo"
        await db.execute(
            "INSERT INTO auto_settings_demo VALUES (1, 'auto_entry_settings', '{\"on\": true}'), "
            "(2, 'other', '{}')"
        )
        (event,) = await ws.changes(1)
        assert await ws.silent()
    assert event["data"] == {"id": 1, "setting_name": "auto_entry_settings", "value": {"on": True}}
    assert event["event"] == "row_change"
    assert event["table"] == "public.auto_settings_demo"


def _change(operation: Operation, record: Row | None, old: Row | None) -> Change:
    return Change(1, operation, "public", "things", record, old, datetime.now(UTC))


def test_a_plugin_can_make_a_change_one_of_several_events_or_none() -> None:
    def event_of(change: Change) -> str | None:
        record = change.record or {}
        return {"INSERT": "made", "DELETE": None}.get(change.operation, record.get("name"))

    plugin = Plugin(
        channel="things",
        event="made",
        events=("made", "renamed"),
        event_of=event_of,
        model=Payload,
        tables=("things",),
        owner_column=None,
    )
    registry = PluginRegistry([plugin])
    row = {"id": 1}
    assert registry.event_for(_change("INSERT", row, None), "things").event == "made"  # type: ignore[union-attr]
    assert registry.event_for(_change("DELETE", None, row), "things") is None
    renamed = _change("UPDATE", {**row, "name": "renamed"}, row)
    assert [e.event for e in registry.events_for(renamed)] == ["row_change", "renamed"]
    # An event the plugin did not declare is its bug: counted, skipped, nothing else hurt.
    wrong = _change("UPDATE", {**row, "name": "exploded"}, row)
    assert [e.event for e in registry.events_for(wrong)] == ["row_change"]
    assert registry.errors["things"] == 1
    # Broadcasts on a channel with declared events carry one of them.
    assert registry.validate_broadcast("things", "renamed", row)[0] == "renamed"
    with pytest.raises(PayloadInvalid, match="no event 'exploded'"):
        registry.validate_broadcast("things", "exploded", row)
    with pytest.raises(ConfigurationError, match="default event 'gone'"):
        Plugin(channel="x", event="gone", events=("made",), model=Payload)
    assert Plugin(channel="y", event="only", model=Payload).events == ("only",)
