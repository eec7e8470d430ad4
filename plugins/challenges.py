"""Prop-trading challenges: the `challenge_{id}` room and its domain events.

The events are made in the database, inside the transaction that changed
the row (supabase/demo/20261204100000_challenges.sql), so one exists if and
only if its change commits; this file says who may join a room and what
each event carries. Amounts are strings with two decimals, as the
challenge engine writes them ("10200.00").
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from realtime_bridge import Plugin, Room

Status = Literal["PENDING", "ACTIVE", "FAILED", "FUNDED"]


class EquityUpdated(BaseModel):
    """EQUITY_UPDATED: a challenge's equity after one trade."""

    model_config = ConfigDict(extra="ignore")

    challenge_id: str
    user_id: str
    previous_equity: str
    current_equity: str
    max_equity_ever: str
    daily_start_equity: str
    daily_max_equity: str
    daily_min_equity: str
    total_pnl: str
    total_trades: int
    last_trade_at: datetime
    trade_pnl: str
    trade_symbol: str
    executed_at: datetime


class ChallengeStatusChanged(BaseModel):
    """CHALLENGE_STATUS_CHANGED: a status transition (sent only when the status changes)."""

    model_config = ConfigDict(extra="ignore")

    challenge_id: str
    user_id: str
    old_status: Status
    new_status: Status
    reason: str
    changed_at: datetime


class RiskAlert(BaseModel):
    """RISK_ALERT: the day's drawdown crossed its alert level (once per crossing)."""

    model_config = ConfigDict(extra="ignore")

    challenge_id: str
    user_id: str
    alert_type: Literal["HIGH_DAILY_DRAWDOWN"]
    severity: Literal["MEDIUM", "HIGH"]
    title: str
    message: str
    current_equity: str
    daily_start_equity: str
    drawdown_percentage: str
    threshold_percentage: str
    alert_timestamp: datetime


class Challenge(BaseModel):
    """A challenge row: what `refresh()` reads back (the state the events move)."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    status: Status
    status_reason: str | None = None
    initial_balance: float
    current_equity: float
    max_equity_ever: float
    daily_start_equity: float
    daily_max_equity: float
    daily_min_equity: float
    total_pnl: float
    total_trades: int
    last_trade_at: datetime | None = None
    max_daily_loss_pct: float
    risk_alert_fraction: float
    updated_at: datetime | None = None


PLUGINS = [
    Room(
        prefix="challenge_",
        param="challenge_id",
        # Ids are compared as text: challenge_0001 is not challenge_1.
        predicate=(
            "EXISTS (SELECT 1 FROM public.challenges "
            "WHERE id::text = $challenge_id AND user_id = auth.jwt() ->> 'sub')"
        ),
        id_pattern=r"[1-9][0-9]{0,18}",
        events={
            "EQUITY_UPDATED": EquityUpdated,
            "CHALLENGE_STATUS_CHANGED": ChallengeStatusChanged,
            "RISK_ALERT": RiskAlert,
        },
        description="One challenge's domain events, for its owner only.",
    ),
    Plugin(
        channel="challenge-updates",
        event="challenge_update",
        model=Challenge,
        tables=("public.challenges",),
        owner_column="user_id",
        description="Challenge rows (equity, status, rules), each for its owner.",
    ),
]
