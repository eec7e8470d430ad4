"""The running service: database, source, plugins and hub wired together.

`Bridge` owns every background task it starts (kept referenced, cancelled
on stop); a task that dies is logged and shown by `/health`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from realtime_bridge.auth import (
    Authenticator,
    ChannelPolicy,
    load_or_create_secret,
    project_keys,
)
from realtime_bridge.backplane import Backplane
from realtime_bridge.change import Change
from realtime_bridge.changestream import ChangeStream
from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.errors import (
    ConfigurationError,
    MigrationError,
    PublishError,
    UnknownChannel,
    UnknownTable,
)
from realtime_bridge.events import ENTRY_OVERHEAD, Event, LogEntry, row_size
from realtime_bridge.feeds import FeedRunner, SimulatedFeed
from realtime_bridge.hub import Hub
from realtime_bridge.limits import ConnectionLimits
from realtime_bridge.market import Market
from realtime_bridge.metrics import Histograms, metrics_registry
from realtime_bridge.migrate import migrate
from realtime_bridge.pauses import CollectorTimer, LoopMonitor, tune_collector
from realtime_bridge.pgtypes import UNKNOWN, ColumnType
from realtime_bridge.plugins import PluginRegistry, discover, qualify
from realtime_bridge.relay import Relay
from realtime_bridge.row_security import RowSecurity
from realtime_bridge.settings import Settings
from realtime_bridge.shutdown import Shutdown
from realtime_bridge.sources.base import ModeStatus, Source
from realtime_bridge.sources.outbox import (
    READ_SQL,
    OutboxSource,
    init_connection,
    rows_to_changes,
)
from realtime_bridge.sources.poll import PollSource
from realtime_bridge.sources.supabase import SupabaseSource
from realtime_bridge.sources.wal import RESYNC_CHANNEL, WalSource, slot_name, wal_unavailable
from realtime_bridge.topic_policies import TopicPolicies

logger = logging.getLogger(__name__)

_current: Bridge | None = None

# One channel's rows of the log holding seqs in ($1, $2] (see READ_SQL).
# How long a replay from the log waits for the WAL leader to log what it handed on.
LOG_WAIT = 10.0


class LogBehind(RuntimeError):
    """The log does not hold a change the hub has let go of (the protocols say replay_failed)."""


HISTORY_SQL = READ_SQL.replace(
    "ORDER BY o.seq",
    "AND ((o.schema_name || '.' || o.table_name) = ANY($3::text[]) OR o.channel = $4)\n"
    "ORDER BY o.seq",
).replace("LIMIT $3", "LIMIT 200")

# The oldest seq kept, and the last capture gap (a resync marker), if any.
EARLIEST_SQL = """
SELECT (SELECT min(seq) FROM realtime_bridge.outbox WHERE seq IS NOT NULL) AS earliest,
       (SELECT max(seq) FROM realtime_bridge.outbox
        WHERE operation = 'BROADCAST' AND channel = $1) AS gap
"""

# The outbox's head, and whether this role may number it (be the sequencer).
# (A list of privileges in one has_table_privilege call means "any of them".)
OUTBOX_HEAD_SQL = """
SELECT s.last_seq,
       has_table_privilege('realtime_bridge.outbox', 'SELECT')
       AND has_table_privilege('realtime_bridge.outbox', 'UPDATE')
       AND has_table_privilege('realtime_bridge.sequencer', 'UPDATE') AS usable
FROM realtime_bridge.sequencer s
"""

# A column's type for comparisons (`pgtypes`): the built-in type (a domain's
# base type) by its typname; '' for anything else (enums, user types).
COLUMN_TYPE_SQL = """
(SELECT CASE WHEN bt.typnamespace = 'pg_catalog'::regnamespace OR bt.typname = 'citext'
             THEN bt.typname::text ELSE '' END
 FROM pg_catalog.pg_type ty
 JOIN pg_catalog.pg_type bt
   ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
 WHERE ty.oid = a.atttypid)
"""

# The columns (and their types) of each named table this role may read (missing ones left out).
READABLE_TABLES_SQL = f"""
SELECT n.name, array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       array_agg({COLUMN_TYPE_SQL} ORDER BY a.attnum) AS types
FROM unnest($1::text[]) AS n(name)
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = to_regclass(n.name) AND a.attnum > 0 AND NOT a.attisdropped
WHERE has_table_privilege(to_regclass(n.name), 'SELECT')
GROUP BY n.name
"""

TRACKED_TABLES_SQL = f"""
SELECT t.schema_name || '.' || t.table_name AS name,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       array_agg({COLUMN_TYPE_SQL} ORDER BY a.attnum) AS types
FROM realtime_bridge.tracked_tables t
JOIN pg_catalog.pg_attribute a
  ON a.attrelid = format('%I.%I', t.schema_name, t.table_name)::regclass
 AND a.attnum > 0 AND NOT a.attisdropped
