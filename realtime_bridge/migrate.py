"""Applies the SQL files in `supabase/migrations/` and records what ran.

Files are applied in name (timestamp) order, each in its own transaction,
under an advisory lock so two instances starting together do not race.
The files are idempotent on their own (so `supabase db push` can apply them
too); the record in ``realtime_bridge.schema_migrations`` makes re-running
`realtime-bridge migrate` a no-op.

The demo trading schema (`supabase/demo/`: positions, trades,
portfolio_snapshots, auto_trade_settings) is not a migration of the bridge:
it is applied only when asked (`demo=True`: the embedded database,
DEMO_SCHEMA=true, `realtime-bridge migrate --demo`), never to a user's
database by default. Its files keep their timestamps and share the ledger,
so a database that applied them back when they lived in `migrations/`
simply has them recorded, and nothing is re-run or undone.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from realtime_bridge.errors import MigrationError

logger = logging.getLogger(__name__)

MIGRATION_LOCK = 7305424202


def default_migrations_dir() -> Path:
    """The repository's migrations, or the copy shipped inside the package."""
    packaged = Path(__file__).parent / "migrations"
    source_tree = Path(__file__).resolve().parent.parent / "supabase" / "migrations"
    return source_tree if source_tree.is_dir() else packaged


def default_demo_dir() -> Path:
    """The demo schema's SQL, from the repository or the copy shipped inside the package."""
    packaged = Path(__file__).parent / "demo"
    source_tree = Path(__file__).resolve().parent.parent / "supabase" / "demo"
    return source_tree if source_tree.is_dir() else packaged


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations folder {directory} does not exist")
    return [Migration(p.name.split("_", 1)[0], p) for p in sorted(directory.glob("*.sql"))]


async def migrate(dsn: str, directory: Path | None = None, *, demo: bool = False) -> list[str]:
    """Apply pending migrations (and the demo schema if `demo`); return the versions applied."""
    migrations = discover(directory or default_migrations_dir())
    if demo:
        migrations = sorted([*migrations, *discover(default_demo_dir())], key=lambda m: m.version)
    conn = await asyncpg.connect(dsn, timeout=30)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        # Only when missing: a role that may use an installed outbox but not
        # create schemas still finds nothing to do here.
        if await conn.fetchval("SELECT to_regclass('realtime_bridge.schema_migrations')") is None:
            await conn.execute(
                """
                CREATE SCHEMA IF NOT EXISTS realtime_bridge;
                CREATE TABLE IF NOT EXISTS realtime_bridge.schema_migrations (
                    version    text PRIMARY KEY,
                    name       text NOT NULL,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                );
                """
            )
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch(
                "SELECT version, checksum FROM realtime_bridge.schema_migrations"
            )
        }
        for migration in migrations:
            if migration.version in done:
                if done[migration.version] != migration.checksum:
                    logger.warning(
                        "migration %s changed after it was applied; never edit a landed migration",
                        migration.path.name,
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO realtime_bridge.schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.path.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(f"{migration.path.name} failed: {exc}") from exc
            logger.info("applied migration %s", migration.path.name)
            applied_now.append(migration.version)
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        finally:
            await conn.close()
    return applied_now
