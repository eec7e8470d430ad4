"""A DATABASE_URL whose role cannot install the capture triggers: the bridge polls instead.

Each test gets a fresh database holding the trading tables but no
``realtime_bridge`` schema (no outbox, no capture triggers) and a login role
that may only read those tables; an admin connection writes the changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ConfigurationError
from realtime_bridge.sources.poll import PollSource
from realtime_bridge.testing import RunningBridge, TestDatabase, run_bridge
from tests.conftest import make_settings
from tests.helpers import http, insert_position, sample

TRADING_TABLES = "public.positions, public.trades, public.portfolio_snapshots"
_roles = itertools.count(1)


def as_role(dsn: str, user: str, password: str) -> str:
    """`dsn` logging in as another role."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, ""))


@dataclass
class Database:
    admin: str  # the DSN of a superuser
    reader: str  # the DSN of a role that may only SELECT the trading tables
    role: str


@contextlib.asynccontextmanager
async def plain_database(
    databases: TestDatabase, *, capture: bool = False
) -> AsyncIterator[Database]:
    """The trading tables (without capture unless `capture`), and a read-only role for them."""
    admin = await databases.create()
    role = f"rb_reader_{os.getpid()}_{next(_roles)}"
    conn = await asyncpg.connect(admin)
    try:
        if not capture:
            await conn.execute("DROP SCHEMA realtime_bridge CASCADE")  # the outbox and triggers
        await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader'")
        await conn.execute(f"GRANT SELECT ON {TRADING_TABLES} TO {role}")
        yield Database(admin, as_role(admin, role, "reader"), role)
    finally:
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()


@pytest.fixture
async def plain(databases: TestDatabase) -> AsyncIterator[Database]:
    async with plain_database(databases) as database:
        yield database


@pytest.fixture
async def admin_db(plain: Database) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(plain.admin)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def polling_bridge(dsn: str, **settings: Any) -> AsyncIterator[RunningBridge]:
    async with run_bridge(make_settings(dsn, poll_interval=0.1, **settings)) as bridge:
        assert isinstance(bridge.bridge.source, PollSource)
        assert await bridge.bridge.source.wait_connected(10)
        yield bridge


def keys(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(e["operation"], (e["data"] or e["old"] or {}).get("symbol")) for e in events]


async def capture_objects(conn: asyncpg.Connection) -> tuple[bool, list[str]]:
    """Whether the realtime_bridge schema exists, and the triggers on positions."""
    schema = await conn.fetchval("SELECT to_regnamespace('realtime_bridge') IS NOT NULL")
    triggers = await conn.fetch(
        "SELECT DISTINCT trigger_name FROM information_schema.triggers "
        "WHERE event_object_table = 'positions' ORDER BY 1"
    )
    return schema, [r["trigger_name"] for r in triggers]


