"""The benchmark's Postgres: a fresh embedded server, or a fresh database on DATABASE_URL.

Besides the project's migrations it gets a ``bench`` schema:

* ``bench.floor_positions``: the raw floor's (and the naive approach's)
  copy of the positions, with a trigger that ``pg_notify``s each UPDATE as
  a small, ready-made frame;
* ``bench.capture_plain`` / ``bench.capture_tracked``: the same table twice,
  the second captured by the bridge (``realtime_bridge.track``), for P6.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from bench.lifecycle import Managed
from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.migrate import migrate

BENCH_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS bench;

CREATE TABLE IF NOT EXISTS bench.floor_positions (
    id            bigint PRIMARY KEY,
    user_id       text NOT NULL,
    symbol        text NOT NULL,
    quantity      numeric NOT NULL,
    entry_price   numeric NOT NULL,
    current_price numeric,
    updated_at    timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS floor_positions_user_id_idx ON bench.floor_positions (user_id);

CREATE OR REPLACE FUNCTION bench.floor_notify()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify(
        'bench_floor',
        '{"type":"db_change","user_id":' || to_json(NEW.user_id)::text
        || ',"data":{"quantity":' || NEW.quantity::text || '}}'
    );
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS floor_notify ON bench.floor_positions;
CREATE TRIGGER floor_notify AFTER UPDATE ON bench.floor_positions
    FOR EACH ROW EXECUTE FUNCTION bench.floor_notify();

CREATE TABLE IF NOT EXISTS bench.capture_plain (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL,
    symbol     text NOT NULL,
    quantity   numeric NOT NULL,
    price      numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS bench.capture_tracked (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL,
    symbol     text NOT NULL,
    quantity   numeric NOT NULL,
    price      numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
SELECT realtime_bridge.track('bench.capture_tracked');
"""


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def host_port(dsn: str) -> tuple[str, int]:
    parts = urlsplit(dsn)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def via_port(dsn: str, port: int) -> str:
    """The same DSN, through 127.0.0.1:<port> (the counting proxy)."""
    parts = urlsplit(dsn)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetchval(dsn: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def _sequencing(dsn: str, after_id: int) -> list[float]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM sequenced_at - created_at) * 1000 "
            "FROM realtime_bridge.outbox "
            "WHERE id > $1 AND table_name = 'positions' AND sequenced_at IS NOT NULL "
            "ORDER BY 1",
            after_id,
        )
    except asyncpg.PostgresError:
        return []  # another layout of the outbox: not worth failing the run
    finally:
        await conn.close()
    return [float(r[0]) for r in rows]


async def _seed(dsn: str, users: int) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        # Seeding is not a change anyone subscribes to: skip the capture
        # trigger (superuser only; otherwise the bridge sequences the seed).
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("SET session_replication_role = replica")
        async with conn.transaction():
            for table in ("public.positions", "bench.floor_positions"):
                await conn.execute(f"DELETE FROM {table}")
                await conn.execute(
                    f"INSERT INTO {table} (id, user_id, symbol, quantity, entry_price, "
                    "current_price) SELECT g, 'u' || (g - 1), 'BENCH', -1, 100, 100 "
                    f"FROM generate_series(1, {users}) g"
                )
        await conn.execute("VACUUM ANALYZE public.positions")
        await conn.execute("VACUUM ANALYZE bench.floor_positions")
    finally:
        await conn.close()


