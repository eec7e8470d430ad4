"""The generated broadcast helpers (realtime_bridge/broadcasts.py) against a real bridge.

Each helper publishes its event on its channel, typed by the channel's model:
inside the caller's transaction (or not at all), through the bridge in this
process, or over HTTP; a payload the model refuses, or an event the channel
does not carry, is refused with the fields at fault before anything is written.
"""

from __future__ import annotations

import inspect
import typing
from datetime import datetime
from pathlib import Path
from typing import Literal

import asyncpg
import pytest
from pydantic import BaseModel

import realtime_bridge
from realtime_bridge import (
    Plugin,
    broadcast,
    broadcast_bot_created,
    broadcast_bot_deleted,
    broadcast_bot_updated,
    broadcast_log_created,
    broadcast_order_filled,
    broadcast_order_update,
    broadcast_pnl_update,
)
from realtime_bridge.broadcasts import BotUpdatePayload, OrderUpdatePayload
from realtime_bridge.cli import main
from realtime_bridge.errors import ConfigurationError, PayloadInvalid
from realtime_bridge.plugins import discover
from realtime_bridge.typegen_python import helper_name, python_broadcasts
from tests.conftest import ROOT, BridgeFactory

BOT: BotUpdatePayload = {
    "id": 41,
    "user_id": "1",
    "ticker": "BTC/USDT",
    "exchange": "binance",
    "quantity": 0.5,
    "status": "ACTIVE",
}
ORDER: OrderUpdatePayload = {
    "id": 7,
    "user_id": "1",
    "bot_id": 41,
    "ticker": "BTC/USDT",
    "exchange": "binance",
    "side": "BUY",
    "quantity": 0.5,
    "status": "FILLED",
    "filled_quantity": 0.5,
}


