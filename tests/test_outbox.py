"""The outbox source: gap-free, commit-ordered, and nothing lost across outages."""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from realtime_bridge.change import Change
from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.migrate import migrate
from realtime_bridge.sources import SourceState
from realtime_bridge.sources.outbox import OutboxSource, init_connection
from realtime_bridge.testing import run_bridge
from tests.conftest import BOTH_CAPTURES, BridgeFactory, make_settings
from tests.helpers import until

pytestmark = BOTH_CAPTURES

INSERT = "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, $2, $3, 1)"


async def test_later_id_committed_first_is_not_skipped_and_order_follows_commits(
    start_bridge: BridgeFactory, dsn: str, capture: str
) -> None:
    bridge = await start_bridge()
    slow = await asyncpg.connect(dsn)
    fast = await asyncpg.connect(dsn)
    async with bridge.websocket() as ws:
        await ws.subscribe(table="public.positions")
        slow_tx = slow.transaction()
        await slow_tx.start()
        await slow.execute(INSERT, "u1", "SLOW", 1)  # takes the lower outbox id
        await fast.execute(INSERT, "u1", "FAST", 2)  # commits first
        # Delivered while the other transaction is still open: no head-of-line blocking.
        (first,) = await ws.changes(1)
        assert first["data"]["symbol"] == "FAST"
        await slow_tx.commit()
        (second,) = await ws.changes(1)
        assert second["data"]["symbol"] == "SLOW"
        assert second["seq"] == first["seq"] + 1
    if capture == "triggers":  # the trigger took outbox ids in statement order
        ids = await fast.fetch("SELECT id, seq FROM realtime_bridge.outbox ORDER BY id")
        assert [r["seq"] for r in ids] == [second["seq"], first["seq"]]
    await slow.close()
    await fast.close()


async def test_open_unrelated_transaction_does_not_hold_back_events(
    start_bridge: BridgeFactory, dsn: str
) -> None:
    bridge = await start_bridge()
    batch_job = await asyncpg.connect(dsn)
    writer = await asyncpg.connect(dsn)
    await writer.execute("CREATE TABLE untracked_jobs (id int)")
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        job = batch_job.transaction()
        await job.start()
        await batch_job.execute("INSERT INTO untracked_jobs VALUES (1)")  # holds an xid
        await writer.execute(INSERT, "u1", "AAPL", 1)
        (event,) = await ws.changes(1, timeout=5)
        assert event["data"]["symbol"] == "AAPL"
        await job.rollback()
    await batch_job.close()
    await writer.close()


async def test_concurrent_writers_produce_gap_free_increasing_seqs(
    start_bridge: BridgeFactory, dsn: str
) -> None:
    bridge = await start_bridge()
    writers, per_writer = 8, 150
    pool = await asyncpg.create_pool(dsn, min_size=writers, max_size=writers)

    async def write(worker: int) -> None:
        rng = random.Random(worker)
        async with pool.acquire() as conn:
            for i in range(per_writer):
                async with conn.transaction():
                    await conn.execute(INSERT, f"u{worker}", f"S{i}", i)
                    if rng.random() < 0.3:
                        await asyncio.sleep(rng.random() / 500)

    async with bridge.websocket() as ws:
        subscribed = await ws.subscribe(table="public.positions")
        await asyncio.gather(*(write(w) for w in range(writers)))
        events = await ws.changes(writers * per_writer, timeout=30)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(subscribed["seq"] + 1, subscribed["seq"] + 1 + len(seqs)))
    per_worker: dict[str, list[int]] = {}
    for event in events:
        per_worker.setdefault(event["user_id"], []).append(int(event["data"]["quantity"]))
    assert all(values == list(range(per_writer)) for values in per_worker.values())
    await pool.close()


