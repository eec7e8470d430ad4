"""Types from plugins: the committed TypeScript is current, and the converter is right."""

from __future__ import annotations

import difflib
import enum
import json
from datetime import datetime
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, computed_field

from realtime_bridge import Plugin
from realtime_bridge.cli import main
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.typegen import channel_json_schema, ts_type, typescript
from tests.conftest import ROOT

GENERATED = ROOT / "clients" / "js" / "src" / "generated" / "channels.ts"


def run_types(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *flags: str) -> str:
    """Run `realtime-bridge types` as `make types` does, on the repository's plugins."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the caller's directory
    monkeypatch.setenv("PLUGIN_PATHS", str(ROOT / "plugins"))
    out = tmp_path / "out" / "generated.txt"
    main(["types", *flags, "--out", str(out)])
    return out.read_text(encoding="utf-8")


def test_committed_typescript_matches_a_fresh_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = run_types(tmp_path, monkeypatch, "--typescript")
    committed = GENERATED.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            "committed",
            "regenerated",
        )
    )
    assert not diff, f"{GENERATED} is stale; run `make types`:\n{diff}"


def test_generated_typescript_declares_every_channel(registry: PluginRegistry) -> None:
    text = typescript(registry)
    assert text == GENERATED.read_text(encoding="utf-8")
    assert "export interface PositionUpdate {" in text
    assert '  "position-updates": PositionUpdate;' in text
    assert '  "trade-updates": "trade_update";' in text
    assert (
        'export type ChannelName = "activity-logs" | "bot-updates" | "challenge-updates" | '
        '"order-updates" | "pnl-updates" | "portfolio-updates" | "position-updates" | '
        '"trade-updates";'
    ) in text
    # A channel with several events: each is named, in the plugin's order.
    assert '  "bot-updates": "bot_created" | "bot_updated" | "bot_deleted";' in text
    assert '  "order-updates": "order_update" | "order_filled";' in text
    assert 'events: ["order_update", "order_filled"] },' in text
    # Rooms: each event's payload, by prefix.
    assert "  challenge_: {\n    CHALLENGE_STATUS_CHANGED: ChallengeStatusChanged;" in text
    assert "export interface RiskAlert {" in text
    assert '  severity: "MEDIUM" | "HIGH";' in text
    # Computed fields are part of what clients receive, and cannot be set by them.
    assert "  readonly market_value: number | null;" in text
    assert "  readonly unrealized_pnl_pct: number | null;" in text
    # Literal → string-literal union; datetime → string; defaults are always sent.
    assert '  status: "open" | "closed";' in text
    assert "  opened_at: string | null;" in text


def test_json_schema_command_writes_the_serialization_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = json.loads(run_types(tmp_path, monkeypatch, "--json-schema"))
    channels = document["properties"]
    assert set(channels) == {
        "activity-logs",
        "bot-updates",
        "challenge-updates",
        "order-updates",
        "pnl-updates",
        "portfolio-updates",
        "position-updates",
        "trade-updates",
    }
    assert channels["bot-updates"]["x-events"] == ["bot_created", "bot_updated", "bot_deleted"]
    assert channels["position-updates"]["x-events"] == ["position_update"]
    room = document["x-rooms"]["challenge_"]
    assert room["x-channel"] == "challenge_{challenge_id}"
    assert room["events"]["EQUITY_UPDATED"] == {"$ref": "#/$defs/EquityUpdated"}
    position = channels["position-updates"]
    assert position["$ref"] == "#/$defs/PositionUpdate"
    assert position["x-event"] == "position_update"
    assert position["x-owner-column"] == "user_id"
    model = document["$defs"]["PositionUpdate"]
    assert model["properties"]["market_value"]["readOnly"] is True
    assert model["properties"]["opened_at"]["anyOf"][0] == {
        "format": "date-time",
        "type": "string",
    }


BOT_ROW = {"id": 1, "user_id": "u1", "ticker": "X", "exchange": "e", "quantity": 1, "pnl": 0}


def test_schema_marks_required_exactly_the_keys_a_client_receives(
    registry: PluginRegistry,
) -> None:
    rows = {
        "position-updates": {
            "id": 1,
            "user_id": "u1",
            "symbol": "AAPL",
            "quantity": 2,
            "entry_price": 10,
        },
        "trade-updates": {
            "id": 1,
            "user_id": "u1",
            "symbol": "AAPL",
            "signal_type": "BUY",
            "quantity": 2,
            "entry_price": 10,
        },
        "portfolio-updates": {
            "id": 1,
            "user_id": "u1",
            "total_value": 5,
            "cash": 3,
            "positions_value": 2,
        },
        "challenge-updates": {
            "id": 1,
            "user_id": "u1",
            "status": "ACTIVE",
            "initial_balance": 10000,
            "current_equity": 10000,
            "max_equity_ever": 10000,
            "daily_start_equity": 10000,
            "daily_max_equity": 10000,
            "daily_min_equity": 10000,
            "total_pnl": 0,
            "total_trades": 0,
            "max_daily_loss_pct": 5,
            "risk_alert_fraction": 0.8,
        },
        "bot-updates": BOT_ROW,
        "pnl-updates": BOT_ROW,
        "order-updates": {
            "id": 1,
            "user_id": "u1",
            "bot_id": 1,
            "ticker": "X",
            "exchange": "e",
            "side": "BUY",
            "quantity": 1,
        },
        "activity-logs": {
            "id": 1,
            "user_id": "u1",
            "message": "m",
            "timestamp": "2026-12-03T00:00:00Z",
        },
    }
    document = channel_json_schema(registry)
    for plugin in registry:
        model = document["$defs"][plugin.model.__name__]
        payload = plugin.payload(rows[plugin.channel])
        assert set(model["required"]) == set(payload) == set(model["properties"])


def test_cli_needs_a_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["types"])
    assert exit_info.value.code == 2
    assert "--typescript" in capsys.readouterr().err


# The converter, one shape at a time -------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "string"),
        ({"type": "string", "format": "date-time"}, "string"),
        ({"type": "integer"}, "number"),
        ({"type": "number"}, "number"),
        ({"type": "boolean"}, "boolean"),
        ({"type": "null"}, "null"),
        ({}, "unknown"),
        (True, "unknown"),
        (False, "never"),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, "number | null"),
        ({"anyOf": [{"type": "integer"}, {"type": "number"}]}, "number"),
        ({"anyOf": [{"type": "string"}, {}]}, "unknown"),
        ({"type": ["string", "null"]}, "string | null"),
        ({"enum": ["a", "b"], "type": "string"}, '"a" | "b"'),
        ({"enum": [1, 2, None]}, "1 | 2 | null"),
        ({"const": "buy"}, '"buy"'),
        ({"const": True}, "true"),
        ({"$ref": "#/$defs/Side"}, "Side"),
        ({"$ref": "#/$defs/mod__Side"}, "mod__Side"),
        ({"$ref": "https://elsewhere/x"}, "unknown"),
        ({"allOf": [{"$ref": "#/$defs/Side"}]}, "Side"),
        ({"allOf": [{"$ref": "#/$defs/A"}, {"$ref": "#/$defs/B"}]}, "A & B"),
        ({"type": "array", "items": {"type": "integer"}}, "number[]"),
        ({"type": "array"}, "unknown[]"),
        (
            {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
            "(number | null)[]",
        ),
        (
            {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "string"}],
                "maxItems": 2,
                "minItems": 2,
            },
            "[number, string]",
        ),
        (
            {"type": "array", "prefixItems": [{"type": "integer"}], "items": {"type": "string"}},
            "[number, ...string[]]",
        ),
        ({"type": "object"}, "Record<string, unknown>"),
        (
            {"type": "object", "additionalProperties": {"type": "integer"}},
            "Record<string, number>",
        ),
        (
            {"type": "object", "patternProperties": {"^x": {"type": "boolean"}}},
            "Record<string, boolean>",
        ),
        ({"type": "object", "additionalProperties": False}, "Record<string, never>"),
        ({"not": {"type": "string"}}, "unknown"),
    ],
)
def test_ts_type(schema: object, expected: str) -> None:
    assert ts_type(schema) == expected


def test_inline_objects_mark_optional_readonly_and_quoted_keys() -> None:
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "note": {"type": "string", "description": "free text */ here"},
            "total": {"type": "number", "readOnly": True},
            "x-y": {"type": "boolean"},
        },
        "required": ["id", "total", "x-y"],
    }
    assert ts_type(schema) == (
        "{\n"
        "  id: number;\n"
        "  /** free text *\\/ here */\n"
        "  note?: string;\n"
        "  readonly total: number;\n"
        '  "x-y": boolean;\n'
        "}"
    )


class Side(enum.Enum):
    BUY = "buy"
    SELL = "sell"


class Leg(BaseModel):
    price: float
    size: int = 1


class Order(BaseModel):
    """An order with legs."""

    model_config = ConfigDict(extra="allow")

    id: int
    side: Side
    kind: Literal["limit", "market"]
    legs: list[Leg]
    tags: dict[str, int] = {}
    pair: tuple[int, str] | None = None
    placed_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def notional(self) -> float:
        return sum(leg.price * leg.size for leg in self.legs)


def test_models_with_enums_nested_models_and_extras() -> None:
    plugin = Plugin(channel="orders", event="order", model=Order, public=True, owner_column=None)
    text = typescript([plugin])
    assert 'export type Side = "buy" | "sell";' in text
    assert "export interface Leg {\n  price: number;\n  size: number;\n}" in text
    assert "/** An order with legs. */\nexport interface Order {" in text
    for line in (
        "  id: number;",
        "  side: Side;",
        '  kind: "limit" | "market";',
        "  legs: Leg[];",
        "  tags: Record<string, number>;",
        "  pair: [number, string] | null;",
        "  placed_at: string | null;",
        "  readonly notional: number;",
        "  [key: string]: unknown;",
    ):
        assert line in text
    assert '  orders: { event: "order", ownerColumn: null, public: true },' in text
    assert 'export type ChannelName = "orders";' in text


def test_no_plugins_still_gives_a_valid_module() -> None:
    text = typescript([])
    assert "export interface ChannelPayloads {}" in text
    assert "export type ChannelName = never;" in text
    assert text.endswith("} as const;\n")