async def test_without_trigger_privileges_every_change_arrives_by_polling(
    plain: Database, admin_db: asyncpg.Connection
) -> None:
    async with polling_bridge(plain.reader) as bridge:
        ok, health = bridge.bridge.health()
        assert ok, health
        assert (health["status"], health["source"], health["mode"]) == ("ok", "poll", "polling")
        assert health["mode_reason"] == (
            "this database role cannot install the capture triggers; polling the tables every 0.1 s"
        )
        assert "permission denied for database" in health["mode_detail"]
        assert health["mode_switches"] == 0

        async with (
            bridge.websocket() as service,
            bridge.websocket(key=bridge.user_token("u1")) as user,
        ):
            assert (await service.subscribe(channel="position-updates"))["type"] == "subscribed"
            assert (await user.subscribe(channel="position-updates"))["type"] == "subscribed"
            # Changes between two passes merge (see sources/poll.py), so each
            # write here waits for its event.
            events = []
            a = await insert_position(admin_db, "u1", "A")
            events += await service.changes(1)
            b = await insert_position(admin_db, "u2", "B")
            events += await service.changes(1)
            await admin_db.execute("UPDATE positions SET current_price = 120 WHERE id = $1", a)
            events += await service.changes(1)
            await admin_db.execute("DELETE FROM positions WHERE id = $1", b)
            events += await service.changes(1)
            assert keys(events) == [
                ("INSERT", "A"),
                ("INSERT", "B"),
                ("UPDATE", "A"),
                ("DELETE", "B"),
            ]
            assert [e["event"] for e in events] == ["position_update"] * 4
            assert events[0]["data"]["market_value"] == 1100.0  # typed by the plugin
            assert events[2]["data"]["current_price"] == 120.0
            assert events[2]["old"]["current_price"] == 110.0
            seqs = [e["seq"] for e in events]
            assert seqs == sorted(set(seqs)), seqs
            # The row scope holds while polling: u1 sees only its own rows.
            assert keys(await user.changes(2)) == [("INSERT", "A"), ("UPDATE", "A")]
            # Later passes re-read the lookback window but deliver nothing twice.
            assert await service.silent(0.5)
            assert await user.silent(0.1)

        # A client that reconnects with `since` gets what it missed, once.
        c = await insert_position(admin_db, "u1", "C")
        async with bridge.websocket() as again:
            reply = await again.subscribe(channel="position-updates", since=seqs[-1])
            assert reply["type"] == "subscribed", reply
            (missed,) = await again.changes(1)
            assert (missed["operation"], missed["data"]["id"], missed["seq"]) == (
                "INSERT",
                c,
                seqs[-1] + 1,
            )
            assert await again.silent(0.4)

        async with http(bridge) as client:
            served = (await client.get("/health")).json()
            assert (served["source"], served["mode"]) == ("poll", "polling")
            assert "permission denied" in served["mode_detail"]
            # Without the service key the error (naming the database) is left out.
            async with httpx.AsyncClient(base_url=bridge.url) as anonymous:
                public = (await anonymous.get("/health")).json()
            assert public["mode_reason"] == health["mode_reason"]
            assert "mode_detail" not in public
            stats = (await client.get("/api/stats")).json()
            assert stats["mode"] == "polling"
            assert stats["mode_reason"] == health["mode_reason"]
            metrics = (await client.get("/metrics")).text
            assert sample(metrics, "realtime_bridge_mode", source="poll", mode="polling") == 1
            # Publishing needs the outbox: a clear 503, and the service keeps running.
            refused = await client.post(
                "/api/broadcast", json={"channel": "position-updates", "payload": {"id": 1}}
            )
            assert refused.status_code == 503
            assert refused.json()["code"] == "unavailable"
            assert "publishing needs the outbox" in refused.json()["message"]
            assert (await client.get("/health")).status_code == 200

    # Nothing was installed in the database.
    schema, triggers = await capture_objects(admin_db)
    assert schema is False
    assert triggers == ["positions_touch_updated_at"]


async def test_only_readable_plugin_tables_with_an_id_are_polled(plain: Database) -> None:
    conn = await asyncpg.connect(plain.admin)
    try:
        await conn.execute(f"REVOKE SELECT ON public.trades FROM {plain.role}")
        # A table without an id column cannot be polled (ids tell rows apart).
        await conn.execute("ALTER TABLE public.portfolio_snapshots RENAME COLUMN id TO snap_id")
    finally:
        await conn.close()
    async with polling_bridge(plain.reader) as bridge:
        source = bridge.bridge.source
        assert isinstance(source, PollSource)
        assert [t.qualified for t in source.tables] == ["public.positions"]
        assert bridge.bridge.health()[0]
        async with bridge.websocket() as ws:
            reply = await ws.subscribe(table="public.trades")
            assert reply["type"] == "error"
            assert reply["code"] == "unknown_table"
            assert "only the plugins' tables" in reply["message"]
            assert (await ws.subscribe(channel="position-updates"))["type"] == "subscribed"


async def test_capture_outbox_refuses_to_start_without_the_privileges(plain: Database) -> None:
    bridge = Bridge(make_settings(plain.reader, capture="outbox"))
    with pytest.raises(ConfigurationError, match="CAPTURE=outbox, but this database role cannot"):
        await bridge.start()
    assert bridge.pool is not None
    assert bridge.pool.is_closing()  # what start opened, it closed
    assert bridge.source is None


async def test_capture_poll_installs_nothing_even_where_it_could(
    plain: Database, admin_db: asyncpg.Connection
) -> None:
    async with polling_bridge(plain.admin, capture="poll") as bridge:
        assert bridge.bridge.mode()["mode_reason"].startswith("CAPTURE=poll; polling")
        async with bridge.websocket() as ws:
            await ws.subscribe(channel="position-updates")
            await insert_position(admin_db, "u1", "P")
            (event,) = await ws.changes(1)
            assert (event["operation"], event["data"]["symbol"]) == ("INSERT", "P")
    schema, triggers = await capture_objects(admin_db)
    assert schema is False
    assert triggers == ["positions_touch_updated_at"]


