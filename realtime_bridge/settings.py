"""Configuration: read once, validated at start-up.

Nothing else in the package reads ``os.environ``. A bad value fails loudly
with the variable's name (pydantic-settings does that for us).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "TRACE"]

# Settings whose values never appear in an error message.
SECRET_SETTINGS = frozenset(
    {"supabase_anon_key", "supabase_service_key", "supabase_jwt_secret", "realtime_bridge_key"}
)

_URL_SCHEMES = {
    "database_url": (("postgresql", "postgres"), "postgresql://user:password@host:5432/dbname"),
    "supabase_url": (("https", "http"), "https://abcd.supabase.co"),
    "redis_url": (("redis", "rediss", "unix"), "redis://localhost:6379/0"),
    "realtime_bridge_url": (("https", "http"), "http://127.0.0.1:8000"),
}


def _check_url(name: str, value: str) -> str:
    """A URL with one of the setting's schemes and a host (or a ?host= for a Unix socket)."""
    schemes, example = _URL_SCHEMES[name]
    allowed = " or ".join(f"{scheme}://" for scheme in schemes)
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"the port is not a number 0-65535; use a {allowed} URL") from None
    if parts.scheme not in schemes:
        raise ValueError(f"not a {allowed} URL; expected e.g. {example}")
    if not parts.hostname and "host=" not in parts.query and parts.scheme != "unix":
        raise ValueError(f"the URL names no host; expected e.g. {example}")
    return value