async def test_same_row_updated_concurrently_ends_in_its_final_state(
    start_bridge: BridgeFactory, dsn: str
) -> None:
    bridge = await start_bridge()
    pool = await asyncpg.create_pool(dsn, min_size=6, max_size=6)
    row_id = await pool.fetchval(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "VALUES ('u1', 'AAPL', 0, 1) RETURNING id"
    )
    # Subscribe only once the INSERT has been routed, so it is not part of the stream.
    assert await bridge.bridge.hub.wait_for_head(1, timeout=10)

    async def bump(times: int) -> None:
        async with pool.acquire() as conn:
            for _ in range(times):
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE positions SET quantity = quantity + 1 WHERE id = $1", row_id
                    )
                    await asyncio.sleep(random.random() / 1000)

    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates", filters={"id": row_id})
        await asyncio.gather(*(bump(40) for _ in range(6)))
        events = await ws.changes(240, timeout=30)
    final = await pool.fetchval("SELECT quantity FROM positions WHERE id = $1", row_id)
    assert final == 240
    quantities = [e["data"]["quantity"] for e in events]
    assert quantities == sorted(quantities)
    assert quantities[-1] == 240
    await pool.close()


async def test_a_burst_of_100k_rows_in_one_transaction_arrives_complete_and_in_order(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    total = 100_000
    async with bridge.websocket() as ws:
        subscribed = await ws.subscribe(table="public.positions")
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
            "SELECT 'u' || (g % 100), 'S', g, 1 FROM generate_series(1, $1) g",
            total,
        )
        seqs: list[int] = []
        quantities: list[int] = []
        while len(seqs) < total:
            frame = orjson.loads(await asyncio.wait_for(ws.ws.recv(), 30))
            assert frame["type"] == "db_change", frame
            seqs.append(frame["seq"])
            quantities.append(frame["data"]["quantity"])
    start = subscribed["seq"] + 1
    assert seqs == list(range(start, start + total))
    assert quantities == list(range(1, total + 1))


async def test_dropped_database_connections_lose_nothing(
    start_bridge: BridgeFactory, dsn: str
) -> None:
    bridge = await start_bridge()
    admin = await asyncpg.connect(dsn)
    async with bridge.websocket() as ws:
        subscribed = await ws.subscribe(table="public.positions")
        await admin.execute(INSERT, "u1", "BEFORE", 1)
        for round_ in range(3):
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            # Committed while the bridge has no connection.
            for i in range(5):
                await admin.execute(INSERT, "u1", f"DURING{round_}", i)
        await admin.execute(INSERT, "u1", "AFTER", 1)
        events = await ws.changes(17, timeout=20)
        assert await ws.silent(0.5)
    assert [e["seq"] for e in events] == list(range(subscribed["seq"] + 1, subscribed["seq"] + 18))
    assert events[0]["data"]["symbol"] == "BEFORE"
    assert events[-1]["data"]["symbol"] == "AFTER"
    assert bridge.bridge.source is not None
    assert bridge.bridge.source.status.reconnects >= 1
    await admin.close()


async def test_recovery_stays_fast_after_many_consecutive_outages(
    start_bridge: BridgeFactory, dsn: str
) -> None:
    """Each outage is followed by a prompt reconnect, not an ever-longer backoff.

    The backoff used to be reset only when a session ended normally, which a
    session never does: after a handful of outages every reconnect waited the
    5 s cap even though Postgres was back at once.
    """
    bridge = await start_bridge()
    admin = await asyncpg.connect(dsn)
    source = bridge.bridge.source
    assert source is not None
    delays: list[float] = []
    loop = asyncio.get_running_loop()

    def reconnected(before: int) -> bool:
        return source.status.reconnects > before

    async with bridge.websocket() as ws:
        await ws.subscribe(table="public.positions")
        for round_ in range(8):
            before = source.status.reconnects
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await until(functools.partial(reconnected, before), what="the outage noticed")
            # Postgres accepts connections throughout: the commit is the moment to measure from.
            await admin.execute(INSERT, "u1", f"AFTER{round_}", round_)
            committed = loop.time()
            (event,) = await ws.changes(1, timeout=15)
            delays.append(loop.time() - committed)
            assert event["data"]["symbol"] == f"AFTER{round_}"
    await admin.close()
    print("delivery after each outage (s):", [round(d, 3) for d in delays])
    assert max(delays) < 3.0, delays


