"""The WAL source: what only the write-ahead log path has to get right.

The guarantees both capture paths share (order, outages, bursts, takeover)
are in test_outbox.py, parametrised over both.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ConfigurationError
from realtime_bridge.publish import broadcast
from realtime_bridge.sources.wal import WalSource
from realtime_bridge.testing import run_bridge, with_database
from tests.conftest import BridgeFactory, make_settings
from tests.helpers import http, sample, until

INSERT = "INSERT INTO positions (user_id, symbol, quantity, entry_price) VALUES ($1, $2, $3, 1)"


def wal_source(bridge: Any) -> WalSource:
    source = bridge.bridge.source
    assert isinstance(source, WalSource), source
    return source


async def test_auto_streams_the_wal_and_health_says_so(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(capture="auto")
    async with httpx.AsyncClient(base_url=bridge.url, headers=bridge.service_headers) as http:
        health = (await http.get("/health")).json()
        stats = (await http.get("/api/stats")).json()
    assert health["source"] == "wal"
    assert "publication" in health["mode_reason"]
    database = bridge.bridge.dsn.rsplit("/", 1)[1] if bridge.bridge.dsn else ""
    assert health["wal"]["slot"] == f"realtime_bridge_{database}"
    assert health["wal"]["slot_lag_bytes"] is not None
    assert stats["wal"]["publication"] == "supabase_realtime"


async def test_rows_from_the_wal_look_exactly_like_to_jsonb(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
        CREATE TYPE mood AS ENUM ('calm', 'wild');
        CREATE TABLE kinds (
            id bigint PRIMARY KEY, small smallint, big bigint, num numeric, nan numeric,
            f4 real, f8 double precision, inf double precision, flag boolean, t text,
            tz timestamptz, ts timestamp, d date, j json, jb jsonb, ints integer[],
            texts text[], nested integer[][], u uuid, m mood, dom positive_int, b bytea,
            empty text[], quoted text[]
        );
        SELECT realtime_bridge.track('kinds');
        """
    )
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(table="public.kinds")
        await db.execute(
            """
            INSERT INTO kinds VALUES (
                1, -3, 9007199254740993, 12.50, 'NaN', 1.5, -2.25e-10, 'Infinity', true,
                'line"1\\ntwo', '2026-12-02 13:14:15.123456+05:30', '2026-12-02 01:02:03',
                '2026-12-02', '{"a": [1, 2]}', '{"b": {"c": null}}', '{1,NULL,3}',
                '{"a b","c,d","\\"q\\"",NULL}', '{{1,2},{3,4}}',
                'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'wild', 7, '\\xdeadbeef', '{}',
                '{"", "NULL"}'
            )
            """
        )
        (event,) = await ws.changes(1)
    expected = await db.fetchval("SELECT to_jsonb(k)::text FROM kinds k WHERE id = 1")
    import orjson

    assert event["data"] == orjson.loads(expected)


async def test_a_table_added_to_the_publication_streams_with_no_other_step(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    await db.execute("ALTER PUBLICATION supabase_realtime ADD TABLE notes")
    async with bridge.websocket() as ws:
        subscribed = await ws.subscribe(table="public.notes")
        assert subscribed["type"] == "subscribed", subscribed
        await db.execute("INSERT INTO notes (body) VALUES ('hello')")
        (event,) = await ws.changes(1)
    assert event["data"] == {"id": 1, "body": "hello"}
    # No trigger was needed.
    triggers = await db.fetchval(
        "SELECT count(*) FROM realtime_bridge.capture_triggers('notes'::regclass)"
    )
    assert triggers == 0


async def test_a_column_added_mid_stream_is_in_the_next_change(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(table="public.positions")
        await db.execute(INSERT, "u1", "BEFORE", 1)
        (before,) = await ws.changes(1)
        await db.execute("ALTER TABLE positions ADD COLUMN note text DEFAULT 'n/a'")
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price, note) "
            "VALUES ('u1', 'AFTER', 1, 1, 'fresh')"
        )
        (after,) = await ws.changes(1)
    assert "note" not in before["data"]
    assert after["data"]["note"] == "fresh"
    assert after["seq"] == before["seq"] + 1