async def test_each_helper_publishes_its_event_for_the_owner_only(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with (
        bridge.websocket(key=bridge.user_token("1")) as one,
        bridge.websocket(key=bridge.user_token("0001")) as zero_one,
    ):
        for channel in ("bot-updates", "order-updates", "activity-logs", "pnl-updates"):
            for ws in (one, zero_one):
                assert (await ws.subscribe(channel=channel))["type"] == "subscribed"
        tx = db.transaction()
        await tx.start()
        await broadcast_bot_created(BOT, conn=db)
        await tx.rollback()  # the business change did not happen: neither did its event

        async with db.transaction():
            await broadcast_bot_created(BOT, conn=db)
        await broadcast_bot_updated({**BOT, "status": "STOPPED"})
        await broadcast_order_update({**ORDER, "status": "OPEN", "filled_quantity": 0})
        await broadcast_order_filled(ORDER)
        await broadcast_log_created(
            {
                "id": 3,
                "user_id": "1",
                "bot_id": 41,
                "message": "filled",
                "timestamp": "2026-12-03T10:00:00Z",
            }
        )
        await broadcast_pnl_update(
            {"bot_id": 41, "user_id": "1", "ticker": "BTC/USDT", "exchange": "binance", "pnl": 2.5}
        )
        seq = await broadcast_bot_deleted(BOT, bridge_url=bridge.url, api_key=bridge.service_key)
        frames = await one.changes(7)
        assert [(f["channel"], f["event"]) for f in frames] == [
            ("bot-updates", "bot_created"),
            ("bot-updates", "bot_updated"),
            ("order-updates", "order_update"),
            ("order-updates", "order_filled"),
            ("activity-logs", "log_created"),
            ("pnl-updates", "pnl_update"),
            ("bot-updates", "bot_deleted"),
        ]
        assert {f["operation"] for f in frames} == {"BROADCAST"}
        assert frames[-1]["seq"] == seq
        assert frames[1]["data"]["status"] == "STOPPED"
        assert frames[3]["data"]["order_id"] == 7  # computed by the model, as for row changes
        assert frames[4]["data"]["botId"] == 41
        assert frames[4]["data"]["level"] == "INFO"  # the model's default
        assert frames[5]["data"]["pnl"] == 2.5
        assert await zero_one.silent(0.5)  # "0001" is not "1"


async def test_a_wrong_payload_or_event_is_refused_before_anything_is_written(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    wrong = {**ORDER, "status": "DONE", "quantity": "lots"}
    del wrong["bot_id"]
    with pytest.raises(PayloadInvalid, match="OrderUpdate") as caught:
        await broadcast_order_filled(wrong, conn=db)  # type: ignore[arg-type]
    fields = {tuple(e["loc"]) for e in caught.value.details["errors"]}
    assert fields == {("bot_id",), ("status",), ("quantity",)}
    with pytest.raises(PayloadInvalid, match=r"no event 'bot_exploded'.*bot_created"):
        await broadcast("bot-updates", "bot_exploded", dict(BOT), conn=db)
    with pytest.raises(PayloadInvalid, match="PnLUpdate"):
        await broadcast_pnl_update({"bot_id": 41, "pnl": 1}, conn=db)  # type: ignore[typeddict-item]
    # Over HTTP too, the payload is checked before it leaves.
    with pytest.raises(PayloadInvalid, match="OrderUpdate"):
        await broadcast_order_filled(
            wrong,  # type: ignore[arg-type]
            bridge_url=bridge.url,
            api_key=bridge.service_key,
        )
    assert await db.fetchval("SELECT count(*) FROM realtime_bridge.outbox") == 0


def test_the_committed_helpers_match_a_fresh_generation() -> None:
    from realtime_bridge import publish

    registry = discover([ROOT / "plugins"], use_entry_points=False)
    hand_written = [name for name in vars(publish) if name.startswith("broadcast_")]
    fresh = python_broadcasts(registry, skip=hand_written)
    committed = Path(realtime_bridge.broadcasts.__file__).read_text(encoding="utf-8")
    assert committed == fresh, "realtime_bridge/broadcasts.py is stale: run `make types`"


def test_every_plugin_event_has_a_helper_typed_by_its_model() -> None:
    from realtime_bridge import broadcasts, publish

    registry = discover([ROOT / "plugins"], use_entry_points=False)
    for plugin in registry:
        for event in plugin.events:
            name = helper_name(event)
            # Generated, or written by hand before generation existed.
            helper = getattr(broadcasts, name, None) or getattr(publish, name)
            assert inspect.iscoroutinefunction(helper), event
    for name in ("broadcast_bot_created", "broadcast_order_filled", "broadcast_pnl_update"):
        assert getattr(realtime_bridge, name) is getattr(broadcasts, name)
    hints = typing.get_type_hints(broadcast_order_filled)
    payload = hints["payload"]
    assert payload is OrderUpdatePayload
    assert payload.__required_keys__ >= {"id", "user_id", "bot_id", "side", "quantity"}
    assert "status" in payload.__optional_keys__  # the model has a default
    assert "order_id" not in payload.__annotations__  # computed: the server's, not the caller's


def test_the_types_command_writes_the_committed_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env from the caller's directory
    monkeypatch.setenv("PLUGIN_PATHS", str(ROOT / "plugins"))
    out = tmp_path / "broadcasts.py"
    main(["types", "--python", "--out", str(out)])
    committed = Path(realtime_bridge.broadcasts.__file__).read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed


class Signal(BaseModel):
    """A signal."""

    id: int
    side: Literal["BUY", "SELL"]
    at: datetime | None = None


def test_generation_names_helpers_by_event_and_refuses_one_name_for_two_channels() -> None:
    first = Plugin(channel="signals", event="signal-fired", model=Signal)
    text = python_broadcasts([first])
    assert "async def broadcast_signal_fired(\n    payload: SignalPayload," in text
    assert '    side: Literal["BUY", "SELL"]\n' in text
    assert "    at: NotRequired[datetime | str | None]\n" in text
    assert "broadcast_signal_fired" not in python_broadcasts(
        [first], skip=["broadcast_signal_fired"]
    )
    namespace: dict[str, object] = {}
    # The module it writes imports and runs (on its own: no inherited __future__).
    exec(compile(text, "generated", "exec", dont_inherit=True), namespace)
    payload_type = namespace["SignalPayload"]
    assert payload_type.__required_keys__ == {"id", "side"}  # type: ignore[attr-defined]
    twin = Plugin(channel="other-signals", event="signal-fired", model=Signal)
    with pytest.raises(ConfigurationError, match="both have event 'signal-fired'"):
        python_broadcasts([first, twin])
