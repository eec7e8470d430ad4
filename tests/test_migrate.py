"""Migrations: apply on a fresh database, re-apply as a no-op, capture what they promise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import subprocess
from pathlib import Path

import asyncpg
import httpx
import pytest

from realtime_bridge.migrate import default_demo_dir, default_migrations_dir, discover, migrate
from realtime_bridge.testing import TestDatabase, with_database
from tests.conftest import ROOT
from tests.test_cli import CLI, clean_env, free_port


async def test_migrate_applies_every_file_then_is_a_no_op(databases: TestDatabase) -> None:
    conn = await asyncpg.connect(databases.admin_dsn)
    try:
        await conn.execute('DROP DATABASE IF EXISTS "rb_migrate_fresh" WITH (FORCE)')
        await conn.execute('CREATE DATABASE "rb_migrate_fresh"')
    finally:
        await conn.close()
    fresh = with_database(databases.admin_dsn, "rb_migrate_fresh")
    files = discover(default_migrations_dir())
    assert [m.version for m in files] == sorted(m.version for m in files)

    assert await migrate(fresh) == [m.version for m in files]
    assert await migrate(fresh) == []

    db = await asyncpg.connect(fresh)
    try:
        recorded = await db.fetch(
            "SELECT version FROM realtime_bridge.schema_migrations ORDER BY 1"
        )
        assert [r["version"] for r in recorded] == [m.version for m in files]
    finally:
        await db.close()


async def test_files_are_idempotent_sql_on_their_own(db: asyncpg.Connection) -> None:
    # `supabase db push` applies the same files without our bookkeeping:
    # applying every file again over a migrated database must succeed.
    for migration in discover(default_migrations_dir()):
        await db.execute(migration.sql)
    count = await db.fetchval("SELECT count(*) FROM realtime_bridge.sequencer")
    assert count == 1


async def test_demo_tables_have_named_capture_triggers(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        """
        SELECT DISTINCT trigger_name, event_object_table
        FROM information_schema.triggers WHERE trigger_schema = 'public'
        """
    )
    found = {(r["trigger_name"], r["event_object_table"]) for r in rows}
    assert {
        ("position_change_trigger", "positions"),
        ("position_change_trigger_update", "positions"),
        ("position_change_trigger_delete", "positions"),
        ("trade_executed_trigger", "trades"),
        ("portfolio_update_trigger", "portfolio_snapshots"),
    } <= found


async def test_publication_contains_demo_tables(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'supabase_realtime'"
    )
    assert {r["tablename"] for r in rows} >= {"positions", "trades", "portfolio_snapshots"}


async def test_capture_writes_insert_update_delete_with_old_rows(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "VALUES ('u1', 'AAPL', 1, 10)"
    )
    await db.execute("UPDATE positions SET quantity = 2")
    await db.execute("DELETE FROM positions")
    rows = await db.fetch(
        """
        SELECT operation, changes, batch,
               coalesce(record->0, record)->>'quantity' AS new_qty,
               coalesce(old_record->0, old_record)->>'quantity' AS old_qty
        FROM realtime_bridge.outbox ORDER BY id
        """
    )
    # INSERT and DELETE are captured per statement (arrays), UPDATE per row.
    assert [tuple(r) for r in rows] == [
        ("INSERT", 1, True, "1", None),
        ("UPDATE", 1, False, "2", "1"),
        ("DELETE", 1, True, None, "2"),
    ]


async def test_multi_row_statements_are_captured_in_chunks_of_1000(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "SELECT 'u', 'S', g, 1 FROM generate_series(1, 2500) g"
    )
    await db.execute("DELETE FROM positions WHERE quantity <= 10")
    await db.execute("UPDATE positions SET quantity = -quantity WHERE quantity > 2495")
    rows = await db.fetch(
        "SELECT operation, changes, jsonb_array_length(coalesce(record, old_record)) AS n, "
        "(coalesce(record, old_record)->0->>'quantity')::int AS first "
        "FROM realtime_bridge.outbox WHERE batch ORDER BY id"
    )
    assert [tuple(r) for r in rows] == [
        ("INSERT", 1000, 1000, 1),
        ("INSERT", 1000, 1000, 1001),
        ("INSERT", 500, 500, 2001),
        ("DELETE", 10, 10, 1),
    ]
    updates = await db.fetchval(
        "SELECT count(*) FROM realtime_bridge.outbox WHERE operation = 'UPDATE' AND NOT batch"
    )
    assert updates == 5
    # A statement touching no rows writes nothing.
    await db.execute("DELETE FROM positions WHERE false")
    assert await db.fetchval("SELECT count(*) FROM realtime_bridge.outbox") == 9


async def test_track_and_untrack_any_table(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE public.settings_demo (id int PRIMARY KEY, value text)")
    await db.execute("SELECT realtime_bridge.track('public.settings_demo')")
    await db.execute("SELECT realtime_bridge.track('public.settings_demo')")  # idempotent
    await db.execute("INSERT INTO settings_demo VALUES (1, 'a')")
    tracked = await db.fetch("SELECT table_name FROM realtime_bridge.tracked_tables")
    assert "settings_demo" in {r["table_name"] for r in tracked}

    await db.execute("SELECT realtime_bridge.untrack('public.settings_demo')")
    await db.execute("INSERT INTO settings_demo VALUES (2, 'b')")
    captured = await db.fetch(
        "SELECT record->0->>'id' AS id FROM realtime_bridge.outbox "
        "WHERE table_name = 'settings_demo'"
    )
    assert [r["id"] for r in captured] == ["1"]


async def test_prune_removes_only_numbered_rows_past_retention(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1', 'A', 1, 1)"
    )
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ('u1', 'B', 1, 1)"
    )
    # Number the first row and age both beyond the retention window.
    await db.execute(
        "UPDATE realtime_bridge.outbox SET seq = 1 "
        "WHERE id = (SELECT min(id) FROM realtime_bridge.outbox)"
    )
    await db.execute("UPDATE realtime_bridge.outbox SET created_at = now() - interval '2 days'")
    assert await db.fetchval("SELECT realtime_bridge.prune()") == 1
    remaining = await db.fetchval("SELECT count(*) FROM realtime_bridge.outbox WHERE seq IS NULL")
    assert remaining == 1

    await db.execute("UPDATE realtime_bridge.settings SET value = '3 days' WHERE key = 'retention'")
    await db.execute("UPDATE realtime_bridge.outbox SET seq = 2")
    assert await db.fetchval("SELECT realtime_bridge.prune()") == 0


DEMO_TABLES = [
    "activity_logs",
    "auto_trade_settings",
    "bots",
    "challenge_trades",
    "challenges",
    "exits",
    "orders",
    "portfolio_snapshots",
    "positions",
    "trades",
]


DEMO_NAMES = (
    r"\b(positions|trades|portfolio_snapshots|auto_trade|bots|orders|activity_logs"
    r"|challenges|challenge_trades)"
)


async def empty_database(databases: TestDatabase, name: str) -> str:
    """A new database with nothing in it (not cloned from the migrated template)."""
    conn = await asyncpg.connect(databases.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(databases.admin_dsn, name)


async def public_tables(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
    finally:
        await conn.close()
    return [r["tablename"] for r in rows]


async def test_migrate_leaves_the_demo_schema_out_unless_asked(databases: TestDatabase) -> None:
    plain = await empty_database(databases, "rb_migrate_plain")
    applied = await migrate(plain)
    assert applied == [m.version for m in discover(default_migrations_dir())]
    assert await public_tables(plain) == []
    demo = await migrate(plain, demo=True)
    assert demo == [m.version for m in discover(default_demo_dir())]
    assert await public_tables(plain) == DEMO_TABLES


def test_the_demo_files_are_not_in_the_migrations_folder() -> None:
    migrations = {m.path.name for m in discover(default_migrations_dir())}
    demo = {m.path.name for m in discover(default_demo_dir())}
    assert demo == {
        "20261123000500_trading_schema.sql",
        "20261123000600_auto_trade_settings.sql",
        "20261203120000_exits.sql",
        "20261203140500_bots_orders_activity_logs.sql",
        "20261204100000_challenges.sql",
    }
    assert not migrations & demo
    for migration in discover(default_migrations_dir()):
        assert not re.search(DEMO_NAMES, migration.sql)


async def test_a_database_that_applied_the_demo_before_it_moved_is_left_as_it_is(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The template applied every file with the demo, as migrations did when
    # the demo lived in migrations/: the ledger holds its versions.
    caplog.set_level(logging.WARNING, "realtime_bridge.migrate")
    assert await migrate(dsn) == []
    assert await migrate(dsn, demo=True) == []
    assert not caplog.records
    assert set(DEMO_TABLES) <= set(await public_tables(dsn))


def test_migrate_command_creates_no_demo_tables_then_does_with_demo(
    databases: TestDatabase,
) -> None:
    plain = asyncio.run(empty_database(databases, "rb_migrate_cli"))
    env = clean_env(DATABASE_URL=plain)
    migrated = subprocess.run(
        [*CLI, "migrate"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr
    assert asyncio.run(public_tables(plain)) == []
    with_demo = subprocess.run(
        [*CLI, "migrate", "--demo"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert with_demo.returncode == 0, with_demo.stderr
    assert asyncio.run(public_tables(plain)) == DEMO_TABLES


async def test_serve_on_a_plain_database_creates_no_demo_tables_and_says_what_is_missing(
    databases: TestDatabase, tmp_path: Path
) -> None:
    plain = await empty_database(databases, "rb_serve_plain")
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    log = tmp_path / "serve.log"
    port = free_port()
    env = clean_env(DATABASE_URL=plain, PORT=str(port))
    with log.open("w") as out:
        process = subprocess.Popen(
            [*CLI, "serve"], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(log.read_text())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    assert await public_tables(plain) == []
    missing = [line for line in log.read_text().splitlines() if "does not exist" in line]
    tables = (
        "positions",
        "trades",
        "portfolio_snapshots",
        "bots",
        "orders",
        "activity_logs",
        "challenges",
    )
    for table in tables:
        (line,) = [m for m in missing if f"table public.{table}," in m]
        assert "--demo" in line
    assert len(missing) == len(tables)
