"""The poll source on a real Postgres: what it finds, never misses and never repeats."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from realtime_bridge.change import Change
from realtime_bridge.errors import ConfigurationError
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.sources.base import SourceState
from realtime_bridge.sources.poll import PollSource, describe_tables
from tests.helpers import until

TABLES = ["public.positions", "public.portfolio_snapshots"]


def summary(changes: list[Change]) -> list[tuple[str, str | None, object]]:
    return [
        (
            c.operation,
            c.table,
            (c.record or c.old_record or {}).get("symbol")
            or (c.record or c.old_record or {}).get("total_value"),
        )
        for c in changes
    ]


async def insert_position(db: asyncpg.Connection, symbol: str, quantity: float = 10) -> int:
    value: int = await db.fetchval(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "VALUES ('u1', $1, $2, 100) RETURNING id",
        symbol,
        quantity,
    )
    return value


async def test_tables_are_read_by_their_cursor_column(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE public.notes (id bigint PRIMARY KEY, body text)")
    found = await describe_tables(db, [*TABLES, "notes"])
    assert [(t.qualified, t.cursor_column) for t in found] == [
        ("public.positions", "updated_at"),
        ("public.portfolio_snapshots", "created_at"),
        ("public.notes", None),
    ]
    with pytest.raises(ConfigurationError, match="no such table"):
        await describe_tables(db, ["public.nope"])
    await db.execute("CREATE TABLE public.keyless (name text)")
    with pytest.raises(ConfigurationError, match="no id column"):
        await describe_tables(db, ["public.keyless"])


async def test_inserts_updates_and_deletes_are_found_once_and_numbered(
    dsn: str, db: asyncpg.Connection, registry: PluginRegistry
) -> None:
    existing = await insert_position(db, "OLD")
    delivered: list[Change] = []
    source = PollSource(dsn, TABLES, delivered.extend, start_after=100)
    try:
        assert await source.poll() == []  # the first pass only looks

        new = await insert_position(db, "AAPL")
        await db.execute("UPDATE positions SET quantity = 12 WHERE id = $1", existing)
        await db.execute(
            "INSERT INTO portfolio_snapshots (user_id, total_value, cash, positions_value) "
            "VALUES ('u1', 1000, 500, 500)"
        )
        second = await source.poll()
        assert sorted(summary(second)) == [
            ("INSERT", "portfolio_snapshots", 1000),
            ("INSERT", "positions", "AAPL"),
            ("UPDATE", "positions", "OLD"),
        ]
        update = next(c for c in second if c.operation == "UPDATE")
        assert update.old_record is not None
        assert update.record is not None
        assert (update.old_record["quantity"], update.record["quantity"]) == (10, 12)

        await db.execute("DELETE FROM positions WHERE id = $1", new)
        third = await source.poll()
        assert summary(third) == [("DELETE", "positions", "AAPL")]
        assert third[0].old_record is not None
        assert third[0].old_record["id"] == new

        assert await source.poll() == []  # re-reading the lookback window repeats nothing
        assert [c.seq for c in delivered] == list(range(101, 105))
        assert source.status.last_seq == 104
        assert source.status.state is SourceState.CONNECTED

        # The same typed events as captured changes.
        events = registry.events_for(next(c for c in second if c.table == "positions"))
        typed = next(e for e in events if e.channel == "position-updates")
        assert typed.data is not None
        assert "market_value" in typed.data
    finally:
        await source.stop()


async def test_a_transaction_that_commits_late_with_an_older_timestamp_is_not_missed(
    dsn: str, db: asyncpg.Connection
) -> None:
    first = await insert_position(db, "SLOW")
    second = await insert_position(db, "FAST")
    sources = {
        "lookback": PollSource(dsn, TABLES, lambda _: None, lookback=30),
        "none": PollSource(dsn, TABLES, lambda _: None, lookback=0),
    }
    found: dict[str, list[Change]] = {name: [] for name in sources}
    slow = await asyncpg.connect(dsn)
    try:
        for source in sources.values():
            await source.poll()
        async with slow.transaction():
            # updated_at = now() = this transaction's start, before FAST's.
            await slow.execute("UPDATE positions SET quantity = 1 WHERE id = $1", first)
            await asyncio.sleep(0.05)
            await db.execute("UPDATE positions SET quantity = 2 WHERE id = $1", second)
            for name, source in sources.items():
                found[name] += await source.poll()
        for name, source in sources.items():
            found[name] += await source.poll()
            found[name] += await source.poll()
        assert summary(found["lookback"]) == [
            ("UPDATE", "positions", "FAST"),
            ("UPDATE", "positions", "SLOW"),
        ]
        # Without the lookback the cursor has moved past SLOW's timestamp.
        assert summary(found["none"]) == [("UPDATE", "positions", "FAST")]
    finally:
        await slow.close()
        for source in sources.values():
            await source.stop()


async def test_a_burst_larger_than_a_page_arrives_complete_in_order_and_once(
    dsn: str, db: asyncpg.Connection
) -> None:
    source = PollSource(dsn, TABLES, lambda _: None, page=100)
    try:
        await source.poll()
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
            "SELECT 'u' || n, 'S' || n, n, 1 FROM generate_series(1, 350) AS n"
        )
        changes = await source.poll()
        assert [c.record["symbol"] for c in changes if c.record] == [f"S{n}" for n in range(1, 351)]
        assert {c.operation for c in changes} == {"INSERT"}
        assert await source.poll() == []
    finally:
        await source.stop()


async def test_a_table_without_timestamps_is_read_by_id_and_late_inserts_are_caught(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        "CREATE TABLE public.notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)"
    )
    source = PollSource(dsn, ["public.notes"], lambda _: None, page=2)
    slow = await asyncpg.connect(dsn)
    try:
        await source.poll()
        async with slow.transaction():
            await slow.execute("INSERT INTO notes (body) VALUES ('late')")  # takes id 1
            await db.execute(
                "INSERT INTO notes (body) SELECT 'n' || n FROM generate_series(1, 5) n"
            )
            early = await source.poll()
        late = await source.poll()
        await db.execute("UPDATE notes SET body = 'edited' WHERE body = 'n1'")
        edited = await source.poll()
        assert [(c.operation, c.record and c.record["body"]) for c in early] == [
            ("INSERT", f"n{n}") for n in range(1, 6)
        ]
        assert [(c.operation, c.record and c.record["body"]) for c in late] == [("INSERT", "late")]
        assert [(c.operation, c.record and c.record["body"]) for c in edited] == [
            ("UPDATE", "edited")
        ]
        assert await source.poll() == []
    finally:
        await slow.close()
        await source.stop()


async def test_the_running_source_delivers_and_survives_a_dropped_connection(
    dsn: str, db: asyncpg.Connection
) -> None:
    delivered: list[Change] = []
    source = PollSource(dsn, TABLES, delivered.extend, interval=0.05)
    source.start()
    try:
        await until(lambda: source.status.state is SourceState.CONNECTED)
        await insert_position(db, "ONE")
        await until(lambda: len(delivered) == 1)
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await insert_position(db, "TWO")
        await until(lambda: len(delivered) == 2)
        await asyncio.sleep(0.2)  # a few more passes: nothing repeated
        assert summary(delivered) == [
            ("INSERT", "positions", "ONE"),
            ("INSERT", "positions", "TWO"),
        ]
        assert [c.seq for c in delivered] == [1, 2]
        assert source.status.reconnects >= 1
        assert source.status.state is SourceState.CONNECTED
        assert source.status.to_json()["role"] == "poller"
    finally:
        await source.stop()
    assert source.status.to_json()["state"] == "stopped"