class Settings(BaseSettings):
    """Every knob the bridge has; `.env.example` documents each one."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    database_url: str | None = Field(
        default=None, description="Postgres to capture from; unset starts an embedded one."
    )
    supabase_url: str | None = None
    supabase_anon_key: str | None = None
    supabase_service_key: str | None = None
    supabase_jwt_secret: str | None = None
    redis_url: str | None = Field(
        default=None,
        description="Redis carrying client broadcasts and presence across instances.",
    )
    redis_prefix: str = Field(
        default="realtime-bridge",
        min_length=1,
        description="Prefix of the backplane's Redis keys and channel (one per deployment).",
    )
    backplane_ttl: float = Field(
        default=6.0,
        ge=0.3,
        le=300,
        description=(
            "Seconds an instance's presences outlive its last heartbeat in Redis (refreshed "
            "every third of it): a dead instance's members leave within about 4/3 of this."
        ),
    )
    change_stream: bool = Field(
        default=True,
        description=(
            "With REDIS_URL: the leader fans numbered database changes out through one Redis "
            "Stream and followers read it instead of each reading the log from Postgres."
        ),
    )
    change_stream_maxlen: int = Field(
        default=10_000,
        ge=100,
        le=10_000_000,
        description=(
            "Entries (delivered slices of up to 200 changes) the change stream keeps "
            "(MAXLEN ~); older seqs are read from Postgres."
        ),
    )
    realtime_bridge_url: str | None = Field(
        default=None, description="A bridge to publish to over HTTP (broadcast() from services)."
    )
    realtime_bridge_key: str | None = Field(default=None, description="That bridge's service key.")

    data_dir: Path = Field(
        default=Path(".realtime-bridge"),
        description="Where the embedded Postgres keeps its data.",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    plugin_paths: Annotated[list[Path], NoDecode] = Field(default_factory=lambda: [Path("plugins")])
    enable_testing_api: bool = False

    capture: Literal["auto", "wal", "triggers", "outbox", "poll"] = Field(
        default="auto",
        description=(
            "How changes are found with a database: wal (logical replication of the "
            "publication), triggers (capture triggers and the outbox; 'outbox' is the same), "
            "poll (reading the tables over SQL), or auto: the WAL where the role may replicate "
            "and wal_level is logical, else the triggers where they can be installed, else poll."
        ),
    )
    publication: str = Field(
        default="supabase_realtime",
        pattern=r"^[a-z_][a-z0-9_]*$",
        description="The publication the WAL source streams (the tables it captures).",
    )
    replication_slot: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9_]{1,63}$",
        description=(
            "The logical replication slot the WAL leader reads through; unset: "
            "realtime_bridge_<database> (slot names are shared by the whole server)."
        ),
    )
    wal_max_slot_lag: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description=(
            "Bytes of WAL the slot may hold back; past this at start the slot is given up "
            "(clients are told to resync) rather than let the WAL fill the disk."
        ),
    )
    wal_log_interval: float = Field(
        default=0.025,
        ge=0,
        le=5,
        description=(
            "Seconds the WAL leader gathers changes before appending them to the log in one "
            "statement (a full batch goes at once). Clients of the leader get each change "
            "as soon as it is read; followers and the slot's acknowledgement wait for the log."
        ),
    )
    poll_interval: float = Field(default=5.0, gt=0)
    realtime_grace_period: float = Field(
        default=10.0,
        ge=0,
        description="Seconds hosted Supabase Realtime may be down before polling PostgREST.",
    )

    relay_to_supabase: bool = Field(
        default=False,
        description="Also POST every plugin-channel event to Supabase's broadcast REST API.",
    )
    relay_batch_size: int = Field(default=100, ge=1, le=1000)
    relay_batch_ms: float = Field(default=50.0, ge=0)
    relay_queue_max: int = Field(default=10_000, ge=1)
    relay_max_retries: int = Field(default=5, ge=0)
    relay_private: bool = Field(
        default=False, description="Relay non-public plugin channels as private broadcasts."
    )

    replay_window: int = Field(
        default=50_000, ge=0, description="Events kept in memory for fast resume."
    )
    replay_window_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Estimated memory the replay window may hold (bytes; 0: no byte bound). "
        "The oldest events go first; a client resuming from before them reads the outbox.",
    )
    send_queue_max: int = Field(
        default=4096, ge=16, description="Frames queued per connection before it is cut off."
    )
    slow_consumer_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a full queue may stall before the client is cut off.",
    )
    max_frame_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        description="Largest frame of the JSON protocol (/ws/db_subscriptions); larger closes it.",
    )
    ws_permessage_deflate: bool = Field(
        default=False,
        description=(
            "Offer permessage-deflate to WebSocket clients that ask for it, without context "
            "takeover, so each broadcast frame is compressed once for all its receivers."
        ),
    )
    max_message_bytes: int = Field(
        default=256 * 1024,
        ge=256,
        description=(
            "Largest Supabase-protocol message (a broadcast, a track...): larger ones are "
            "refused on their channel and the socket stays up (Supabase's default: 256 KB)."
        ),
    )
    # Market data (price-updates) and live P&L: docs/trading.md.
    price_max_batch: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Ticks accepted per POST /api/prices."
    )
    price_max_symbols: int = Field(
        default=1000, ge=1, description="Symbols one price-updates subscription may watch."
    )
    price_max_rate: float | None = Field(
        default=None,
        gt=0,
        description="Updates/s per symbol per subscription when the client asks for no cap.",
    )
    price_feed: Literal["simulated"] | None = Field(
        default=None, description="Start a market-data feed (`simulated`: the demo feed)."
    )
    price_feed_symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["AAPL", "MSFT", "GOOG", "TSLA", "NVDA"],
        description="Instruments the feed subscribes to (comma-separated).",
    )
    price_feed_rate: float = Field(
        default=5.0, gt=0, description="Simulated feed: ticks per second per symbol."
    )
    pnl_interval: float = Field(
        default=0.25, gt=0, description="Seconds between live P&L events of one position."
    )
    pnl_write_back: float = Field(
        default=30.0,
        ge=0,
        description="Seconds between writing live prices back to positions (0: never).",
    )
    sse_heartbeat: float = Field(default=15.0, gt=0)
    shutdown_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description=(
            "Seconds SIGTERM waits for clients to take their reconnect notice and go before "
            "their connections are cut."
        ),
    )
    sequencer_batch: int = Field(default=5000, ge=1)
    prune_interval: float = Field(default=3600.0, gt=0)
    log_level: LogLevel = Field(default="INFO", description="Log level (case-insensitive).")
    gc_tuning: bool = Field(
        default=True,
        description="After start-up, freeze what it built out of the garbage collector's "
        "full passes and raise the collector's thresholds (see realtime_bridge.pauses).",
    )
    loop_monitor_interval: float = Field(
        default=0.05,
        gt=0,
        description="Seconds between two wake-ups of the event-loop stall monitor.",
    )
    migrate_on_start: bool = Field(
        default=True, description="Apply pending migrations when `serve` starts."
    )
    demo_schema: bool | None = Field(
        default=None,
        description=(
            "Create the demo trading tables (supabase/demo). Unset: only in the embedded "
            "Postgres, never in a DATABASE_URL database."
        ),
    )
    migrations_dir: Path | None = Field(
        default=None, description="Override the folder of SQL migrations."
    )
    demo: bool = Field(
        default=False,
        description=(
            "Run the scripted trading demo (realtime_bridge.demo) with the simulated feed: "
            "the embedded Postgres only, refused with DATABASE_URL or hosted Supabase."
        ),
    )
    demo_tick_interval: float = Field(
        default=0.5, gt=0, le=10, description="Demo: seconds between two scripted ticks."
    )

    auth_disabled: bool = Field(
        default=False, description="Skip authentication (local development only; logged loudly)."
    )
    table_access: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Table channels open beyond service_role: 'public.t=public,public.u=owner'.",
    )
    row_security: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            "How each table's rows are scoped to their readers: 'public.notes=rls' checks "
            "every change against the table's RLS policies as the subscriber's role and "
            "claims; owner (the default) compares the owner column with the token's sub."
        ),
    )
    allow_testing_api_public: bool = False
    max_connections_per_ip: int = Field(default=1000, ge=1)
    max_connections_per_user: int = Field(default=100, ge=1)
    max_subscriptions_per_connection: int = Field(default=100, ge=1)
    max_messages_per_second: float = Field(default=50.0, gt=0)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed: addresses or "
            "networks, or '*' for any. Empty: the headers are ignored and the client address "
            "is the TCP peer's."
        ),
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="WebSocket Origin allow-list and CORS origins."
    )

    @model_validator(mode="after")
    def _demo_only_embedded(self) -> Settings:
        if self.demo and (self.database_url or self.supabase_url):
            raise ValueError(
                "DEMO=1 writes demo trades and runs only on the embedded Postgres: "
                "unset DATABASE_URL and SUPABASE_URL (it never touches your database)"
            )
        if self.demo and self.price_feed is None:
            self.price_feed = "simulated"
        return self

    @model_validator(mode="after")
    def _relay_needs_supabase(self) -> Settings:
        if self.relay_to_supabase and not (self.supabase_url and self.supabase_service_key):
            raise ValueError("RELAY_TO_SUPABASE=true needs SUPABASE_URL and SUPABASE_SERVICE_KEY")
        return self

    @field_validator("database_url", "supabase_url", "redis_url", "realtime_bridge_url")
    @classmethod
    def _urls(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _check_url(str(info.field_name), value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value.strip() or any(c in value for c in "/ ?#@"):
            raise ValueError("use an address or host name such as 127.0.0.1 or 0.0.0.0")
        return value.strip()

    @field_validator("price_feed_symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"TRUSTED_PROXIES entry {item!r}: use an IP address, a network "
                    "(10.0.0.0/8) or * for any"
                ) from None
        return value

    @field_validator("table_access", mode="before")
    @classmethod
    def _parse_table_access(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        access: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            table, _, mode = item.partition("=")
            mode = mode.strip()
            if mode not in ("public", "owner"):
                raise ValueError(
                    f"TABLE_ACCESS entry {item.strip()!r}: use <table>=public or <table>=owner"
                )
            name = table.strip()
            access[name if "." in name else f"public.{name}"] = mode
        return access

    @field_validator("row_security", mode="before")
    @classmethod
    def _parse_row_security(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        modes: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            table, _, mode = item.partition("=")
            mode = mode.strip()
            name = table.strip()
            if mode not in ("rls", "owner") or not name:
                raise ValueError(
                    f"ROW_SECURITY entry {item.strip()!r}: use <table>=rls or <table>=owner"
                )
            modes[name if "." in name else f"public.{name}"] = mode
        return modes

    @field_validator("plugin_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [part for part in value.replace(",", ":").split(":") if part]
        return value