GROUP BY 1
"""


def current_bridge() -> Bridge | None:
    """The bridge running in this process, if any (used by `broadcast()`)."""
    return _current


@dataclass(frozen=True)
class NoOutbox:
    """Why the outbox cannot be used: a reason for everyone, the error for the service key."""

    reason: str
    detail: str | None = None

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


@dataclass
class Counters:
    connections_total: int = 0
    connections_open: int = 0
    errors_sent: dict[str, int] = field(default_factory=dict)
    broadcasts: int = 0

    def error(self, code: str) -> None:
        self.errors_sent[code] = self.errors_sent.get(code, 0) + 1


class Bridge:
    """Everything one realtime-bridge process runs."""

    def __init__(self, settings: Settings, registry: PluginRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else discover(settings.plugin_paths)
        # Tables scoped by their RLS policies (ROW_SECURITY / a plugin's row_security).
        self.row_security = RowSecurity(lambda: self.pool)
        self.hub = Hub(
            window=settings.replay_window,
            window_bytes=settings.replay_window_bytes,
            history=self._history,
            earliest_seq=self._earliest,
            visibility=self.row_security.check,  # type: ignore[arg-type]
        )
        self.counters = Counters()
        # price-updates: ephemeral ticks, never through the outbox (see `market`).
        self.market = Market()
        self.redis_prices: Any = None  # market_redis.RedisPrices when REDIS_URL is set
        self.feed: FeedRunner | None = None
        self.pnl: Any = None  # pnl.LivePnL once started
        self.demo: Any = None  # demo.DemoScript with DEMO=1
        # Called with every batch of changes after the hub routed it (live P&L follows positions).
        self.change_listeners: list[Callable[[list[Change]], None]] = []
        self.limits = ConnectionLimits(settings)
        self.histograms = Histograms()
        self.collector_timer = CollectorTimer(self._observe_gc)
        self.loop_monitor = LoopMonitor(
            self.histograms.loop_stall.observe, settings.loop_monitor_interval
        )
        self.metrics_registry = metrics_registry(self)
        # Set by the server on SIGTERM; every client endpoint holds and awaits it.
        self.shutdown = Shutdown()
        self.embedded: EmbeddedPostgres | None = None
        self.dsn: str | None = None
        self.pool: asyncpg.Pool | None = None
        # Outbox, polling or hosted Supabase: chosen by `start` (see `sources.base`).
        self.source: Source | None = None
        # Hosted Supabase mode (SUPABASE_URL + service key, no DATABASE_URL): no pool, no outbox.
        self.hosted = bool(
            not settings.database_url and settings.supabase_url and settings.supabase_service_key
        )
        self.relay: Relay | None = None
        self.tables: dict[str, set[str]] = {}
        # Each table's column types, for typed filters and row scopes (`pgtypes`).
        self.column_types: dict[str, dict[str, ColumnType]] = {}
        self.started_at = time.time()
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._task_errors: dict[str, str] = {}
        self._seq_waiters: dict[int, asyncio.Future[int]] = {}
        # Seqs of recently routed published events, by outbox id: the
        # sequencer may route an event before its publisher starts waiting.
        self._published: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.auth = Authenticator(
            None if settings.auth_disabled else self._jwt_secret(),
            jwks_url=f"{settings.supabase_url.rstrip('/')}/auth/v1/.well-known/jwks.json"
            if settings.supabase_url
            else None,
            disabled=settings.auth_disabled,
        )
        # Private channels: realtime.messages policies, asked of this database.
        self.topic_policies = TopicPolicies(lambda: self.pool)
        # Client broadcasts and presence across instances (REDIS_URL); None: this process only.
        self.backplane: Backplane | None = (
            Backplane(settings.redis_url, ttl=settings.backplane_ttl, prefix=settings.redis_prefix)
            if settings.redis_url
            else None
        )
        # Database changes from the leader to the followers through Redis (see `changestream`).
        self.change_stream: ChangeStream | None = (
            ChangeStream(
                settings.redis_url,
                prefix=settings.redis_prefix,
                maxlen=settings.change_stream_maxlen,
            )
            if settings.redis_url and settings.change_stream
            else None
        )
        # The log's head as last read by `log_head()` (followers' lag).
        self.log_head_seen: int | None = None

    def _jwt_secret(self) -> str:
        if self.settings.supabase_jwt_secret:
            return self.settings.supabase_jwt_secret
        return load_or_create_secret(self.settings.data_dir)

    def secured_tables(self) -> set[str]:
        """The tables whose rows reach readers by their RLS policies (`row_security`)."""
        tables = {t for t, mode in self.settings.row_security.items() if mode == "rls"}
        for plugin in self.registry:
            if plugin.row_security == "rls":
                tables.update(plugin.tables)
        return tables

    def policy(self, channel: str) -> ChannelPolicy:
        """How `channel` may be read (for `auth.authorize`)."""
        secured = self.secured_tables()
        plugin = self.registry.by_channel.get(channel)
        if plugin is not None and (
            plugin.row_security == "rls" or any(t in secured for t in plugin.tables)
        ):
            return ChannelPolicy(channel, row_security=True)
        if channel in secured:
            return ChannelPolicy(channel, row_security=True)
        if plugin is None and channel in self.registry.by_table:
            # A table's raw channel is as private as the plugins that type it:
            # readable only where every one of them would allow it.
            plugins = self.registry.by_table[channel]
            owners = {p.owner_column for p in plugins}
            if all(p.public for p in plugins):
                return ChannelPolicy(channel, public=True)
            if len(owners) == 1 and None not in owners:
                return ChannelPolicy(channel, owner_column=owners.pop())
            return ChannelPolicy(channel)
        if plugin is not None:
            return ChannelPolicy(channel, public=plugin.public, owner_column=plugin.owner_column)
        mode = self.settings.table_access.get(channel)
        columns = self.tables.get(channel, set())
        return ChannelPolicy(
            channel,
            public=mode == "public",
            owner_column="user_id" if mode == "owner" and "user_id" in columns else None,
        )

    def keys(self) -> dict[str, str]:
        """Long-lived anon and service keys made from the configured secret."""
        return project_keys(self.auth)

    # lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        global _current
        if self.backplane is not None:
            # Not awaited: a Redis that is down makes the backplane degraded, not the start.
            self._own("backplane", self.backplane.start())
        try:
            if self.hosted:
                await self._start_hosted()
            else:
                await self._start_database()
            await self._start_market()
        except BaseException:
            await self.stop()  # what started before the failure stops with it
            raise
        _current = self
        self.collector_timer.install()
        self._own("loop-monitor", asyncio.create_task(self.loop_monitor.run(), name="loop-monitor"))
        if self.settings.gc_tuning:
            # Everything start-up built (plugins, models, the app, the pool) lives
            # as long as the process: out of every later full collection.
            tune_collector()
        if self.settings.auth_disabled:
            logger.warning(
                "AUTH_DISABLED=true: every client is treated as service_role and sees every row. "
                "Never run like this where anyone else can connect."
            )
        elif self.embedded is not None and not self.settings.supabase_jwt_secret:
            # The keys themselves stay out of the logs (they end up in log
            # collectors); `realtime-bridge keys` prints them on demand.
            logger.info(
                "embedded default: JWT secret in %s/jwt_secret; "
                "run `realtime-bridge keys` for the anon and service keys",
                self.settings.data_dir,
            )
        assert self.source is not None
        logger.info(
            "realtime-bridge ready: %s capture, %s mode, %d plugin channel(s), %d table(s), "
            "head seq %d%s",
            self.source.name,
            self.source.mode.mode,
            len(self.registry.by_channel),
            len(self.tables),
            self.hub.head,
            "" if self.source.durable else " (seqs are this process's own)",
        )

    async def _start_database(self) -> None:
        """DATABASE_URL or the embedded Postgres: the outbox where this role can, else polling."""
        self.dsn = await asyncio.to_thread(self._resolve_dsn)
        why_not = await self._install_outbox()
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=10, init=init_connection
        )
        await self._report_missing_tables()
        head: int | None = None
        if why_not is None:
            try:
                row = await self.pool.fetchrow(OUTBOX_HEAD_SQL)
            except (asyncpg.InvalidSchemaNameError, asyncpg.UndefinedTableError) as exc:
                why_not = NoOutbox(
                    "the outbox is not installed (run `realtime-bridge migrate`)", str(exc)
                )
            except asyncpg.InsufficientPrivilegeError as exc:
                why_not = NoOutbox("this database role cannot use the outbox", str(exc))
            else:
                assert row is not None
                if row["usable"]:
                    head = int(row["last_seq"])
                else:
                    why_not = NoOutbox(
                        "this database role may not number the outbox (it needs SELECT and "
                        "UPDATE on realtime_bridge.outbox and realtime_bridge.sequencer)"
                    )
        if head is not None:
            await self._start_outbox(head, await self._why_not_wal())
            return
        assert why_not is not None
        if self.settings.capture not in ("auto", "poll"):
            raise ConfigurationError(f"CAPTURE={self.settings.capture}, but {why_not}")
        await self._start_polling(why_not)

    async def _install_outbox(self) -> NoOutbox | None:
        """Apply the migrations; say why not when this role may not (None: done or not asked)."""
        if self.settings.capture == "poll":
            return NoOutbox("CAPTURE=poll")
        if not self.settings.migrate_on_start:
            return None
        assert self.dsn is not None
        try:
            await migrate(self.dsn, self.settings.migrations_dir, demo=self._wants_demo())
        except asyncpg.InsufficientPrivilegeError as exc:
            return NoOutbox("this database role cannot install the capture triggers", str(exc))
        except MigrationError as exc:
            if isinstance(exc.__cause__, asyncpg.InsufficientPrivilegeError):
                return NoOutbox("this database role cannot install the capture triggers", str(exc))
            raise
        return None

    async def _why_not_wal(self) -> str | None:
        """None when the WAL is the capture; else why the triggers are."""
        capture = self.settings.capture
        if capture in ("triggers", "outbox"):
            return f"CAPTURE={capture}"
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            why = await wal_unavailable(conn, self.settings.publication)
        if why is not None and capture == "wal":
            raise ConfigurationError(f"CAPTURE=wal, but {why}")
        return why

    def _wants_demo(self) -> bool:
        """The demo schema: DEMO_SCHEMA, or by default the embedded database only."""
        if self.settings.demo_schema is not None:
            return self.settings.demo_schema
        return self.embedded is not None

    async def _report_missing_tables(self) -> None:
        """One line per plugin table that does not exist: reported, never created."""
        assert self.pool is not None
        wanted = sorted({table for plugin in self.registry for table in plugin.tables})
        rows = await self.pool.fetch(
            "SELECT n.name FROM unnest($1::text[]) AS n(name) WHERE to_regclass(n.name) IS NULL",
            wanted,
        )
        for row in rows:
            channels = [p.channel for p in self.registry if row["name"] in p.tables]
            logger.warning(
                "plugin channel %s expects table %s, which does not exist in this database; "
                "create it (for the bundled demo plugins: `realtime-bridge migrate --demo` "
                "or DEMO_SCHEMA=true), or remove the plugin; the channel stays empty until then",
                ", ".join(channels),
                row["name"],
            )

    async def _check_row_security(self) -> None:
        """Say when a row-secured table has no RLS to apply (never silently).

        Its old rows need REPLICA IDENTITY FULL from the WAL: track() and
        switch_to_wal() set it, and warn where this role may not.
        """
        assert self.pool is not None
        secured = sorted(self.secured_tables())
        if not secured:
            return
        rows = await self.pool.fetch(
            """
            SELECT n.name, c.relrowsecurity
            FROM unnest($1::text[]) AS n (name)
            LEFT JOIN pg_catalog.pg_class c ON c.oid = to_regclass(n.name)
            """,
            secured,
        )
        for row in rows:
            if row["relrowsecurity"] is None:
                continue  # not created yet: _report_missing_tables or track() says so
            if not row["relrowsecurity"]:
                logger.warning(
                    "ROW_SECURITY: %s is rls, but row level security is not enabled on it: "
                    "every role with SELECT on it sees every change (ALTER TABLE ... ENABLE "
                    "ROW LEVEL SECURITY)",
                    row["name"],
                )

    async def _start_outbox(self, head: int, why_not_wal: str | None) -> None:
        assert self.dsn is not None
        assert self.pool is not None
        self.hub.head = head
        source: OutboxSource
        if why_not_wal is None:
            source = WalSource(
                self.dsn,
                self._on_changes,
                start_after=head,
                publication=self.settings.publication,
                slot=self.settings.replication_slot,
                max_lag_bytes=self.settings.wal_max_slot_lag,
                batch_size=self.settings.sequencer_batch,
                log_interval=self.settings.wal_log_interval,
            )
        else:
            await self._leave_wal()
            source = OutboxSource(
                self.dsn,
                self._on_changes,
                start_after=head,
                batch_size=self.settings.sequencer_batch,
            )
            source.mode.reason = f"capture triggers and the outbox ({why_not_wal})"
        self.source = source
        if self.change_stream is not None:
            # Not awaited: a Redis that is down makes followers read the log, not the start fail.
            source.stream = self.change_stream
            self._own("change-stream", self.change_stream.start())
        await self.refresh_tables()
        self._own("source", source.start())
        # Serve once changes flow (health would say 503 until then anyway);
        # a database that is down at start makes us serve degraded, not hang.
        if not await source.wait_connected(timeout=15):
            logger.warning("the outbox source is not connected yet; serving degraded")
        await self._check_row_security()
        self._own("maintenance", asyncio.create_task(self._maintain(), name="maintenance"))
        if self.settings.relay_to_supabase:
            # Only the sequencer relays, so Supabase gets each event once, not once per instance.
            self.relay = Relay.from_settings(
                self.settings,
                self.registry,
                active=lambda: source.status.role == "sequencer",
            )
            # From the head we started at: changes routed while we waited above are relayed too.
            relayed = self.relay.start(self.hub, list(self.registry.by_channel), since=head)
            self._own("relay", relayed)

    async def _leave_wal(self) -> None:
        """On the trigger path: capture triggers on every published table, and no slot of ours.

        A slot nobody reads holds WAL on the database's disk forever, so the
        one the WAL source left behind is dropped (loudly).
        """
        assert self.pool is not None
        try:
            await self.pool.execute("SELECT realtime_bridge.switch_to_triggers()")
            slot = self.settings.replication_slot or slot_name(
                await self.pool.fetchval("SELECT current_database()")
            )
            dropped = await self.pool.fetchval(
                """
                SELECT count(pg_drop_replication_slot(slot_name))
                FROM pg_catalog.pg_replication_slots
                WHERE slot_name = $1 AND database = current_database() AND NOT active
                """,
                slot,
            )
        except asyncpg.PostgresError as exc:
            logger.warning("could not prepare the capture triggers: %s", exc)
            return
        if dropped:
            logger.warning(
                "dropped the replication slot %r: the trigger path captures from now on", slot
            )

    async def _start_polling(self, why: NoOutbox) -> None:
        """No outbox: read the plugins' tables every POLL_INTERVAL seconds over SQL."""
        assert self.dsn is not None
        await self.refresh_tables()
        wanted = sorted({table for plugin in self.registry for table in plugin.tables})
        missing = [table for table in wanted if table not in self.tables]
        if missing:
            logger.warning(
                "polling: %s not found or not readable by this role; not polled",
                ", ".join(missing),
            )
        no_id = sorted(table for table, columns in self.tables.items() if "id" not in columns)
        if no_id:
            logger.warning("polling: %s have no id column; not polled", ", ".join(no_id))
        interval = self.settings.poll_interval
        self.source = PollSource(
            self.dsn,
            sorted(set(self.tables) - set(no_id)),
            self._on_changes,
            interval=interval,
            reason=f"{why.reason}; polling the tables every {interval:g} s",
            detail=why.detail,
        )
        logger.warning("realtime-bridge is polling, not realtime: %s", why)
        self._own("source", self.source.start())
        if not await self.source.wait_connected(timeout=15):
            logger.warning("the poll source has not read the tables yet; serving degraded")
        if self.settings.relay_to_supabase:
            logger.warning("RELAY_TO_SUPABASE needs the outbox; nothing is relayed while polling")

    async def _start_hosted(self) -> None:
        """Hosted Supabase mode: Realtime `postgres_changes`, PostgREST polling as fallback."""
        assert self.settings.supabase_url
        assert self.settings.supabase_service_key
        if self.secured_tables():
            raise ConfigurationError(
                "ROW_SECURITY=rls needs the database to evaluate the tables' policies in "
                f"({', '.join(sorted(self.secured_tables()))}): set DATABASE_URL to its direct "
                "connection, or scope those tables by owner"
            )
        await self.refresh_tables()
        self.source = SupabaseSource(
            self.settings.supabase_url,
            self.settings.supabase_service_key,
            sorted(self.tables),
            self._on_changes,
            grace=self.settings.realtime_grace_period,
            poll_interval=self.settings.poll_interval,
        )
        self._own("source", self.source.start())
        if not await self.source.wait_connected(timeout=15):
            logger.warning("hosted Supabase is not reachable yet; serving degraded")
        if self.settings.relay_to_supabase:
            logger.warning("RELAY_TO_SUPABASE needs the outbox; nothing is relayed in hosted mode")

    async def _start_market(self) -> None:
        """The Redis price cache, the market-data feed and live P&L, as configured."""
        settings = self.settings
        if settings.redis_url:
            from realtime_bridge.market_redis import RedisPrices  # only with REDIS_URL

            self.redis_prices = RedisPrices(self.market, settings.redis_url)
            loaded = await self.redis_prices.load()
            logger.info("price cache: %d symbol(s) loaded from Redis", loaded)
            for task in self.redis_prices.start():
                self._own(task.get_name(), task)
        if settings.price_feed == "simulated":
            symbols = settings.price_feed_symbols
            self.feed = FeedRunner(
                SimulatedFeed(symbols, rate=settings.price_feed_rate), self.market, symbols
            )
            self._own("price-feed", asyncio.create_task(self.feed.run(), name="price-feed"))
        if self.pool is not None and self.registry.by_channel.get("position-updates"):
            from realtime_bridge.pnl import LivePnL

            self.pnl = LivePnL(self)
            await self.pnl.start()
        if settings.demo and self.pool is not None:
            from realtime_bridge.demo import DemoScript

            self.demo = DemoScript(self)
            self._own("demo", asyncio.create_task(self.demo.run(), name="demo"))

    def _resolve_dsn(self) -> str:
        if self.settings.database_url:
            return self.settings.database_url
        self.embedded = EmbeddedPostgres(self.settings.data_dir)
        dsn = self.embedded.start()
        logger.info("no DATABASE_URL: using the embedded Postgres in %s", self.settings.data_dir)
        return dsn

    async def stop(self) -> None:
        global _current
        if _current is self:
            _current = None
        self.collector_timer.uninstall()
        if self.backplane is not None:
            await self.backplane.stop()
        if self.source is not None:
            await self.source.stop()
        await self.hub.close()
        if self.change_stream is not None:
            await self.change_stream.stop()
        if self.relay is not None:
            await self.relay.stop(self.hub)
        if self.pnl is not None:
            await self.pnl.stop()
        if self.redis_prices is not None:
            await self.redis_prices.stop()
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.pool is not None:
            await self.pool.close()
        if self.embedded is not None and self.embedded.started_here:
            # Stop what we started; a server someone else started stays up.
            await asyncio.to_thread(self.embedded.stop)

    def _own(self, name: str, task: asyncio.Task[Any]) -> None:
        self._tasks[name] = task

        def done(t: asyncio.Task[Any]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                self._task_errors[name] = f"{type(exc).__name__}: {exc}"
                logger.error("background task %s failed", name, exc_info=exc)

        task.add_done_callback(done)

    # channels --------------------------------------------------------------

    async def refresh_tables(self) -> None:
        """Load the captured tables and their columns (for table channels and filters).

        With the outbox: the tracked tables. Polling: the plugins' tables this
        role can read. Hosted: the plugins' tables, with their models' columns.
        """
        if self.source is None or not self.source.durable:
            plugin_tables = {table for plugin in self.registry for table in plugin.tables}
            if self.pool is not None:
                rows = await self.pool.fetch(READABLE_TABLES_SQL, sorted(plugin_tables))
                self._set_tables(rows)
            else:
                # Hosted: the models' fields, typed by their annotations.
                tables: dict[str, dict[str, ColumnType]] = {}
                for plugin in self.registry:
                    for table in plugin.tables:
                        tables.setdefault(table, {}).update(plugin.column_types())
                self.column_types = tables
                self.tables = {table: set(types) for table, types in tables.items()}
            self._register_channels()
            return
        assert self.pool is not None
        self._set_tables(await self.pool.fetch(TRACKED_TABLES_SQL))
        self._register_channels()

    def _set_tables(self, rows: list[asyncpg.Record]) -> None:
        self.tables = {r["name"]: set(r["columns"]) for r in rows}
        self.column_types = {
            r["name"]: {
                column: ColumnType(kind)
                for column, kind in zip(r["columns"], r["types"], strict=True)
            }
            for r in rows
        }

    def _register_channels(self) -> None:
        for plugin in self.registry:
            # The tables' own column types win over the model's annotations
            # (filters see the raw row's values); columns two tables type
            # differently compare as text.
            types = plugin.column_types()
            seen: dict[str, ColumnType] = {}
            for table in plugin.tables:
                for column, kind in self.column_types.get(table, {}).items():
                    if column in seen and seen[column] != kind:
                        kind = UNKNOWN
                    seen[column] = kind
                for column in self.tables.get(table, set()) - set(seen):
                    seen[column] = UNKNOWN
            types.update(seen)
            self.hub.add_channel(plugin.channel, columns=types, owner_column=plugin.owner_column)
        for table, columns in self.tables.items():
            known = self.column_types.get(table, {})
            self.hub.add_channel(
                table,
                columns={column: known.get(column, UNKNOWN) for column in columns},
                owner_column="user_id" if "user_id" in columns else None,
            )

    async def table_channel(self, table: str) -> str:
        """The channel name of a tracked table; refresh once before saying no."""
        name = qualify(table)
        if name not in self.tables:
            await self.refresh_tables()
        if name not in self.tables:
            if self.source is not None and not self.source.durable:
                raise UnknownTable(
                    f"table {name!r} is not captured: without the outbox only the plugins' "
                    "tables are read",
                    table=name,
                )
            raise UnknownTable(
                f"table {name!r} is not tracked; run SELECT realtime_bridge.track('{name}')",
                table=name,
            )
        return name

    def resolve_channel(self, name: str) -> str:
        if name in self.hub.channels:
            return name
        raise UnknownChannel(f"no channel named {name!r}", channel=name)

    # the flow ------------------------------------------------------------

    def _observe_gc(self, generation: int, seconds: float) -> None:
        self.histograms.gc_pause.of(str(generation)).observe(seconds)

    def _on_changes(self, changes: list[Change]) -> None:
        if not changes:
            return
        delivery = self.histograms.delivery
        channels = self.hub.channels
        self.histograms.source_lag.observe(time.time() - changes[-1].committed_at.timestamp())
        for change in changes:
            if change.channel == RESYNC_CHANNEL:
                self._on_gap(change)
                continue
            names = self.registry.channels_for(change)
            entry = LogEntry(
                change.seq,
                names,
                functools.partial(self.registry.event_for, change),
                size=ENTRY_OVERHEAD + row_size(change.record) + row_size(change.old_record),
            )
            self.hub.publish(change.seq, entry)
            # Once per event and channel with subscribers, not per receiver; a
            # change that is no event there (a plugin's event_of said so) is not
            # a delivery. The hub built those events already: this reads them.
            routed = time.time()
            committed = change.committed_at.timestamp()
            for name in names:
                channel = channels.get(name)
                if channel is not None and channel.count and entry.event(name) is not None:
                    delivery.of(name).observe(routed - committed)
            if change.operation == "BROADCAST" and change.outbox_id is not None:
                self._published[change.outbox_id] = change.seq
                if len(self._published) > 10_000:
                    self._published.popitem(last=False)
            if self._seq_waiters and change.outbox_id is not None:
                waiter = self._seq_waiters.pop(change.outbox_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(change.seq)
        for listener in self.change_listeners:
            try:
                listener(changes)
            except Exception:  # a listener's bug must not stop the flow
                logger.exception("a change listener failed")

    def _on_gap(self, change: Change) -> None:
        """The capture lost changes before this marker: every client reloads."""
        self.hub.publish(change.seq, LogEntry(change.seq, (), lambda _channel: None))
        told = self.hub.require_resync(change.seq)
        logger.error(
            "the capture lost changes before seq %s (%s): %d subscription(s) told to resync",
            change.seq,
            (change.record or {}).get("reason", "unknown"),
            told,
        )

    async def _history(self, after: int, upto: int, channel: str) -> AsyncIterator[list[Event]]:
        """Events of `channel` in (after, upto] read back from the outbox log."""
        if not self._durable:
            return  # no outbox: only the hub's window can be replayed
        assert self.pool is not None
        if not await self.wait_logged(upto):
            raise LogBehind(f"the log has not reached seq {upto} yet; resume again shortly")
        plugin = self.registry.by_channel.get(channel)
        tables = list(plugin.tables) if plugin else [channel]
        cursor = after
        while cursor < upto:
            rows = await self.pool.fetch(HISTORY_SQL, cursor, upto, tables, channel)
            if not rows:
                return
            batch: list[Event] = []
            for change in rows_to_changes(rows, cursor):
                if change.seq > upto:
                    break
                if channel in self.registry.channels_for(change):
                    event = self.registry.event_for(change, channel)
                    if event is not None:
                        batch.append(event)
            last = rows[-1]
            cursor = min(upto, last["seq"] + last["changes"] - 1)
            yield batch

    @property
    def _durable(self) -> bool:
        """Seqs live in the outbox (replay beyond the window and publishing work)."""
        return self.source is not None and self.source.durable

    async def wait_logged(self, seq: int) -> bool:
        """Wait (a little) until the log holds every change up to `seq`.

        The WAL leader hands changes on before it logs them, so what the hub's
        window let go of may be a moment from the log yet.
        """
        source = self.source
        if isinstance(source, OutboxSource):
            return await source.wait_logged(seq, timeout=LOG_WAIT)
        return True

    async def _earliest(self) -> int | None:
        if not self._durable:
            return self.hub.head + 1  # no outbox: beyond the window means resync
        assert self.pool is not None
        await self.wait_logged(self.hub.head)
        row = await self.pool.fetchrow(EARLIEST_SQL, RESYNC_CHANNEL)
        assert row is not None
        if row["gap"] is not None:
            # The capture lost changes before this marker: nothing older is complete.
            self.hub.resync_floor = max(self.hub.resync_floor, int(row["gap"]))
        if row["earliest"] is None:
            # Everything was pruned: the next seq is the earliest a client can get.
            return self.hub.head + 1
        return max(int(row["earliest"]), int(row["gap"] or 0))

    # publishing --------------------------------------------------------

    async def publish(
        self, channel: str, event: str | None, payload: Any, *, wait: float = 5.0
    ) -> int | None:
        """Validate and write an event to the outbox; return its seq once numbered."""
        if not self._durable:
            if self.hosted:
                why = "hosted Supabase mode (no DATABASE_URL) has none"
            elif self.source is None:
                why = "the bridge has not started"
            else:
                why = f"this bridge polls without it ({self.source.mode.reason})"
            raise PublishError(f"publishing needs the outbox: {why}")
        event_name, data = self.registry.validate_broadcast(channel, event, payload)
        assert self.pool is not None
        try:
            outbox_id = await self.pool.fetchval(
                "SELECT realtime_bridge.broadcast($1, $2, $3::jsonb)", channel, event_name, data
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise PublishError(f"could not write the event: {exc}") from exc
        self.counters.broadcasts += 1
        if wait <= 0:
            return None
        routed = self._published.get(int(outbox_id))
        if routed is not None:
            return routed
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._seq_waiters[int(outbox_id)] = future
        try:
            return await asyncio.wait_for(future, wait)
        except TimeoutError:
            return None
        finally:
            self._seq_waiters.pop(int(outbox_id), None)

    # maintenance -----------------------------------------------------------

    async def _maintain(self) -> None:
        """Prune the outbox past retention; idle (no new seqs) means no queries."""
        pruned_at_head = self.hub.head
        while True:
            await asyncio.sleep(self.settings.prune_interval)
            if self.hub.head == pruned_at_head or self.pool is None:
                continue
            try:
                removed = await self.pool.fetchval("SELECT realtime_bridge.prune()")
                pruned_at_head = self.hub.head
                if removed:
                    logger.info("pruned %s outbox rows past retention", removed)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("outbox pruning failed: %s", exc)

    # reporting ---------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        source = self.source
        status = source.status if source is not None else None
        healthy = source is not None and source.healthy and not self._task_errors
        body: dict[str, Any] = {
            "status": "ok" if healthy else "degraded",
            "source": source.name if source is not None else "starting",
            **self.mode(),
            "database": "none" if self.hosted else self._database_kind(),
            "last_seq": self.hub.head,
            "lag_ms": round(status.last_lag_ms, 3)
            if status is not None and status.last_lag_ms is not None
            else None,
            "source_status": status.to_json() if status is not None else None,
            "wal": source.stats() if isinstance(source, WalSource) else None,
            **self.cluster(),
            "failed_tasks": dict(self._task_errors),
            "row_security": self._row_security_state() if self.hub.gates else None,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        return healthy, body

    def _row_security_state(self) -> dict[str, Any]:
        """How far behind the head each row-secured channel is, and the last check error."""
        return {
            "behind": {name: self.hub.head - gate.cursor for name, gate in self.hub.gates.items()},
            "last_error": self.row_security.last_error,
            "gate_errors": {
                name: gate.error for name, gate in self.hub.gates.items() if gate.error
            },
        }

    @property
    def role(self) -> str:
        """leader (numbers the log), follower (tails it), or standalone (no shared log)."""
        if self.source is None or not self.source.durable:
            return "standalone"
        return "leader" if self.source.status.role == "sequencer" else "follower"

    async def log_head(self, timeout: float = 1.0) -> int | None:
        """The log's head seq (what the leader has numbered); None without the log or a reply."""
        if not self._durable or self.pool is None:
            return None
        stream = self.change_stream
        if stream is not None and self.role == "follower" and stream.reading:
            # The stream shows the leader's head: no query per /health check.
            if stream.head_seen is not None:
                self.log_head_seen = max(stream.head_seen, self.hub.head)
                return self.log_head_seen
        elif stream is not None and self.role == "leader":
            self.log_head_seen = self.hub.head
            return self.log_head_seen
        try:
            async with asyncio.timeout(timeout):
                head = await self.pool.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return None
        self.log_head_seen = int(head)
        return self.log_head_seen

    def cluster(self) -> dict[str, Any]:
        """This instance among the others: role, lag behind the log, backplane."""
        head = self.log_head_seen
        return {
            "role": self.role,
            "log_head": head,
            "lag_seqs": max(head - self.hub.head, 0) if head is not None else None,
            # Statements this instance's source sent to read the log as a follower.
            "follower_reads": self.source.follower_statements
            if isinstance(self.source, OutboxSource)
            else None,
            "backplane": self.backplane.to_json()
            if self.backplane is not None
            else {"state": "off"},
            "change_stream": self.change_stream.to_json()
            if self.change_stream is not None
            else {"state": "off"},
        }

    def _database_kind(self) -> str:
        return "embedded" if self.embedded else "external"

    def mode(self) -> dict[str, Any]:
        """`mode` (realtime|polling), `mode_reason`, `mode_since`, `mode_switches`."""
        if self.source is None:
            return ModeStatus(since=self.started_at).to_json()
        return self.source.mode.to_json()

    def stats(self) -> dict[str, Any]:
        hub = self.hub.stats
        return {
            **self.mode(),
            "connections": self.counters.connections_open,
            "connections_total": self.counters.connections_total,
            "subscriptions": self.hub.subscriptions_per_channel(),
            "events_in": hub.events_in,
            "events_out": hub.frames_out,
            "events_replayed": hub.replayed,
            "dropped": {"slow_consumers": hub.slow_consumers},
            "resyncs": hub.resyncs,
            "row_security": {
                "tables": sorted(self.secured_tables()),
                "statements": self.row_security.statements,
                "checks": hub.secured_checks,
                "secured_failures": hub.secured_failures,
                **self._row_security_state(),
            },
            "errors_sent": dict(self.counters.errors_sent),
            "plugin_errors": dict(self.registry.errors),
            "broadcasts": self.counters.broadcasts,
            "head_seq": self.hub.head,
            "channels": sorted(self.hub.channels),
            "relay": self.relay.to_json() if self.relay is not None else None,
            "wal": self.source.stats() if isinstance(self.source, WalSource) else None,
            "market": {
                **self.market.to_json(),
                "redis": self.redis_prices.to_json() if self.redis_prices is not None else None,
                "feed": self.feed.status.to_json() if self.feed is not None else None,
            },
            "pnl": self.pnl.to_json() if self.pnl is not None else None,
            **self.cluster(),
            # The trigger path's sequencer: statements sent and NOTIFY wake-ups.
            "sequencer": self.source.stats()
            if isinstance(self.source, OutboxSource) and not isinstance(self.source, WalSource)
            else None,
        }

    def encode(self, value: Any) -> bytes:
        return orjson.dumps(value)
