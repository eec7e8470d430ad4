"""The trigger path's sequencer, driven directly (no bridge): its cost per wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from realtime_bridge.change import Change
from realtime_bridge.sources.outbox import OutboxSource, init_connection
from tests.helpers import until

INSERT = "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, $2, $3, 1)"


def _counting_connect(
    counted: list[str],
) -> Callable[[str], Awaitable[asyncpg.Connection]]:
    """A connect function whose connections record every statement they send."""

    class Counting(asyncpg.Connection):  # type: ignore[misc]
        async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
            counted.append(query)
            return await super().execute(query, *args, **kwargs)

        async def fetch(self, query: str, *args: Any, **kwargs: Any) -> Any:
            counted.append(query)
            return await super().fetch(query, *args, **kwargs)

        async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
            counted.append(query)
            return await super().fetchval(query, *args, **kwargs)

        async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any:
            counted.append(query)
            return await super().fetchrow(query, *args, **kwargs)

    async def connect(dsn: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, connection_class=Counting)
        await init_connection(conn)
        return conn

    return connect


async def _wake_lock_held(db: asyncpg.Connection) -> bool:
    return bool(
        await db.fetchval(
            "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND mode = 'ExclusiveLock'"
            " AND ((classid::bigint << 32) | objid::bigint) = realtime_bridge.wake_key()"
        )
    )


async def _sequencer_asleep(db: asyncpg.Connection, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _wake_lock_held(db):
        assert loop.time() < deadline, "the sequencer never went to sleep"
        await asyncio.sleep(0.01)


async def test_the_sequencer_sends_one_statement_per_wake_up(
    dsn: str, db: asyncpg.Connection
) -> None:
    counted: list[str] = []
    received: list[Change] = []
    head = await db.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
    source = OutboxSource(
        dsn, received.extend, start_after=head, connect=_counting_connect(counted)
    )
    source.start()
    try:
        assert await source.wait_connected(10)
        assert source.status.role == "sequencer"
        wake_ups = 20
        await _sequencer_asleep(db)
        counted.clear()
        for i in range(wake_ups):
            # The sequencer sleeps: this commit notifies it, one wake-up each.
            await db.execute(INSERT, "u1", f"W{i}", i)
            await until(lambda i=i: len(received) == i + 1, what=f"change {i}")  # type: ignore[misc]
            await _sequencer_asleep(db)
        assert [(c.record or {})["symbol"] for c in received] == [f"W{i}" for i in range(wake_ups)]
        # Number, try the lock, the final drain and (next time) unlock: one round trip.
        assert len(counted) <= wake_ups, counted
    finally:
        await source.stop()


async def test_a_database_without_sequence_pass_is_sequenced_statement_by_statement(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute("DROP FUNCTION realtime_bridge.sequence_pass_with_xid(integer, boolean)")
    received: list[Change] = []
    head = await db.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
    source = OutboxSource(dsn, received.extend, start_after=head)
    source.start()
    try:
        assert await source.wait_connected(10)
        for i in range(3):
            await db.execute(INSERT, "u1", f"S{i}", i)
            await until(lambda i=i: len(received) == i + 1, what=f"change {i}")  # type: ignore[misc]
        assert [c.seq for c in received] == [head + 1, head + 2, head + 3]
    finally:
        await source.stop()
