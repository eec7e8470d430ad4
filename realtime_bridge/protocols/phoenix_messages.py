"""Inbound Supabase Realtime payloads: one pydantic model each, validated at the edge.

Unknown keys are ignored and booleans also accept "true" / "false", as the
Supabase server does. The `postgres_changes` entries of a join are kept as
the raw maps the client sent too, because the reply must echo them verbatim.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_REPLAY_LIMIT = 10_000


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Replay(_Payload):
    """`config.broadcast.replay`: events since `since` (Unix ms), at most `limit` (the latest)."""

    since: Annotated[int, Field(ge=0)]
    limit: Annotated[int, Field(ge=1, le=MAX_REPLAY_LIMIT)] | None = None


class BroadcastConfig(_Payload):
    self_: bool = Field(default=False, alias="self")
    ack: bool = False
    replay: Replay | None = None
    replication_ready: bool = False


class PresenceConfig(_Payload):
    key: str = ""
    enabled: bool = False

    @field_validator("key", mode="before")
    @classmethod
    def _key_text(cls, value: object) -> object:
        return "" if value is None else str(value) if isinstance(value, int | float) else value


class PostgresChange(_Payload):
    """One `postgres_changes` binding: which changes of which table(s), with which filter."""

    event: Annotated[str, Field(min_length=1, max_length=20)]
    schema_: Annotated[str, Field(min_length=1, max_length=63)] = Field(
        default="public", alias="schema"
    )
    table: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    filter: Annotated[str, Field(max_length=4000)] | None = None
    select: list[Annotated[str, Field(min_length=1, max_length=63)]] | None = None

    @property
    def operation(self) -> str | None:
        """INSERT, UPDATE or DELETE; None means every operation (`*` or anything else)."""
        upper = self.event.upper()
        return upper if upper in ("INSERT", "UPDATE", "DELETE") else None


class JoinConfig(_Payload):
    broadcast: BroadcastConfig = BroadcastConfig()
    presence: PresenceConfig = PresenceConfig()
    postgres_changes: list[dict[str, Any]] = Field(default_factory=list, max_length=100)
    private: bool = False

    @field_validator("broadcast", "presence", mode="before")
    @classmethod
    def _null_is_default(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("postgres_changes", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value


class JoinPayload(_Payload):
    config: JoinConfig = JoinConfig()
    access_token: str | None = None
    user_token: str | None = None

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, value: object) -> object:
        return {} if value is None else value

    @property
    def token(self) -> str | None:
        """The token the join carries; opaque `sb_` keys and empty values do not count."""
        token = self.access_token or self.user_token
        if not token or token.startswith("sb_"):
            return None
        return token


def parse_join(payload: Any) -> tuple[JoinPayload, str | None]:
    """The join payload, or the defaults and the reason it was unusable (as Supabase does)."""
    try:
        return JoinPayload.model_validate(payload), None
    except ValidationError as exc:
        return JoinPayload(), str(exc.errors(include_url=False)[0].get("msg", "invalid"))


class BroadcastPush(_Payload):
    """A client's broadcast: `{"type": "broadcast", "event": ..., "payload": ...}`."""

    event: Annotated[str, Field(min_length=1, max_length=255)]
    payload: Any = None


class PresencePush(_Payload):
    """`{"event": "track" | "untrack", "payload": {...}}` (JS adds `"type": "presence"`)."""

    event: str
    payload: Any = None


class AccessTokenPush(_Payload):
    access_token: str | None = None
