"""`/ws/db_subscriptions`: the contract other tools rely on, errors included."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import BridgeFactory

INSERT = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, $3, 100, 110) RETURNING id"
)


async def test_user_filter_gets_only_that_users_typed_events_in_seq_order(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(
            channel="position-updates", filters={"user_id": "u1"}, client_id="monitor-1"
        )
        assert reply["type"] == "subscribed"
        assert reply["channel"] == "position-updates"
        assert reply["client_id"] == "monitor-1"
        assert reply["filter"] == "user_id=eq.u1"
        assert isinstance(reply["seq"], int)
        for i in range(4):
            await db.execute(INSERT, "u1" if i % 2 == 0 else "u2", f"S{i}", i + 1)
        row_id = await db.fetchval("SELECT id FROM positions WHERE symbol = 'S0'")
        await db.execute("UPDATE positions SET current_price = 120 WHERE id = $1", row_id)
        await db.execute("DELETE FROM positions WHERE id = $1", row_id)
        events = await ws.changes(4)
        assert await ws.silent()

    assert [e["operation"] for e in events] == ["INSERT", "INSERT", "UPDATE", "DELETE"]
    assert {e["user_id"] for e in events} == {"u1"}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    insert = events[0]
    assert insert["subscription_id"] == reply["subscription_id"]
    assert insert["event"] == "position_update"
    assert insert["table"] == "public.positions"
    assert insert["record_id"] == row_id
    assert insert["data"]["market_value"] == 110.0
    assert insert["data"]["unrealized_pnl_pct"] == 10.0
    assert insert["old"] is None
    assert insert["timestamp"].endswith("+00:00")
    update = events[2]
    assert update["data"]["current_price"] == 120.0
    assert update["old"]["current_price"] == 110.0
    delete = events[3]
    assert delete["data"] is None
    assert delete["old"]["id"] == row_id


async def test_supabase_filter_string_and_table_channel(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(table="positions", filter="user_id=eq.u2,quantity=gte.2")
        assert reply["channel"] == "public.positions"
        await db.execute(INSERT, "u2", "LOW", 1)
        await db.execute(INSERT, "u1", "OTHER", 5)
        await db.execute(INSERT, "u2", "HIGH", 3)
        (event,) = await ws.changes(1)
        assert await ws.silent()
    assert event["event"] == "row_change"
    assert event["data"]["symbol"] == "HIGH"
    # The raw row, not the typed payload: no computed fields.
    assert "market_value" not in event["data"]


async def test_an_update_leaving_the_filter_is_delivered(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates", filters={"status": "open"})
        row_id = await db.fetchval(INSERT, "u1", "AAPL", 1)
        await ws.changes(1)
        await db.execute("UPDATE positions SET status = 'closed' WHERE id = $1", row_id)
        (event,) = await ws.changes(1)
    assert event["data"]["status"] == "closed"
    assert event["old"]["status"] == "open"


async def test_unsubscribe_and_ping(start_bridge: BridgeFactory, db: asyncpg.Connection) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(channel="trade-updates")
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}
        await ws.send({"type": "unsubscribe", "subscription_id": reply["subscription_id"]})
        assert await ws.recv() == {
            "type": "unsubscribed",
            "subscription_id": reply["subscription_id"],
            "channel": "trade-updates",
        }
        await db.execute(
            "INSERT INTO trades (user_id, symbol, signal_type, quantity, entry_price) "
            "VALUES ('u1', 'X', 'BUY', 1, 1)"
        )
        assert await ws.silent()
        await ws.send({"type": "unsubscribe", "subscription_id": reply["subscription_id"]})
        error = await ws.recv()
        assert error["code"] == "unknown_subscription"


@pytest.mark.parametrize(
    ("frame", "code", "fragment"),
    [
        ("not json", "bad_message", "not valid JSON"),
        ("[1, 2]", "bad_message", "JSON object"),
        ('{"channel": "position-updates"}', "bad_message", "missing 'type'"),
        ('{"type": "dance"}', "bad_message", "unknown message type 'dance'"),
        ('{"type": "subscribe"}', "bad_message", "exactly one of 'channel' or 'table'"),
        (
            '{"type": "subscribe", "channel": "position-updates", "table": "positions"}',
            "bad_message",
            "exactly one",
        ),
        (
            '{"type": "subscribe", "channel": "position-updates", "since": -4}',
            "bad_message",
            "since",
        ),
        ('{"type": "unsubscribe"}', "bad_message", "subscription_id"),
        ('{"type": "subscribe", "channel": "nope"}', "unknown_channel", "nope"),
        ('{"type": "subscribe", "table": "public.missing"}', "unknown_table", "not tracked"),
        (
            '{"type": "subscribe", "channel": "position-updates", "filter": "user_id=match.x"}',
            "invalid_filter",
            "unknown operator 'match'",
        ),
        (
            '{"type": "subscribe", "channel": "position-updates", "filter": "quantity=like.1*"}',
            "invalid_filter",
            "'like' applies to text columns; 'quantity' is numeric",
        ),
        (
            '{"type": "subscribe", "table": "public.positions", "filter": "user_id=not.is.true"}',
            "invalid_filter",
            "'is.true' applies to boolean columns",
        ),
        (
            '{"type": "subscribe", "channel": "position-updates", "filters": {"colour": "red"}}',
            "invalid_filter",
            "unknown column 'colour'",
        ),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_usable(
    start_bridge: BridgeFactory, frame: str, code: str, fragment: str
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.send(frame)
        error = await ws.recv()
        assert error["type"] == "error"
        assert error["code"] == code
        assert fragment in error["message"]
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}
    stats = bridge.bridge.stats()
    assert stats["errors_sent"][code] >= 1


async def test_oversized_frame_is_refused_and_closes(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(max_frame_bytes=1024)
    async with bridge.websocket() as ws:
        await ws.send({"type": "ping", "padding": "x" * 2000})
        error = await ws.recv()
        assert error["code"] == "too_large"
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
        assert closed.value.rcvd.reason == "too_large"
    # The server is still serving.
    async with bridge.websocket() as ws:
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}


async def test_a_client_that_stops_reading_is_cut_off_and_others_are_not(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(send_queue_max=16, slow_consumer_timeout=0.5)
    async with bridge.websocket(max_queue=1) as stalled, bridge.websocket() as healthy:
        await stalled.subscribe(channel="position-updates")
        await healthy.subscribe(channel="position-updates")
        big = "X" * 20_000
        received: list[dict[str, Any]] = []

        async def keep_reading() -> None:
            while len(received) < 400:
                received.extend(await healthy.changes(1))

        reader = asyncio.create_task(keep_reading())
        for i in range(400):
            await db.execute(INSERT, "u1", big, i)
        await asyncio.wait_for(reader, 30)
        assert [e["data"]["quantity"] for e in received] == [float(i) for i in range(400)]
        # Stay stalled for longer than the stall timeout.
        await asyncio.sleep(1.5)

        # The stalled client finally reads: some events, then the reason, then the close.
        frames: list[dict[str, Any]] = []

        async def read_until_closed() -> None:
            while True:
                frames.append(await stalled.recv(timeout=10))

        with pytest.raises(ConnectionClosed) as closed:
            await read_until_closed()
        # It was cut off before it got everything. The reason frame and the
        # close frame are best effort (its buffers were full); when they make
        # it through, they say slow_consumer.
        changes = [f for f in frames if f["type"] == "db_change"]
        assert len(changes) < 400
        assert [f.get("code") for f in frames if f["type"] == "error"] in ([], ["slow_consumer"])
        if closed.value.rcvd is not None:
            assert closed.value.rcvd.code == 1008
            assert closed.value.rcvd.reason == "slow_consumer"
    assert bridge.bridge.stats()["dropped"]["slow_consumers"] == 1


async def test_a_slow_reader_catches_up_instead_of_being_cut_off(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(send_queue_max=16, slow_consumer_timeout=5)
    async with bridge.websocket(max_queue=4) as slow:
        await slow.subscribe(channel="position-updates")
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
            "SELECT 'u1', 'S', g, 1 FROM generate_series(1, 300) g"
        )
        quantities = []
        for _ in range(300):
            (event,) = await slow.changes(1)
            quantities.append(event["data"]["quantity"])
            await asyncio.sleep(0.002)
        assert await slow.silent()
    assert quantities == [float(i) for i in range(1, 301)]
    assert bridge.bridge.stats()["dropped"]["slow_consumers"] == 0


@pytest.mark.parametrize("window", [50_000, 3])
async def test_resume_with_since_delivers_exactly_the_missed_events(
    start_bridge: BridgeFactory, db: asyncpg.Connection, window: int
) -> None:
    # window=3 forces the older events to come from the database log.
    bridge = await start_bridge(replay_window=window)
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates", filters={"user_id": "u1"})
        await db.execute(INSERT, "u1", "A", 1)
        (seen,) = await ws.changes(1)
    for i in range(10):
        await db.execute(INSERT, "u1" if i % 2 else "u2", f"M{i}", i)
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(
            channel="position-updates", filters={"user_id": "u1"}, since=seen["seq"]
        )
        missed = await ws.changes(5)
        assert [e["data"]["symbol"] for e in missed] == ["M1", "M3", "M5", "M7", "M9"]
        assert all(e["subscription_id"] == reply["subscription_id"] for e in missed)
        await db.execute(INSERT, "u1", "LIVE", 1)
        (live,) = await ws.changes(1)
        assert live["data"]["symbol"] == "LIVE"
        assert await ws.silent()
    seqs = [e["seq"] for e in [*missed, live]]
    assert seqs == sorted(seqs)


async def test_a_byte_bounded_window_evicts_a_burst_and_resume_still_gets_it_all(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window_bytes=64 * 1024)
    hub = bridge.bridge.hub
    await db.execute(
        "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
        "SELECT 'u1', 'B' || i, i, 1 FROM generate_series(1, 400) AS i"
    )
    assert await hub.wait_for_head(400, timeout=20)
    assert hub.window_bytes <= 64 * 1024
    assert len(hub.window) < 400
    assert hub.window[-1].seq == 400
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates", since=0)
        events = await ws.changes(400, timeout=30)
        assert [e["seq"] for e in events] == list(range(1, 401))
        assert [e["data"]["symbol"] for e in events] == [f"B{i}" for i in range(1, 401)]
        await db.execute(INSERT, "u1", "LIVE", 1)
        (live,) = await ws.changes(1)
        assert live["seq"] == 401


async def test_since_ahead_of_the_head_is_answered_with_a_since_ahead_error(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await db.execute(INSERT, "u1", "A", 1)
    assert await bridge.bridge.hub.wait_for_head(1, timeout=10)
    head = bridge.bridge.hub.head
    async with bridge.websocket() as ws:
        error = await ws.subscribe(channel="position-updates", since=head + 100, client_id="c1")
        assert error["type"] == "error"
        assert error["code"] == "since_ahead"
        assert error["client_id"] == "c1"
        assert error["head_seq"] == head
        assert f"head seq {head}" in error["message"]
        # Nothing was subscribed and the connection stays usable.
        assert bridge.bridge.hub.subscriptions_per_channel() == {}
        reply = await ws.subscribe(channel="position-updates", since=head)
        assert reply["type"] == "subscribed"


async def test_resume_while_writers_are_busy_has_no_gap_and_no_duplicate(
    start_bridge: BridgeFactory, dsn: str, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window=50)
    writer = await asyncpg.connect(dsn)
    total = 600
    stop_at = asyncio.Event()

    async def write() -> None:
        for i in range(total):
            await writer.execute(INSERT, "u1", f"W{i}", i)
            if i == 200:
                stop_at.set()

    task = asyncio.create_task(write())
    await stop_at.wait()
    async with bridge.websocket() as ws:
        await ws.subscribe(table="public.positions", since=0)
        events = await ws.changes(total, timeout=30)
    await task
    assert [e["seq"] for e in events] == list(range(1, total + 1))
    await writer.close()


async def test_since_older_than_retention_asks_for_resync_then_goes_live(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    for i in range(3):
        await db.execute(INSERT, "u1", f"OLD{i}", i)
    bridge = await start_bridge(replay_window=1)
    # Wait until the three rows are numbered, then age them out of retention.
    assert await bridge.bridge.hub.wait_for_head(3, timeout=10)
    await db.execute("UPDATE realtime_bridge.outbox SET created_at = now() - interval '3 days'")
    assert await db.fetchval("SELECT realtime_bridge.prune()") == 3
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(channel="position-updates", since=0)
        resync = await ws.recv()
        assert resync == {
            "type": "resync_required",
            "subscription_id": reply["subscription_id"],
            "channel": "position-updates",
            "earliest_seq": 4,
            "next_seq": 3,
        }
        await db.execute(INSERT, "u1", "NEW", 1)
        (event,) = await ws.changes(1)
        assert event["data"]["symbol"] == "NEW"


async def test_two_subscriptions_on_one_socket_each_get_their_own_frames(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        one = await ws.subscribe(channel="position-updates", filters={"user_id": "u1"})
        both = await ws.subscribe(channel="position-updates")
        await db.execute(INSERT, "u1", "A", 1)
        frames = await ws.changes(2)
    assert {f["subscription_id"] for f in frames} == {
        one["subscription_id"],
        both["subscription_id"],
    }
    # Same shared body, different subscription prefix.
    bodies = {orjson.dumps({k: v for k, v in f.items() if k != "subscription_id"}) for f in frames}
    assert len(bodies) == 1