class BenchDatabase(Managed):
    """Start (or create) the database, migrate it, seed it; undo all of it on exit."""

    def __init__(
        self,
        workdir: Path,
        database_url: str | None = None,
        *,
        name: str | None = None,
        server: BenchDatabase | None = None,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url or None
        self.name = name or f"rb_bench_{os.getpid()}"
        self.server = server  # the database whose server this one shares (`sibling`)
        self.embedded: EmbeddedPostgres | None = None
        self.created: str | None = None
        self.admin_dsn: str | None = None
        self.dsn = ""

    @property
    def kind(self) -> str:
        if self.server is not None:
            return self.server.kind
        return "embedded" if self.embedded is not None else "DATABASE_URL"

    def sibling(self, label: str) -> BenchDatabase:
        """Another fresh database on the same server (migrated, bench schema; dropped on exit)."""
        name = f"rb_bench_{label.replace('-', '_')}_{os.getpid()}"
        return BenchDatabase(self.workdir, self.dsn, name=name, server=self)

    def start(self) -> None:
        if self.database_url is None:
            self.embedded = EmbeddedPostgres(self.workdir / "postgres")
            self.dsn = self.embedded.start()
        else:
            self.admin_dsn = self.database_url
            name = self.name
            asyncio.run(
                _execute(
                    self.admin_dsn,
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                    f'CREATE DATABASE "{name}"',
                )
            )
            self.created = name
            self.dsn = with_database(self.admin_dsn, name)
        asyncio.run(migrate(self.dsn, demo=True))  # the bench writes to the demo tables
        asyncio.run(_execute(self.dsn, BENCH_SCHEMA))

    def stop(self) -> None:
        if self.created is not None and self.admin_dsn is not None:
            name, self.created = self.created, None
            try:
                asyncio.run(
                    _execute(self.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                )
            except (OSError, asyncpg.PostgresError) as exc:
                print(f"bench: could not drop database {name}: {exc}")
        if self.embedded is not None:
            embedded, self.embedded = self.embedded, None
            embedded.stop("immediate")

    def seed(self, users: int) -> None:
        """One open position per user u0 … u<users-1> (id = index + 1), in both tables."""
        asyncio.run(_seed(self.dsn, users))

    def outbox_head(self) -> int:
        """The newest outbox id (changes after it belong to the next run)."""
        value = asyncio.run(
            _fetchval(self.dsn, "SELECT coalesce(max(id), 0) FROM realtime_bridge.outbox")
        )
        return int(str(value))

    def sequencing_delays_ms(self, after_id: int) -> list[float]:
        """Trigger → numbered by the sequencer, per positions change after `after_id`, sorted.

        The trigger's clock_timestamp() is taken before COMMIT, so this includes the
        rest of the writer's transaction (and its commit).
        """
        return asyncio.run(_sequencing(self.dsn, after_id))

    def wait_settled(self, limit: float) -> None:
        """Wait (up to `limit` s) until every outbox row is numbered, the head stands still
        and this database's replication slots (the WAL leader's) have caught up with the WAL."""
        deadline = time.monotonic() + limit
        last: object = None
        while time.monotonic() < deadline:
            now = asyncio.run(
                _fetchval(
                    self.dsn,
                    "SELECT (SELECT last_seq FROM realtime_bridge.sequencer)::text || '/' || "
                    "(SELECT coalesce(max(pg_current_wal_lsn() - confirmed_flush_lsn), 0) > "
                    " 1048576 FROM pg_replication_slots WHERE database = current_database())::text"
                    " || '/' || "
                    "(SELECT count(*) FROM realtime_bridge.outbox WHERE seq IS NULL)::text",
                )
            )
            if now == last and str(now).endswith("/false/0"):
                return
            last = now
            time.sleep(0.25)

    def version(self) -> str:
        return str(asyncio.run(_fetchval(self.dsn, "SHOW server_version")))

    def setting(self, name: str) -> str:
        return str(asyncio.run(_fetchval(self.dsn, "SELECT current_setting($1)", name)))

    def postmaster(self) -> psutil.Process | None:
        """The embedded server's postmaster (its CPU is reported); None for DATABASE_URL."""
        if self.server is not None:
            return self.server.postmaster()
        if self.embedded is None:
            return None
        pid_file = self.embedded.pgdata / "postmaster.pid"
        try:
            return psutil.Process(int(pid_file.read_text().splitlines()[0]))
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
