"""The bundled trading channels: positions, trades and portfolio snapshots.

These are ordinary plugins, loaded from this folder like any of yours.
Each payload model is what a client receives as `data`; computed fields
are derived here once, on the server, instead of in every client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, computed_field

from realtime_bridge import Plugin


class PositionUpdate(BaseModel):
    """An open or closed position, with its mark-to-market figures."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    symbol: str
    quantity: float
    entry_price: float
    current_price: float | None = None
    unrealized_pnl: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    status: Literal["open", "closed"] = "open"
    opened_at: datetime | None = None
    updated_at: datetime | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def market_value(self) -> float | None:
        """quantity × current price (None until a price is known)."""
        if self.current_price is None:
            return None
        return round(self.quantity * self.current_price, 8)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def unrealized_pnl_pct(self) -> float | None:
        """Unrealized P&L as a percentage of the entry cost."""
        if self.current_price is None or self.entry_price == 0:
            return None
        change = (self.current_price - self.entry_price) / self.entry_price * 100
        return round(change if self.quantity >= 0 else -change, 6)


class TradeUpdate(BaseModel):
    """A trade from signal to close."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    symbol: str
    signal_type: Literal["BUY", "SELL"]
    quantity: float
    entry_price: float
    exit_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    status: Literal["pending", "open", "closed", "cancelled"] = "pending"
    pnl: float | None = None
    executed_at: datetime | None = None
    updated_at: datetime | None = None


class PortfolioUpdate(BaseModel):
    """A point-in-time snapshot of one user's portfolio."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    total_value: float
    cash: float
    positions_value: float
    daily_pnl: float | None = None
    total_pnl: float | None = None
    created_at: datetime | None = None


PLUGINS = [
    Plugin(
        channel="position-updates",
        event="position_update",
        model=PositionUpdate,
        tables=("public.positions",),
        owner_column="user_id",
        description="Position changes with market value and unrealized P&L %.",
    ),
    Plugin(
        channel="trade-updates",
        event="trade_update",
        model=TradeUpdate,
        tables=("public.trades",),
        owner_column="user_id",
        description="Trades from signal to close.",
    ),
    Plugin(
        channel="portfolio-updates",
        event="portfolio_update",
        model=PortfolioUpdate,
        tables=("public.portfolio_snapshots",),
        owner_column="user_id",
        description="Portfolio value snapshots.",
    ),
]