async def test_every_change_of_a_transaction_carries_its_one_commit_time(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(table="public.positions")
        async with db.transaction():
            await db.execute(INSERT, "u1", "A", 1)
            await asyncio.sleep(0.2)
            await db.execute(INSERT, "u1", "B", 2)
            await db.execute("UPDATE positions SET quantity = 5 WHERE symbol = 'A'")
        events = await ws.changes(3)
    assert [e["operation"] for e in events] == ["INSERT", "INSERT", "UPDATE"]
    assert [e["data"]["symbol"] for e in events] == ["A", "B", "A"]
    assert len({e["timestamp"] for e in events}) == 1


async def test_broadcast_in_a_transaction_is_a_logical_message_in_commit_order(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    payload = {"id": 1, "user_id": "u1", "symbol": "AAPL", "quantity": 3, "entry_price": 10}
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        async with db.transaction():
            await db.execute(INSERT, "u1", "ROW", 1)
            await broadcast("position-updates", "position_update", payload, conn=db)
        tx = db.transaction()
        await tx.start()
        await broadcast("position-updates", "position_update", payload, conn=db)
        await tx.rollback()
        events = await ws.changes(2)
        assert await ws.silent(0.5)
    assert [e["operation"] for e in events] == ["INSERT", "BROADCAST"]
    assert events[1]["seq"] == events[0]["seq"] + 1
    # Nothing was written to the outbox by the writer: the leader logged both.
    written = await db.fetchval(
        "SELECT count(*) FROM realtime_bridge.outbox WHERE operation = 'BROADCAST'"
    )
    assert written == 1


async def test_a_crash_between_logging_and_acknowledging_loses_and_duplicates_nothing(
    start_bridge: BridgeFactory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes = 0
    acknowledge = WalSource._acknowledge

    def crash_once(self: WalSource, lsn: int) -> None:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            # As if the process died here: logged and committed, never acknowledged.
            raise ConnectionError("simulated crash before the acknowledgement")
        acknowledge(self, lsn)

    monkeypatch.setattr(WalSource, "_acknowledge", crash_once)
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        subscribed = await ws.subscribe(table="public.positions")
        async with db.transaction():
            for i in range(5):
                await db.execute(INSERT, "u1", f"S{i}", i)
        for i in range(5, 8):
            await db.execute(INSERT, "u1", f"S{i}", i)
        events = await ws.changes(8, timeout=20)
        assert await ws.silent(1.0)
    assert crashes == 1
    assert [e["seq"] for e in events] == list(range(subscribed["seq"] + 1, subscribed["seq"] + 9))
    assert [e["data"]["symbol"] for e in events] == [f"S{i}" for i in range(8)]
    logged = await db.fetch(
        "SELECT seq, changes FROM realtime_bridge.outbox WHERE table_name = 'positions'"
        " ORDER BY seq"
    )
    assert sum(r["changes"] for r in logged) == 8
    assert wal_source(bridge).status.reconnects >= 1


async def test_changes_handed_on_before_the_log_failed_are_logged_again_with_their_seqs(
    start_bridge: BridgeFactory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader hands changes on before logging them: a failed log write loses nothing.

    The replay from the logged position numbers the same changes the same way, so the
    client sees each once, and the log ends up holding each once, under the seq the
    client saw.
    """
    failures = 0
    write_log = WalSource._write_log

    async def fail_once(self: WalSource, conn: asyncpg.Connection, batch: Any) -> None:
        nonlocal failures
        if failures == 0 and batch.changes:
            failures += 1
            raise ConnectionError("simulated loss of the database before the log write")
        await write_log(self, conn, batch)

    monkeypatch.setattr(WalSource, "_write_log", fail_once)
    bridge = await start_bridge(wal_log_interval=0.3)
    async with bridge.websocket() as ws:
        subscribed = await ws.subscribe(table="public.positions")
        async with db.transaction():
            for i in range(3):
                await db.execute(INSERT, "u1", f"S{i}", i)
        first = await ws.changes(3, timeout=20)
        # Handed on at once, though not logged for another 0.3 s.
        logged_then = await db.fetchval(
            "SELECT count(*) FROM realtime_bridge.outbox WHERE table_name = 'positions'"
        )
        for i in range(3, 6):
            await db.execute(INSERT, "u1", f"S{i}", i)
        rest = await ws.changes(3, timeout=20)
        assert await ws.silent(1.0)
    assert failures == 1
    assert logged_then == 0
    events = first + rest
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(subscribed["seq"] + 1, subscribed["seq"] + 7))
    assert [e["data"]["symbol"] for e in events] == [f"S{i}" for i in range(6)]
    await until(lambda: wal_source(bridge).logged_seq >= seqs[-1], timeout=10)
    rows = await db.fetch(
        "SELECT seq, batch, record::text AS record FROM realtime_bridge.outbox"
        " WHERE table_name = 'positions' ORDER BY seq"
    )
    logged = [
        (row["seq"] + i, record["symbol"])
        for row in rows
        for i, record in enumerate(
            json.loads(row["record"]) if row["batch"] else [json.loads(row["record"])]
        )
    ]
    assert logged == [(e["seq"], e["data"]["symbol"]) for e in events]
    assert wal_source(bridge).status.reconnects >= 1


async def test_metrics_show_the_slot_lag_and_what_waits_for_the_log(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(wal_log_interval=1.5)
    async with bridge.websocket() as ws, http(bridge) as client:
        await ws.subscribe(table="public.positions")
        await db.execute(INSERT, "u1", "LAG", 1)
        await ws.changes(1)
        waiting = (await client.get("/metrics")).text
        await until(lambda: wal_source(bridge).stats()["unlogged"] == 0, timeout=10)
        await until(lambda: wal_source(bridge).stats()["slot_lag_seconds"] == 0, timeout=10)
        settled = (await client.get("/metrics")).text
        health = (await client.get("/health")).json()
    # Handed on at once; held for the log (and the slot unacknowledged) until the batch goes.
    assert sample(waiting, "realtime_bridge_wal_unlogged_changes") == 1
    lag = sample(waiting, "realtime_bridge_wal_slot_lag_seconds")
    assert lag is not None
    assert 0 < lag < 10
    assert sample(settled, "realtime_bridge_wal_unlogged_changes") == 0
    assert sample(settled, "realtime_bridge_wal_slot_lag_seconds") == 0
    assert (sample(settled, "realtime_bridge_wal_statements_total") or 0) >= 1
    assert sample(settled, "realtime_bridge_wal_slot_lag_bytes") is not None
    assert health["wal"]["slot_lag_seconds"] == 0
    assert health["wal"]["logged_seq"] == health["last_seq"]


async def test_a_dropped_slot_is_recreated_and_every_client_told_to_resync(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        await db.execute(INSERT, "u1", "BEFORE", 1)
        (before,) = await ws.changes(1)
        # An operator drops the slot under the running bridge.
        for _ in range(100):
            await db.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = current_database() AND active_pid IS NOT NULL"
            )
            dropped = await db.fetchval(
                "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots"
                " WHERE database = current_database() AND NOT active"
            )
            if dropped:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("could not drop the slot")
        resync = await ws.recv(timeout=15)
        assert resync["type"] == "resync_required", resync
        await until(lambda: wal_source(bridge).status.state.value == "connected")
        await db.execute(INSERT, "u1", "AFTER", 1)
        (after,) = await ws.changes(1, timeout=10)
    assert after["data"]["symbol"] == "AFTER"
    assert after["seq"] > before["seq"] + 1  # the marker took a seq
    assert wal_source(bridge).slot_recreated == 1
    # A client resuming from before the gap is told the same.
    async with bridge.websocket() as late:
        await late.subscribe(channel="position-updates", since=before["seq"])
        frame = await late.recv()
        assert frame["type"] == "resync_required", frame


async def test_auto_uses_the_triggers_for_a_role_that_may_not_replicate(
    dsn: str, db: asyncpg.Connection
) -> None:
    await db.execute(
        """
        CREATE ROLE plain_writer LOGIN NOREPLICATION;
        GRANT ALL ON SCHEMA realtime_bridge, public TO plain_writer;
        GRANT ALL ON ALL TABLES IN SCHEMA realtime_bridge, public TO plain_writer;
        GRANT ALL ON ALL SEQUENCES IN SCHEMA realtime_bridge, public TO plain_writer;
        """
    )
    database = dsn.rsplit("/", 1)[1]
    plain = with_database(dsn.replace("postgres@", "plain_writer@"), database)
    settings = make_settings(plain, migrate_on_start=False)
    async with (
        run_bridge(settings) as bridge,
        httpx.AsyncClient(base_url=bridge.url, headers=bridge.service_headers) as http,
        bridge.websocket() as ws,
    ):
        health = (await http.get("/health")).json()
        assert health["source"] == "outbox"
        assert "REPLICATION" in health["mode_reason"]
        await ws.subscribe(channel="position-updates")
        await db.execute(INSERT, "u1", "TRIGGERED", 1)
        (event,) = await ws.changes(1)
        assert event["data"]["symbol"] == "TRIGGERED"
    await db.execute("DROP OWNED BY plain_writer; DROP ROLE plain_writer")


async def test_capture_wal_refuses_to_start_where_it_cannot_and_says_why(dsn: str) -> None:
    admin = await asyncpg.connect(dsn)
    await admin.execute("CREATE ROLE no_repl LOGIN NOREPLICATION SUPERUSER")
    await admin.execute("ALTER ROLE no_repl NOSUPERUSER")
    await admin.execute("GRANT ALL ON SCHEMA realtime_bridge TO no_repl")
    await admin.execute("GRANT ALL ON ALL TABLES IN SCHEMA realtime_bridge TO no_repl")
    database = dsn.rsplit("/", 1)[1]
    settings = make_settings(
        with_database(dsn.replace("postgres@", "no_repl@"), database),
        capture="wal",
        migrate_on_start=False,
    )
    with pytest.raises(ConfigurationError, match=r"CAPTURE=wal, but .* no REPLICATION attribute"):
        await Bridge(settings).start()
    await admin.execute("DROP OWNED BY no_repl; DROP ROLE no_repl")
    await admin.close()


async def test_timestamptz_text_is_rewritten_as_to_jsonb_writes_it_in_any_zone(
    db: asyncpg.Connection,
) -> None:
    # The WAL sends a timestamptz as text in the walsender's TimeZone; offsets
    # of whole hours (+HH), of minutes (+05:45) and, historically, of seconds.
    from realtime_bridge.sources.pgoutput import _timestamptz

    moments = ["2026-12-02 13:14:15.123456+00", "1850-01-01 12:00:00+00", "2026-06-01 00:00+00"]
    for zone in ["UTC", "Asia/Kolkata", "America/St_Johns", "Asia/Kathmandu", "Europe/Amsterdam"]:
        await db.execute(f"SET TimeZone = '{zone}'")
        for moment in moments:
            text, jsonb = await db.fetchrow(
                "SELECT $1::text::timestamptz::text, to_jsonb($1::text::timestamptz) #>> '{}'",
                moment,
            )
            assert _timestamptz(text) == jsonb, (zone, text)