async def test_postgres_restart_is_survived_and_reported_by_health(
    tmp_path: Path, capture: str
) -> None:
    server = EmbeddedPostgres(tmp_path / "pg")
    dsn = await asyncio.to_thread(server.start)
    try:
        await migrate(dsn, demo=True)
        async with (
            run_bridge(make_settings(dsn, capture=capture)) as bridge,
            bridge.websocket() as ws,
            httpx.AsyncClient(base_url=bridge.url, headers=bridge.service_headers) as http,
        ):
            await ws.subscribe(channel="position-updates")
            conn = await asyncpg.connect(dsn)
            await conn.execute(INSERT, "u1", "BEFORE", 1)
            await conn.close()
            assert (await ws.changes(1))[0]["data"]["symbol"] == "BEFORE"

            await asyncio.to_thread(server.stop, "fast")
            health = await _wait_for_health(http, 503)
            assert health["source_status"]["state"] == "reconnecting"
            assert health["status"] == "degraded"

            await asyncio.to_thread(server.start)
            conn = await asyncpg.connect(dsn)
            for i in range(3):
                await conn.execute(INSERT, "u1", f"AFTER{i}", i)
            await conn.close()
            events = await ws.changes(3, timeout=20)
            assert [e["data"]["symbol"] for e in events] == ["AFTER0", "AFTER1", "AFTER2"]
            health = await _wait_for_health(http, 200)
            assert health["source_status"]["state"] == "connected"
    finally:
        await asyncio.to_thread(server.stop, "immediate")


async def _wait_for_health(http: httpx.AsyncClient, status: int) -> dict[str, Any]:
    for _ in range(200):
        response = await http.get("/health")
        if response.status_code == status:
            body: dict[str, Any] = response.json()
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health never answered {status}")


async def test_second_instance_follows_and_takes_over_when_the_sequencer_stops(
    dsn: str, capture: str
) -> None:
    conn = await asyncpg.connect(dsn)
    async with run_bridge(make_settings(dsn, capture=capture)) as follower:
        async with run_bridge(make_settings(dsn, capture=capture)) as leader:
            assert leader.bridge.source is not None
            assert follower.bridge.source is not None
            sources = (leader.bridge.source, follower.bridge.source)
            for _ in range(200):
                if all(s.status.state is SourceState.CONNECTED for s in sources):
                    break
                await asyncio.sleep(0.05)
            roles = {s.status.role for s in sources}
            assert roles == {"sequencer", "follower"}
            async with leader.websocket() as a, follower.websocket() as b:
                await a.subscribe(channel="position-updates")
                await b.subscribe(channel="position-updates")
                await conn.execute(INSERT, "u1", "BOTH", 1)
                (from_a,) = await a.changes(1)
                (from_b,) = await b.changes(1)
                assert from_a["seq"] == from_b["seq"]
                assert from_a["data"] == from_b["data"]
        # Whichever was the sequencer is gone now, or it was the follower
        # all along; either way the remaining instance must keep delivering.
        async with follower.websocket() as ws:
            await ws.subscribe(channel="position-updates")
            await conn.execute(INSERT, "u1", "LATER", 1)
            (event,) = await ws.changes(1, timeout=15)
            assert event["data"]["symbol"] == "LATER"
        assert follower.bridge.source is not None
        assert follower.bridge.source.status.role == "sequencer"
    await conn.close()


async def test_ws_helper_reports_unexpected_frames(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.send({"type": "ping"})
        with pytest.raises(AssertionError, match="pong"):
            await ws.changes(1)


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
    dsn: str, db: asyncpg.Connection, capture: str
) -> None:
    if capture == "wal":
        pytest.skip("the trigger path's sequencer; the WAL leader is counted in test_wal")
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
    dsn: str, db: asyncpg.Connection, capture: str
) -> None:
    if capture == "wal":
        pytest.skip("the trigger path's sequencer")
    await db.execute("DROP FUNCTION realtime_bridge.sequence_pass(integer, boolean)")
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
