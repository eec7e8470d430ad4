"""Inbound client messages: one pydantic model each, validated at the edge.

The hub only ever sees these validated objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from realtime_bridge.pgsnapshot import MAX_TOKEN_LENGTH


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Subscribe(_Message):
    type: Literal["subscribe"]
    channel: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    table: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    filters: dict[str, Any] | None = None
    filter: str | dict[str, Any] | None = None
    client_id: Annotated[str, Field(max_length=200)] | None = None
    since: Annotated[int, Field(ge=0)] | None = None
    # A snapshot's `snapshot_token`: with `since`, skip what the snapshot's rows hold.
    snapshot_token: Annotated[str, Field(min_length=1, max_length=MAX_TOKEN_LENGTH)] | None = None
    token: Annotated[str, Field(min_length=1, max_length=8192)] | None = None
    # price-updates only: updates per second per symbol (0: uncapped).
    max_rate: Annotated[float, Field(ge=0, le=1000)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Subscribe:
        if (self.channel is None) == (self.table is None):
            raise ValueError("give exactly one of 'channel' or 'table'")
        if self.filters is not None and self.filter is not None:
            raise ValueError("give 'filters' or 'filter', not both")
        if self.snapshot_token is not None and self.since is None:
            raise ValueError("'snapshot_token' needs 'since' (the snapshot's seq)")
        return self

    @property
    def filter_spec(self) -> str | dict[str, Any] | None:
        return self.filters if self.filters is not None else self.filter


class Unsubscribe(_Message):
    type: Literal["unsubscribe"]
    subscription_id: Annotated[str, Field(min_length=1, max_length=200)]


class Ping(_Message):
    type: Literal["ping"]


class AccessToken(_Message):
    type: Literal["access_token"]
    token: Annotated[str, Field(min_length=1, max_length=8192)]


ClientMessage = Annotated[Subscribe | Unsubscribe | Ping | AccessToken, Field(discriminator="type")]
CLIENT_MESSAGE: TypeAdapter[Subscribe | Unsubscribe | Ping | AccessToken] = TypeAdapter(
    ClientMessage
)
MESSAGE_TYPES = ("subscribe", "unsubscribe", "ping", "access_token")


class BroadcastRequest(_Message):
    channel: Annotated[str, Field(min_length=1, max_length=200)]
    event: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    payload: dict[str, Any]


class SimulateSignal(_Message):
    symbol: Annotated[str, Field(min_length=1, max_length=32)]
    signal_type: Literal["BUY", "SELL"]
    entry_price: Annotated[float, Field(gt=0)]
    stop_loss: Annotated[float, Field(gt=0)] | None = None
    take_profit: Annotated[float, Field(gt=0)] | None = None
    quantity: Annotated[float, Field(gt=0)] = 1.0
    user_id: Annotated[str, Field(min_length=1, max_length=200)] = "demo-user"
