"""The benchmark's Postgres: a fresh embedded server, or a fresh database on DATABASE_URL."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.migrate import migrate


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _fetchval(dsn: str, query: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def _fetch_floats(dsn: str, query: str, *args: object) -> list[float]:
    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        return [float(r[0]) for r in await conn.fetch(query, *args)]
    finally:
        await conn.close()


class BenchDatabase:
    """Start (or create) the database, migrate it, seed it; undo all of it on exit."""

    def __init__(self, workdir: Path, database_url: str | None = None) -> None:
        self.workdir = workdir
        self.database_url = database_url or None
        self.embedded: EmbeddedPostgres | None = None
        self.created: str | None = None
        self.admin_dsn: str | None = None
        self.dsn = ""

    def __enter__(self) -> BenchDatabase:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def kind(self) -> str:
        return "embedded" if self.embedded is not None else "DATABASE_URL"

    def start(self) -> None:
        if self.database_url is None:
            self.embedded = EmbeddedPostgres(self.workdir / "postgres")
            self.dsn = self.embedded.start()
        else:
            self.admin_dsn = self.database_url
            name = f"rb_bench_{os.getpid()}"
            asyncio.run(
                _execute(
                    self.admin_dsn,
                    f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                    f'CREATE DATABASE "{name}"',
                )
            )
            self.created = name
            self.dsn = with_database(self.admin_dsn, name)
        asyncio.run(migrate(self.dsn))

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

    def seed_positions(self, users: int) -> None:
        """One open position per user u0 … u<users-1>, with id = user index + 1."""
        asyncio.run(
            _execute(
                self.dsn,
                "DELETE FROM public.positions",
                "INSERT INTO public.positions "
                "(id, user_id, symbol, quantity, entry_price, current_price) "
                "SELECT g, 'u' || (g - 1), 'BENCH', -1, 100, 100 "
                f"FROM generate_series(1, {users}) g",
            )
        )

    def outbox_head(self) -> int:
        """The newest outbox id (changes after it belong to the next run)."""
        return int(
            str(
                asyncio.run(
                    _fetchval(self.dsn, "SELECT coalesce(max(id), 0) FROM realtime_bridge.outbox")
                )
            )
        )

    def sequencing_delays_ms(self, after_id: int) -> list[float]:
        """Trigger → numbered by the sequencer, per positions change after `after_id`, sorted.

        The trigger's clock_timestamp() is taken before COMMIT, so this includes the
        rest of the writer's transaction.
        """
        return asyncio.run(
            _fetch_floats(
                self.dsn,
                "SELECT extract(epoch FROM sequenced_at - created_at) * 1000 "
                "FROM realtime_bridge.outbox "
                "WHERE id > $1 AND table_name = 'positions' AND sequenced_at IS NOT NULL "
                "ORDER BY 1",
                after_id,
            )
        )

    def version(self) -> str:
        return str(asyncio.run(_fetchval(self.dsn, "SHOW server_version")))

    def postmaster(self) -> psutil.Process | None:
        """The embedded server's postmaster (its CPU is reported); None for DATABASE_URL."""
        if self.embedded is None:
            return None
        pid_file = self.embedded.pgdata / "postmaster.pid"
        try:
            return psutil.Process(int(pid_file.read_text().splitlines()[0]))
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
