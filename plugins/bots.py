"""The bundled bot channels: bots, their orders, their activity log and P&L.

Ordinary plugins over the demo tables `bots`, `orders` and `activity_logs`
(supabase/demo/20261203140500_bots_orders_activity_logs.sql), each scoped
to the row's `user_id`. Unlike the trading channels, a change here is not
always the same event, so each plugin says which event a change is
(`event_of`), or that it is none:

* `bot-updates`: `bot_created` / `bot_updated` / `bot_deleted` by operation;
* `order-updates`: `order_filled` for the one change in which an order's
  status becomes FILLED (inserted filled, or updated from another status),
  `order_update` for every other change, so the channel alone keeps an
  order book complete and a fill is announced exactly once;
* `activity-logs`: `log_created` for each new line (the log is append-only:
  edits and deletes are not events);
* `pnl-updates`: `pnl_update` when a bot is created, its `pnl` changes or
  it changes hands, nothing for updates that leave it alone.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, computed_field

from realtime_bridge import Change, Plugin
from realtime_bridge.change import Row

BotStatus = Literal["ACTIVE", "STOPPED", "ERROR"]
Side = Literal["BUY", "SELL"]
OrderStatus = Literal["PENDING", "OPEN", "PARTIALLY_FILLED", "FILLED", "CANCELLED", "REJECTED"]
LogLevel = Literal["DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"]
FILLED = "FILLED"


class BotUpdate(BaseModel):
    """A trading bot: what it trades, how, its state and its running P&L."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    name: str | None = None
    ticker: str
    exchange: str
    side: Side = "BUY"
    quantity: float
    buy_price: float | None = None
    sell_price: float | None = None
    trailing_percent: float | None = None
    infinite_loop: bool = False
    status: BotStatus = "STOPPED"
    pnl: float = 0
    total_trades: int = 0
    last_fill_side: Side | None = None
    last_fill_price: float | None = None
    last_fill_time: datetime | None = None
    config: dict[str, Any] = {}
    created_at: datetime | None = None
    updated_at: datetime | None = None


class OrderUpdate(BaseModel):
    """An order of a bot, from placement to fill or cancellation."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    bot_id: int
    exchange_order_id: str | None = None
    ticker: str
    exchange: str
    side: Side
    order_type: Literal["LIMIT", "MARKET"] = "LIMIT"
    price: float | None = None
    quantity: float
    filled_quantity: float = 0
    average_fill_price: float | None = None
    status: OrderStatus = "PENDING"
    filled_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def order_id(self) -> int:
        """The order's id under the name order payloads have carried (`id`)."""
        return self.id


class ActivityLog(BaseModel):
    """One line of a bot's (or the account's) activity log."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    bot_id: int | None = None
    level: LogLevel = "INFO"
    message: str
    extra: dict[str, Any] | None = None
    timestamp: datetime

    @computed_field  # type: ignore[prop-decorator]
    @property
    def botId(self) -> int | None:
        """`bot_id` under the camelCase name activity-log clients have read."""
        return self.bot_id


class PnLUpdate(BaseModel):
    """A bot's P&L, whenever it changes."""

    model_config = ConfigDict(extra="ignore")

    bot_id: int
    user_id: str
    ticker: str
    exchange: str
    pnl: float
    total_trades: int = 0
    updated_at: datetime | None = None


def bot_event(change: Change) -> str | None:
    return {"INSERT": "bot_created", "UPDATE": "bot_updated", "DELETE": "bot_deleted"}.get(
        change.operation
    )


def order_event(change: Change) -> str | None:
    """`order_filled` once, when the status becomes FILLED; else `order_update`."""
    record, old = change.record, change.old_record
    if record is not None and record.get("status") == FILLED:
        if change.operation == "INSERT":
            return "order_filled"
        # An old row without its status (a table without REPLICA IDENTITY
        # FULL) cannot show a transition: not announced, rather than twice.
        if old is not None and "status" in old and old["status"] != FILLED:
            return "order_filled"
    return "order_update"


def log_event(change: Change) -> str | None:
    return "log_created" if change.operation == "INSERT" else None


def pnl_event(change: Change) -> str | None:
    if change.operation == "INSERT":
        return "pnl_update"
    if change.operation != "UPDATE" or change.record is None:
        return None
    old, new = change.old_record or {}, change.record
    if "pnl" not in old or "user_id" not in old:
        # The old row came without them: say it again (a P&L is a state,
        # repeating it is harmless; missing a change is not).
        return "pnl_update"
    if old["user_id"] != new.get("user_id"):
        return "pnl_update"  # the bot changed hands: its new owner learns its P&L
    return "pnl_update" if _number(old["pnl"]) != _number(new.get("pnl")) else None


def _number(value: Any) -> Decimal | None:
    """numeric as sent (a number or its text): 1.50 and "1.5" are the same P&L."""
    if value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def pnl_of(row: Row) -> dict[str, Any]:
    """A bots row as a PnLUpdate: the row's id is the `bot_id`."""
    return {**row, "bot_id": row.get("id")}


PLUGINS = [
    Plugin(
        channel="bot-updates",
        event="bot_updated",
        events=("bot_created", "bot_updated", "bot_deleted"),
        event_of=bot_event,
        model=BotUpdate,
        tables=("public.bots",),
        owner_column="user_id",
        description="Bots created, updated (status, config, fills) and deleted.",
    ),
    Plugin(
        channel="order-updates",
        event="order_update",
        events=("order_update", "order_filled"),
        event_of=order_event,
        model=OrderUpdate,
        tables=("public.orders",),
        owner_column="user_id",
        description="Orders of bots; order_filled once when an order becomes FILLED.",
    ),
    Plugin(
        channel="activity-logs",
        event="log_created",
        events=("log_created",),
        event_of=log_event,
        model=ActivityLog,
        tables=("public.activity_logs",),
        owner_column="user_id",
        description="New activity-log lines of bots and accounts.",
    ),
    Plugin(
        channel="pnl-updates",
        event="pnl_update",
        events=("pnl_update",),
        event_of=pnl_event,
        model=PnLUpdate,
        tables=("public.bots",),
        owner_column="user_id",
        transform=pnl_of,
        description="A bot's P&L when it is created, its pnl changes or it changes hands.",
    ),
]