async def test_a_role_granted_an_installed_outbox_uses_it_without_creating_anything(
    databases: TestDatabase,
) -> None:
    """An admin ran the migrations and granted the outbox: realtime, not polling."""
    async with plain_database(databases, capture=True) as database:
        admin = await asyncpg.connect(database.admin)
        try:
            await admin.execute(
                f"""
                GRANT USAGE ON SCHEMA realtime_bridge TO {database.role};
                GRANT SELECT, UPDATE, DELETE ON ALL TABLES IN SCHEMA realtime_bridge
                    TO {database.role};
                """
            )
            async with run_bridge(make_settings(database.reader)) as bridge:
                health = bridge.bridge.health()[1]
                assert (health["source"], health["mode"]) == ("outbox", "realtime")
                async with bridge.websocket() as ws:
                    await ws.subscribe(channel="position-updates")
                    await insert_position(admin, "u1", "R")
                    (event,) = await ws.changes(1)
                    assert (event["operation"], event["data"]["symbol"]) == ("INSERT", "R")
                    assert event["seq"] == 1
        finally:
            await admin.close()


async def health_once(client: httpx.AsyncClient, status: int) -> httpx.Response:
    """`/health` once it answers `status` (the last answer after 10 s)."""
    for _ in range(200):
        response = await client.get("/health")
        if response.status_code == status:
            break
        await asyncio.sleep(0.05)
    return response


async def test_health_degrades_while_polling_cannot_reach_the_database(
    plain: Database, admin_db: asyncpg.Connection
) -> None:
    async with polling_bridge(plain.reader) as bridge:
        await admin_db.execute(f"REVOKE SELECT ON public.positions FROM {plain.role}")
        async with http(bridge) as client:
            response = await health_once(client, 503)
            assert response.status_code == 503
            body = response.json()
            assert (body["status"], body["mode"]) == ("degraded", "polling")
            assert "permission denied" in body["source_status"]["last_error"]
            await admin_db.execute(f"GRANT SELECT ON public.positions TO {plain.role}")
            assert (await health_once(client, 200)).status_code == 200


async def test_a_missing_or_read_only_outbox_is_named_as_the_reason_for_polling(
    databases: TestDatabase,
) -> None:
    async with (
        plain_database(databases) as plain,
        polling_bridge(plain.admin, migrate_on_start=False) as bridge,
    ):
        reason = bridge.bridge.mode()["mode_reason"]
        assert reason.startswith("the outbox is not installed (run `realtime-bridge migrate`);")
    async with plain_database(databases, capture=True) as granted:
        admin = await asyncpg.connect(granted.admin)
        try:
            await admin.execute(
                f"GRANT USAGE ON SCHEMA realtime_bridge TO {granted.role};"
                f"GRANT SELECT ON ALL TABLES IN SCHEMA realtime_bridge TO {granted.role};"
            )
        finally:
            await admin.close()
        async with polling_bridge(granted.reader) as bridge:
            reason = bridge.bridge.mode()["mode_reason"]
            assert reason.startswith("this database role may not number the outbox")


async def test_a_snapshot_while_polling_is_followed_from_its_seq(
    plain: Database, admin_db: asyncpg.Connection
) -> None:
    async with polling_bridge(plain.reader) as bridge:
        first = await insert_position(admin_db, "u1", "S1")
        assert await bridge.bridge.hub.wait_for_head(1, timeout=5)
        async with http(bridge) as client:
            response = await client.get("/api/channels/position-updates/snapshot")
        assert response.status_code == 200, response.text
        snapshot = response.json()
        assert snapshot["seq"] == 1
        assert [r["id"] for r in snapshot["records"]] == [first]
        second = await insert_position(admin_db, "u1", "S2")
        async with bridge.websocket() as ws:
            await ws.subscribe(channel="position-updates", since=snapshot["seq"])
            (event,) = await ws.changes(1)
            assert (event["seq"], event["data"]["id"]) == (2, second)
            assert await ws.silent(0.3)
