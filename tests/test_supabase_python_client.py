"""The official Python `realtime` client (PyPI, pinned in pyproject) against a running bridge.

Written the way its README and supabase-py use it; the only change from an
app talking to hosted Supabase is the URL and the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient
from realtime import RealtimePostgresChangesListenEvent as Listen

from realtime_bridge.testing import RunningBridge
from tests.conftest import BOTH_CAPTURES, BridgeFactory
from tests.filter_compat import (
    FILTER_CASES,
    FILTER_TABLE,
    filter_expectations,
    insert_filter_rows,
)
from tests.helpers import until

INSERT = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, $3, 100, 110) RETURNING id"
)


@contextlib.asynccontextmanager
async def client(bridge: RunningBridge, key: str) -> AsyncIterator[AsyncRealtimeClient]:
    realtime = AsyncRealtimeClient(f"{bridge.url}/realtime/v1", key, auto_reconnect=False)
    await realtime.connect()
    try:
        yield realtime
    finally:
        await realtime.close()


async def subscribe(channel: AsyncRealtimeChannel) -> list[tuple[str, str | None]]:
    states: list[tuple[str, str | None]] = []
    await channel.subscribe(
        lambda state, error: states.append((state.value, str(error) if error else None))
    )
    return states


async def test_the_python_client_works_unchanged(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with client(bridge, bridge.anon_key) as alice, client(bridge, bridge.service_key) as ops:
        # supabase-py hands the signed-in user's token to realtime with set_auth.
        await alice.set_auth(bridge.user_token("u1"))
        changes: list[dict[str, Any]] = []
        heard: list[dict[str, Any]] = []
        system: list[Any] = []
        room = alice.channel(
            "room1",
            {
                "config": {
                    "broadcast": {"self": True, "ack": True},
                    "presence": {"key": "alice", "enabled": True},
                    "private": False,
                }
            },
        )
        for event in ("INSERT", "UPDATE", "DELETE"):
            room.on_postgres_changes(
                event,  # type: ignore[arg-type]
                table="positions",
                filter="symbol=in.(AAPL,MSFT)",
                callback=lambda payload: changes.append(dict(payload)),
            )
        room.on_broadcast("cursor", lambda message: heard.append(dict(message)))
        room.on_system(system.append)
        presence_syncs: list[dict[str, Any]] = []
        room.on_presence_sync(lambda: presence_syncs.append(dict(room.presence_state())))
        assert await subscribe(room) == [("SUBSCRIBED", None)]
        await until(lambda: bool(system), 8, what="Subscribed to PostgreSQL")
        assert system[0].message == "Subscribed to PostgreSQL"
        assert system[0].extension == "postgres_changes"

        ops_heard: list[dict[str, Any]] = []
        ops_room = ops.channel(
            "room1", {"config": {"broadcast": {"ack": True}, "presence": None, "private": False}}
        )
        ops_room.on_broadcast("*", lambda message: ops_heard.append(dict(message)))
        ops_joins: list[str] = []
        ops_room.on_presence_join(lambda key, current, new: ops_joins.append(key))
        ops_leaves: list[str] = []
        ops_room.on_presence_leave(lambda key, current, left: ops_leaves.append(key))
        assert await subscribe(ops_room) == [("SUBSCRIBED", None)]

        # postgres_changes: the filter and the row scope (u1's token) both apply.
        row_id = await db.fetchval(INSERT, "u1", "AAPL", 1)
        await db.fetchval(INSERT, "u2", "AAPL", 1)
        await db.fetchval(INSERT, "u1", "TSLA", 1)
        await db.execute("UPDATE positions SET current_price = 130 WHERE id = $1", row_id)
        await db.execute("DELETE FROM positions WHERE id = $1", row_id)
        await until(lambda: len(changes) == 3, 8, what="three changes")
        insert, update, delete = (change["data"] for change in changes)
        assert [c["type"] for c in (insert, update, delete)] == ["INSERT", "UPDATE", "DELETE"]
        assert insert["record"]["symbol"] == "AAPL"
        assert insert["record"]["user_id"] == "u1"
        assert "old_record" not in insert
        assert {"name": "quantity", "type": "numeric"} in insert["columns"]
        assert update["record"]["current_price"] == 130
        assert update["old_record"]["current_price"] == 110
        assert delete["old_record"]["id"] == row_id
        assert "record" not in delete
        assert len({change["ids"][0] for change in changes}) == 3

        # Broadcast with ack: self for alice; the other client too.
        await room.send_broadcast("cursor", {"x": 1})
        await until(lambda: len(heard) == 1 and len(ops_heard) == 1, 8, what="both hear alice")
        assert heard[0]["payload"] == {"x": 1}
        assert ops_heard[0]["event"] == "cursor"
        await ops_room.send_broadcast("cursor", {"x": 2})
        await until(lambda: len(heard) == 2, 8, what="alice hears ops")
        assert heard[1]["payload"] == {"x": 2}
        await asyncio.sleep(0.2)
        assert len(ops_heard) == 1  # self is off for ops

        # REST broadcast (the client's http_send), with the service key.
        await ops_room.http_send("cursor", {"x": 3})
        await until(lambda: len(heard) == 3, 8, what="alice hears the REST message")
        assert heard[2]["payload"] == {"x": 3}
        assert heard[2]["meta"]["id"]

        # Presence: state, then diffs.
        await room.track({"online_at": "now"})
        await until(lambda: ops_joins == ["alice"], 8, what="ops sees alice join")
        await until(lambda: "alice" in room.presence_state(), 8, what="alice's own state")
        assert room.presence_state()["alice"][0]["online_at"] == "now"  # type: ignore[typeddict-item]
        await room.untrack()
        await until(lambda: ops_leaves == ["alice"], 8, what="ops sees alice leave")
        assert presence_syncs[0] == {}

        # Token refresh keeps the subscriptions.
        await alice.set_auth(bridge.user_token("u1", ttl=900))
        await db.fetchval(INSERT, "u1", "MSFT", 2)
        await until(lambda: len(changes) == 4, 8, what="a change after the refresh")

        # Leave: nothing more arrives.
        await room.unsubscribe()
        await until(lambda: room.is_closed, 8, what="closed")
        await db.fetchval(INSERT, "u1", "MSFT", 3)
        await asyncio.sleep(0.3)
        assert len(changes) == 4
    assert bridge.bridge.hub.subscriptions == {}


async def test_an_expired_token_closes_the_channel_and_a_fresh_join_resumes_without_loss(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with client(bridge, bridge.anon_key) as alice:
        await alice.set_auth(bridge.user_token("u1", ttl=1))
        changes: list[dict[str, Any]] = []
        states: list[tuple[str, str | None]] = []

        def feed() -> AsyncRealtimeChannel:
            room = alice.channel("positions-feed")
            room.on_postgres_changes(
                "*",  # type: ignore[arg-type]
                table="positions",
                callback=lambda payload: changes.append(dict(payload)),
            )
            return room

        await feed().subscribe(lambda s, e: states.append((s.value, str(e) if e else None)))
        await db.fetchval(INSERT, "u1", "BEFORE", 1)
        await until(lambda: len(changes) == 1, 8, what="the first change")
        # Expiry closes the channel as Supabase does: the client reports the error, then
        # CLOSED, and does not rejoin with its expired token (no loop).
        await until(lambda: len(states) >= 3, 5, what="expiry reported")
        assert [state for state, _ in states] == ["SUBSCRIBED", "CHANNEL_ERROR", "CLOSED"]
        assert "Token has expired" in (states[1][1] or "")
        for i in range(3):
            await db.fetchval(INSERT, "u1", f"MISSED{i}", 1)
        await asyncio.sleep(2.5)  # past realtime-py's first rejoin delays
        assert len(states) == 3
        assert bridge.bridge.stats()["errors_sent"]["token_expired"] == 1
        # The app signs in again and subscribes again: the bridge resumes the topic from
        # where the closed channel stopped, so the missed rows arrive.
        await alice.set_auth(bridge.user_token("u1", ttl=600))
        await feed().subscribe(lambda s, e: states.append((s.value, str(e) if e else None)))
        await until(lambda: len(changes) == 4, 15, what="the missed changes")
        assert [c["data"]["record"]["symbol"] for c in changes[1:]] == [
            "MISSED0",
            "MISSED1",
            "MISSED2",
        ]
        await db.fetchval(INSERT, "u1", "LIVE", 1)
        await until(lambda: len(changes) == 5, 8, what="live again")
        assert states[-1] == ("SUBSCRIBED", None)


async def test_plugin_channel_events_and_replay_reach_the_python_client(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    for i in range(4):
        await db.fetchval(INSERT, "u1" if i % 2 == 0 else "u2", f"OLD{i}", i + 1)
    assert await bridge.bridge.hub.wait_for_head(4, timeout=10)
    async with client(bridge, bridge.anon_key) as alice:
        await alice.set_auth(bridge.user_token("u1"))
        updates: list[dict[str, Any]] = []
        feed = alice.channel(
            "position-updates",
            {
                "config": {
                    "broadcast": {"replay": {"since": 0, "limit": 1}},
                    "presence": {"key": "", "enabled": False},
                    "private": True,
                }
            },
        )
        feed.on_broadcast("position_update", lambda message: updates.append(dict(message)))
        assert await subscribe(feed) == [("SUBSCRIBED", None)]
        # The latest of u1's logged events (limit 1), marked as a replay.
        await until(lambda: len(updates) == 1, 8, what="the replay")
        assert updates[0]["payload"]["symbol"] == "OLD2"
        assert updates[0]["meta"]["replayed"] is True
        await db.fetchval(INSERT, "u1", "NEW", 5)
        await db.fetchval(INSERT, "u2", "NOT-MINE", 5)
        await until(lambda: len(updates) == 2, 8, what="the live update")
        assert updates[1]["payload"]["symbol"] == "NEW"
        assert updates[1]["payload"]["market_value"] == 550.0
        assert "replayed" not in updates[1]["meta"]
        await asyncio.sleep(0.2)
        assert len(updates) == 2


async def test_private_channels_follow_realtime_messages_policies_with_the_python_client(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    # Each user may read and write 'user:<sub>' only (text: "0001" is not "1").
    await db.execute(
        "CREATE POLICY r ON realtime.messages FOR SELECT TO authenticated "
        "USING (realtime.topic() = 'user:' || (auth.jwt() ->> 'sub'));"
        "CREATE POLICY w ON realtime.messages FOR INSERT TO authenticated "
        "WITH CHECK (realtime.topic() = 'user:' || (auth.jwt() ->> 'sub'))"
    )
    bridge = await start_bridge()
    private = {"config": {"broadcast": {"ack": True, "self": False}, "private": True}}
    async with client(bridge, bridge.anon_key) as alice, client(bridge, bridge.service_key) as ops:
        await alice.set_auth(bridge.user_token("1"))
        heard: list[dict[str, Any]] = []
        own = alice.channel("user:1", private)  # type: ignore[arg-type]
        own.on_broadcast("n", lambda message: heard.append(dict(message)))
        own_states = await subscribe(own)
        assert own_states == [("SUBSCRIBED", None)]
        other_states: list[tuple[str, str | None]] = []
        other = alice.channel("user:0001", private)  # type: ignore[arg-type]
        await other.subscribe(
            lambda state, error: other_states.append((state.value, str(error) if error else None))
        )
        await until(lambda: len(other_states) >= 2, 5, what="the refusal")
        await asyncio.sleep(2.5)  # past realtime-py's first rejoin delays: it does not retry
        assert [state for state, _ in other_states] == ["CHANNEL_ERROR", "CLOSED"]
        assert "You do not have permissions to read from this Channel topic: user:0001" in (
            other_states[0][1] or ""
        )

        ops_heard: list[dict[str, Any]] = []
        ops_own = ops.channel("user:1", private)  # type: ignore[arg-type]
        ops_own.on_broadcast("n", lambda message: ops_heard.append(dict(message)))
        assert await subscribe(ops_own) == [("SUBSCRIBED", None)]
        await own.send_broadcast("n", {"from": "ws"})
        await own.http_send("n", {"from": "http"})  # REST with the user's token: 202
        await other.http_send("n", {"from": "intruder"})  # not allowed: skipped, still 202
        await until(lambda: len(ops_heard) == 2, 8, what="ops hears alice twice")
        await ops_own.send_broadcast("n", {"from": "ops"})
        await until(lambda: len(heard) == 2, 8, what="alice hears REST and ops")
        assert [m["payload"]["from"] for m in ops_heard] == ["ws", "http"]
        assert [m["payload"]["from"] for m in heard] == ["http", "ops"]

        # The anon key over REST on a public topic (no more 403).
        lobby_heard: list[dict[str, Any]] = []
        lobby = ops.channel("lobby")
        lobby.on_broadcast("hi", lambda message: lobby_heard.append(dict(message)))
        assert await subscribe(lobby) == [("SUBSCRIBED", None)]
        async with client(bridge, bridge.anon_key) as visitor:
            await visitor.channel("lobby").http_send("hi", {"n": 1})
        await until(lambda: len(lobby_heard) == 1, 8, what="the visitor's REST broadcast")

        # A token of another user: the channel is closed (a system error, then phx_close).
        states: list[tuple[str, str | None]] = []
        own.subscribe_callback = lambda state, error: states.append((state.value, None))
        await alice.set_auth(bridge.user_token("0001"))
        await until(lambda: ("CLOSED", None) in states, 5, what="the channel closed")
        await asyncio.sleep(0.3)
        assert own.is_closed
        assert len(heard) == 2


def listen(
    channel: AsyncRealtimeChannel,
    event: Listen,
    table: str,
    into: list[dict[str, Any]],
    filter: str | None = None,
) -> None:
    """Collect the `data` of each change of a postgres_changes binding into `into`."""

    def received(payload: Any) -> None:
        into.append(dict(payload["data"]))

    channel.on_postgres_changes(event, table=table, filter=filter, callback=received)


async def test_the_python_client_filter_operators_receive_what_postgres_selects(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute(FILTER_TABLE)
    bridge = await start_bridge()
    async with client(bridge, bridge.service_key) as ops:
        rows: list[dict[str, Any]] = []
        system: list[Any] = []
        channel = ops.channel("filters")
        inserted: dict[str, list[dict[str, Any]]] = {spec: [] for spec in FILTER_CASES}
        for spec in FILTER_CASES:
            listen(channel, Listen.Insert, "filter_compat", inserted[spec], spec)
        # Joined last, on the same socket: once it has every row, so have the others.
        listen(channel, Listen.Insert, "filter_compat", rows)
        channel.on_system(system.append)
        assert await subscribe(channel) == [("SUBSCRIBED", None)]
        await until(lambda: bool(system), 8, what="Subscribed to PostgreSQL")
        assert [s.status for s in system] == ["ok"]
        ids = await insert_filter_rows(db)
        await until(lambda: len(rows) == len(ids), 10, what="every insert")
        received = {spec: [c["record"]["id"] for c in got] for spec, got in inserted.items()}
        assert received == await filter_expectations(db)


IDENTITY_TABLES = """
CREATE TABLE public.keyed (id bigint PRIMARY KEY, name text, qty integer);
CREATE TABLE public.full_rows (id bigint PRIMARY KEY, name text, qty integer);
SELECT realtime_bridge.track('public.keyed');
SELECT realtime_bridge.track('public.full_rows');
"""
# (WAL capture sets REPLICA IDENTITY FULL on the tables it captures when it starts:
# the table's identity is chosen once the bridge runs.)
IDENTITIES = """
ALTER TABLE public.keyed REPLICA IDENTITY DEFAULT;
ALTER TABLE public.full_rows REPLICA IDENTITY FULL;
"""
SUPABASE_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@BOTH_CAPTURES
async def test_old_records_timestamps_and_rows_leaving_a_filter_as_on_supabase(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute(IDENTITY_TABLES)
    bridge = await start_bridge()
    await db.execute(IDENTITIES)
    async with client(bridge, bridge.service_key) as ops:
        changes: dict[str, list[dict[str, Any]]] = {
            "keyed": [], "full_rows": [], "kept": [], "kept_updates": []
        }  # fmt: skip
        channel = ops.channel("payloads")
        listen(channel, Listen.All, "keyed", changes["keyed"])
        listen(channel, Listen.All, "full_rows", changes["full_rows"])
        listen(channel, Listen.All, "full_rows", changes["kept"], "name=eq.keep")
        listen(channel, Listen.Update, "full_rows", changes["kept_updates"], "name=eq.keep")
        assert await subscribe(channel) == [("SUBSCRIBED", None)]

        # One transaction over both tables: one commit_timestamp for all its rows.
        async with db.transaction():
            for table in ("keyed", "full_rows"):
                await db.execute(
                    f"INSERT INTO {table} (id, name, qty) VALUES (1, 'keep', 1), (2, 'keep', 2)"
                )
                await db.execute(f"UPDATE {table} SET qty = qty + 10 WHERE id = 1")
            await asyncio.sleep(0.05)  # the transaction spans time: its rows still agree
        await db.execute("UPDATE keyed SET name = 'gone' WHERE id = 2")
        await db.execute("UPDATE full_rows SET name = 'gone' WHERE id = 2")  # leaves the filter
        await db.execute("UPDATE full_rows SET name = 'keep' WHERE id = 2")  # comes back
        await db.execute("DELETE FROM keyed WHERE id = 1")
        await db.execute("DELETE FROM full_rows WHERE id = 1")
        await until(lambda: len(changes["full_rows"]) == 6, 10, what="every full_rows change")
        await until(lambda: len(changes["keyed"]) == 5, 10, what="every keyed change")

    keyed, full = changes["keyed"], changes["full_rows"]
    assert [c["type"] for c in keyed] == ["INSERT", "INSERT", "UPDATE", "UPDATE", "DELETE"]
    # The replica identity: the primary key by default, the whole old row under FULL.
    assert keyed[2]["old_record"] == {"id": 1}
    assert keyed[3]["old_record"] == {"id": 2}
    assert keyed[4]["old_record"] == {"id": 1}
    assert full[2]["old_record"] == {"id": 1, "name": "keep", "qty": 1}
    assert full[5]["old_record"] == {"id": 1, "name": "keep", "qty": 11}
    assert keyed[2]["record"] == {"id": 1, "name": "keep", "qty": 11}

    stamps = [c["commit_timestamp"] for c in (*keyed[:3], *full[:3])]
    assert len(set(stamps)) == 1, stamps
    assert all(SUPABASE_TIMESTAMP.match(c["commit_timestamp"]) for c in (*keyed, *full))
    assert keyed[3]["commit_timestamp"] >= stamps[0]

    # name=eq.keep on a '*' binding: the row leaving the filter arrives as a DELETE of
    # its old row (Supabase would send nothing); coming back, as an UPDATE.
    kept = changes["kept"]
    assert [(c["type"], (c.get("record") or c["old_record"])["id"]) for c in kept] == [
        ("INSERT", 1), ("INSERT", 2), ("UPDATE", 1), ("DELETE", 2), ("UPDATE", 2), ("DELETE", 1),
    ]  # fmt: skip
    assert kept[3]["old_record"] == {"id": 2, "name": "keep", "qty": 2}
    assert "record" not in kept[3]
    # An UPDATE-only binding gets nothing for the row that left, as on Supabase.
    assert [(c["record"]["id"], c["record"]["name"]) for c in changes["kept_updates"]] == [
        (1, "keep"), (2, "keep"),
    ]  # fmt: skip
