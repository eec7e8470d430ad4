"""HTTP endpoints: long-poll, broadcast, the testing API, health, stats and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson

from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory
from tests.helpers import head, http, insert_position, sample, seq_of, until_logged, wait_routed

POLL = "/api/channels/position-updates/events"

POSITION = {
    "id": 7,
    "user_id": "u1",
    "symbol": "NVDA",
    "quantity": 4,
    "entry_price": 50,
    "current_price": 60,
}
TYPED_POSITION = {
    "id": 7,
    "user_id": "u1",
    "symbol": "NVDA",
    "quantity": 4.0,
    "entry_price": 50.0,
    "current_price": 60.0,
    "unrealized_pnl": None,
    "stop_loss": None,
    "take_profit": None,
    "status": "open",
    "opened_at": None,
    "updated_at": None,
    "market_value": 240.0,
    "unrealized_pnl_pct": 20.0,
}


async def insert_routed(
    db: asyncpg.Connection,
    client: httpx.AsyncClient,
    rows: list[tuple[str, str]],
) -> list[int]:
    """Insert (user_id, symbol) positions; return their seqs once the hub has routed them."""
    seqs = [await seq_of(db, await insert_position(db, user, symbol)) for user, symbol in rows]
    await wait_routed(client, seqs[-1])
    return seqs


async def poll(client: httpx.AsyncClient, path: str = POLL, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params={k: str(v) for k, v in params.items()})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


async def wait_stats(
    client: httpx.AsyncClient, predicate: Any, timeout: float = 5.0
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        stats: dict[str, Any] = (await client.get("/api/stats")).json()
        if predicate(stats) or loop.time() > deadline:
            return stats
        await asyncio.sleep(0.02)


# -- long-poll ----------------------------------------------------------------


async def test_poll_since_zero_returns_every_event_in_order(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, [("u1", "A"), ("u2", "B"), ("u1", "C")])
        body = await poll(client, since=0)
    assert set(body) == {"events", "next_seq"}
    events = body["events"]
    assert [e["seq"] for e in events] == seqs
    assert [e["data"]["symbol"] for e in events] == ["A", "B", "C"]
    assert body["next_seq"] == seqs[-1]
    first = events[0]
    assert first["type"] == "db_change"
    assert "subscription_id" not in first
    assert first["channel"] == "position-updates"
    assert first["event"] == "position_update"
    assert first["table"] == "public.positions"
    assert first["operation"] == "INSERT"
    assert first["user_id"] == "u1"
    assert first["data"]["market_value"] == 1100
    assert first["data"]["unrealized_pnl_pct"] == 10


async def test_poll_limit_pages_through_the_events(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, [("u1", "A"), ("u1", "B"), ("u1", "C")])
        page1 = await poll(client, since=0, limit=2, wait=0)
        page2 = await poll(client, since=page1["next_seq"], limit=2, wait=0)
        page3 = await poll(client, since=page2["next_seq"], limit=2, wait=0)
    assert [e["seq"] for e in page1["events"]] == seqs[:2]
    assert page1["next_seq"] == seqs[1]
    assert [e["seq"] for e in page2["events"]] == seqs[2:]
    assert [e["data"]["symbol"] for e in page2["events"]] == ["C"]
    assert page2["next_seq"] == seqs[2]
    assert page3 == {"events": [], "next_seq": seqs[2]}


async def test_poll_limit_pages_through_the_outbox_log_beyond_the_memory_window(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window=1)
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, [("u1", "A"), ("u1", "B"), ("u1", "C")])
        page1 = await poll(client, since=0, limit=2, wait=0)
        page2 = await poll(client, since=page1["next_seq"], limit=2, wait=0)
    assert [e["seq"] for e in page1["events"]] == seqs[:2]
    assert page1["next_seq"] == seqs[1]
    assert [e["seq"] for e in page2["events"]] == seqs[2:]
    assert page2["next_seq"] == seqs[2]


async def test_poll_waits_and_returns_as_soon_as_an_event_arrives(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        start = await head(client)

        async def insert_later() -> int:
            await asyncio.sleep(0.3)
            return await insert_position(db, "u1", "LATE")

        loop = asyncio.get_running_loop()
        began = loop.time()
        writer = asyncio.create_task(insert_later())
        try:
            body = await poll(client, since=start, wait=5)
            elapsed = loop.time() - began
        finally:
            row_id = await writer
    seq = await seq_of(db, row_id)
    assert [e["seq"] for e in body["events"]] == [seq]
    assert body["events"][0]["data"]["symbol"] == "LATE"
    assert body["next_seq"] == seq
    # Sanity bound only: it returned on the event, not at the end of the wait.
    assert elapsed < 4


async def test_poll_without_wait_and_nothing_new_returns_the_head(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, [("u1", "A"), ("u1", "B")])
        since_head = await poll(client, since=seqs[-1], wait=0)
        without_since = await poll(client, wait=0)
    assert since_head == {"events": [], "next_seq": seqs[-1]}
    assert without_since == {"events": [], "next_seq": seqs[-1]}


async def test_poll_since_ahead_of_the_head_honours_wait_and_answers_400(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        (seq,) = await insert_routed(db, client, [("u1", "A")])
        loop = asyncio.get_running_loop()
        for wait in (0, 0.3):
            started = loop.time()
            response = await client.get(
                "/api/channels/position-updates/events", params={"since": seq + 100, "wait": wait}
            )
            # It used to block 30 s whatever `wait` said, then answer a next_seq from the future.
            assert loop.time() - started < wait + 1.5
            assert response.status_code == 400
            body = response.json()
            assert body["code"] == "since_ahead"
            assert body["head_seq"] == seq
            assert body["since"] == seq + 100
            assert f"head seq {seq}" in body["message"]


async def test_poll_filter_returns_only_matching_rows(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, [("u1", "A"), ("u2", "X"), ("u1", "B"), ("u2", "Y")])
        body = await poll(client, since=0, wait=0, filter="user_id=eq.u1")
    assert [e["seq"] for e in body["events"]] == [seqs[0], seqs[2]]
    assert [e["data"]["symbol"] for e in body["events"]] == ["A", "B"]
    assert {e["user_id"] for e in body["events"]} == {"u1"}
    # Everything up to the head was looked at: no need to see the u2 rows again.
    assert body["next_seq"] == seqs[-1]


async def test_poll_bad_parameters_are_rejected(bridge: RunningBridge) -> None:
    bad: list[tuple[dict[str, str], int, str]] = [
        ({"limit": "0"}, 400, "bad_message"),
        ({"limit": "abc"}, 400, "bad_message"),
        ({"limit": "1001"}, 400, "bad_message"),
        ({"limit": "-5"}, 400, "bad_message"),
        ({"wait": "-1"}, 400, "bad_message"),
        ({"wait": "61"}, 400, "bad_message"),
        ({"wait": "soon"}, 400, "bad_message"),
        ({"since": "-1"}, 400, "bad_message"),
        ({"since": "abc"}, 400, "bad_message"),
        ({"filter": "no_such_column=eq.1"}, 400, "invalid_filter"),
        ({"filter": "user_id=match.u1"}, 400, "invalid_filter"),
        ({"filter": "user_id=not.in.(a"}, 400, "invalid_filter"),
    ]
    async with http(bridge) as client:
        for params, status, code in bad:
            assert_error(await client.get(POLL, params=params), status, code)
        unknown = assert_error(
            await client.get("/api/channels/no-such-channel/events"), 404, "unknown_channel"
        )
        assert unknown["channel"] == "no-such-channel"
        assert_error(
            await client.get("/api/channels/public.no_such_table/events"), 404, "unknown_table"
        )
        stats = (await client.get("/api/stats")).json()
    assert stats["subscriptions"] == {}
    assert stats["errors_sent"]["bad_message"] == 9
    assert stats["errors_sent"]["invalid_filter"] == 3


async def test_poll_older_than_retention_answers_409_resync_required(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window=1)
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, [("u1", "A"), ("u1", "B"), ("u1", "C")])
        # The first two fall out of retention; the memory window holds only the last.
        await db.execute(
            "UPDATE realtime_bridge.outbox SET created_at = now() - interval '3 days' "
            "WHERE seq <= $1",
            seqs[1],
        )
        assert await db.fetchval("SELECT realtime_bridge.prune()") == 2
        response = await client.get(POLL, params={"since": str(seqs[0]), "wait": "0"})
        body = assert_error(response, 409, "resync_required")
        assert body["earliest_seq"] == seqs[2]
        assert body["next_seq"] == seqs[2]

        # Everything pruned: the earliest a client can get is the next seq.
        await db.execute("UPDATE realtime_bridge.outbox SET created_at = now() - interval '3 days'")
        assert await db.fetchval("SELECT realtime_bridge.prune()") == 1
        everything = assert_error(
            await client.get(POLL, params={"since": "0", "wait": "0"}), 409, "resync_required"
        )
        assert everything["earliest_seq"] == seqs[2] + 1
        assert everything["next_seq"] == seqs[2]

        # Polling on from next_seq works.
        row_id = await insert_position(db, "u1", "D")
        after = await poll(client, since=everything["next_seq"], wait=5)
        stats = (await client.get("/api/stats")).json()
    assert [e["seq"] for e in after["events"]] == [await seq_of(db, row_id)]
    assert stats["resyncs"] == 2
    assert stats["subscriptions"] == {}


# -- broadcast ----------------------------------------------------------------


async def test_broadcast_is_published_validated_and_delivered(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client, bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        response = await client.post(
            "/api/broadcast", json={"channel": "position-updates", "payload": POSITION}
        )
        assert response.status_code == 202, response.text
        reply = response.json()
        assert reply["status"] == "published"
        seq = reply["seq"]
        assert isinstance(seq, int)
        (frame,) = await ws.changes(1)
        polled = await poll(client, since=seq - 1, wait=0)
    assert frame["operation"] == "BROADCAST"
    assert frame["seq"] == seq
    assert frame["channel"] == "position-updates"
    assert frame["event"] == "position_update"
    assert frame["table"] is None
    assert frame["user_id"] == "u1"
    assert frame["record_id"] == 7
    assert frame["old"] is None
    assert frame["data"] == TYPED_POSITION

    assert len(polled["events"]) == 1
    event = polled["events"][0]
    assert event == {k: v for k, v in frame.items() if k != "subscription_id"}
    assert polled["next_seq"] == seq

    await until_logged(bridge, seq)
    row = await db.fetchrow(
        "SELECT operation, channel, event, record, schema_name, table_name "
        "FROM realtime_bridge.outbox WHERE seq = $1",
        seq,
    )
    assert row is not None
    assert row["operation"] == "BROADCAST"
    assert row["channel"] == "position-updates"
    assert row["event"] == "position_update"
    assert row["schema_name"] is None
    assert row["table_name"] is None
    assert orjson.loads(row["record"]) == TYPED_POSITION
    assert datetime.fromisoformat(frame["timestamp"])


async def test_broadcast_with_an_event_name_and_filtered_subscribers(
    bridge: RunningBridge,
) -> None:
    async with (
        http(bridge) as client,
        bridge.websocket() as mine,
        bridge.websocket() as theirs,
    ):
        await mine.subscribe(channel="position-updates", filters={"user_id": "u1"})
        await theirs.subscribe(channel="position-updates", filters={"user_id": "u2"})
        first = await client.post(
            "/api/broadcast",
            json={"channel": "position-updates", "event": "price_tick", "payload": POSITION},
        )
        second = await client.post(
            "/api/broadcast",
            json={"channel": "position-updates", "payload": {**POSITION, "user_id": "u2"}},
        )
        assert first.status_code == second.status_code == 202
        (to_me,) = await mine.changes(1)
        (to_them,) = await theirs.changes(1)
        assert await mine.silent(0.3)
    assert to_me["event"] == "price_tick"
    assert to_me["seq"] == first.json()["seq"]
    assert to_them["event"] == "position_update"
    assert to_them["seq"] == second.json()["seq"] == first.json()["seq"] + 1
    assert to_them["data"]["user_id"] == "u2"


async def test_broadcast_rejects_bad_requests_and_publishes_nothing(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        invalid = assert_error(
            await client.post(
                "/api/broadcast",
                json={
                    "channel": "position-updates",
                    "payload": {"id": "seven", "user_id": "u1", "quantity": 1, "entry_price": 1},
                },
            ),
            422,
            "invalid_payload",
        )
        locations = {tuple(e["loc"]) for e in invalid["errors"]}
        assert ("id",) in locations
        assert ("symbol",) in locations
        assert all({"loc", "msg", "type"} <= set(e) for e in invalid["errors"])

        unknown = assert_error(
            await client.post("/api/broadcast", json={"channel": "nope", "payload": POSITION}),
            404,
            "unknown_channel",
        )
        assert unknown["channel"] == "nope"
        # Table channels take row changes only, not broadcasts.
        assert_error(
            await client.post(
                "/api/broadcast", json={"channel": "public.positions", "payload": POSITION}
            ),
            404,
            "unknown_channel",
        )
        assert_error(
            await client.post(
                "/api/broadcast",
                content=b'{"channel": "position-updates", "payload": ',
                headers={"content-type": "application/json"},
            ),
            400,
            "bad_message",
        )
        assert_error(
            await client.post("/api/broadcast", json={"channel": "position-updates"}),
            400,
            "bad_message",
        )
        assert_error(
            await client.post(
                "/api/broadcast", json={"channel": "position-updates", "payload": [1, 2]}
            ),
            400,
            "bad_message",
        )
        assert_error(
            await client.post("/api/broadcast", json=["position-updates"]), 400, "bad_message"
        )
        assert_error(await client.post("/api/broadcast", content=b""), 400, "bad_message")

        huge = {"channel": "position-updates", "payload": {**POSITION, "pad": "x" * (1 << 20)}}
        assert_error(await client.post("/api/broadcast", json=huge), 413, "too_large")

        async def chunked() -> AsyncIterator[bytes]:
            body = orjson.dumps(huge)
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        # Without a Content-Length the limit still holds.
        assert_error(await client.post("/api/broadcast", content=chunked()), 413, "too_large")
        stats = (await client.get("/api/stats")).json()

    assert (
        await db.fetchval(
            "SELECT count(*) FROM realtime_bridge.outbox WHERE operation = 'BROADCAST'"
        )
        == 0
    )
    assert stats["broadcasts"] == 0


# -- the testing API ----------------------------------------------------------


async def test_simulate_signal_is_off_by_default(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        response = await client.post(
            "/api/testing/simulate-signal",
            json={"symbol": "AAPL", "signal_type": "BUY", "entry_price": 10},
        )
    assert_error(response, 404, "not_found")
    assert await db.fetchval("SELECT count(*) FROM trades") == 0
    assert await db.fetchval("SELECT count(*) FROM positions") == 0


async def test_simulate_signal_writes_a_trade_and_a_position_that_flow_to_subscribers(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(enable_testing_api=True)
    signal = {
        "symbol": "TSLA",
        "signal_type": "SELL",
        "entry_price": 250,
        "quantity": 3,
        "stop_loss": 260,
        "take_profit": 200,
        "user_id": "u9",
    }
    async with http(bridge) as client, bridge.websocket() as ws:
        await ws.subscribe(channel="trade-updates")
        await ws.subscribe(channel="position-updates")
        response = await client.post("/api/testing/simulate-signal", json=signal)
        assert response.status_code == 201, response.text
        frames = await ws.changes(2)
    body = response.json()
    assert set(body) == {"trade", "position"}
    trade, position = body["trade"], body["position"]

    assert trade["status"] == "open"
    assert trade["signal_type"] == "SELL"
    assert trade["symbol"] == "TSLA"
    assert trade["user_id"] == "u9"
    assert trade["quantity"] == 3
    assert trade["entry_price"] == 250
    assert trade["stop_loss"] == 260
    assert trade["take_profit"] == 200
    assert trade["executed_at"] is not None
    assert trade["exit_price"] is None

    assert position["quantity"] == -3
    assert position["symbol"] == "TSLA"
    assert position["user_id"] == "u9"
    assert position["entry_price"] == 250
    assert position["current_price"] == 250
    assert position["status"] == "open"
    assert position["market_value"] == -750
    assert position["unrealized_pnl_pct"] == 0

    stored_trade = await db.fetchrow("SELECT * FROM trades WHERE id = $1", trade["id"])
    stored_position = await db.fetchrow("SELECT * FROM positions WHERE id = $1", position["id"])
    assert stored_trade is not None
    assert stored_position is not None
    assert stored_trade["status"] == "open"
    assert stored_trade["signal_type"] == "SELL"
    assert stored_trade["user_id"] == "u9"
    assert stored_position["quantity"] == -3
    assert stored_position["symbol"] == "TSLA"

    by_channel = {f["channel"]: f for f in frames}
    assert set(by_channel) == {"trade-updates", "position-updates"}
    trade_frame, position_frame = by_channel["trade-updates"], by_channel["position-updates"]
    assert trade_frame["operation"] == position_frame["operation"] == "INSERT"
    assert trade_frame["event"] == "trade_update"
    assert position_frame["event"] == "position_update"
    assert trade_frame["data"] == trade
    assert position_frame["data"] == position
    # One transaction, trade first.
    assert position_frame["seq"] == trade_frame["seq"] + 1


async def test_simulate_signal_buy_opens_a_long_position(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(enable_testing_api=True)
    async with http(bridge) as client:
        response = await client.post(
            "/api/testing/simulate-signal",
            json={"symbol": "AAPL", "signal_type": "BUY", "entry_price": 10},
        )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["trade"]["signal_type"] == "BUY"
    assert body["trade"]["user_id"] == "demo-user"
    assert body["trade"]["quantity"] == 1
    assert body["position"]["quantity"] == 1
    assert body["position"]["market_value"] == 10
    assert await db.fetchval("SELECT quantity FROM positions WHERE symbol = 'AAPL'") == 1


async def test_simulate_signal_rejects_bad_bodies(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(enable_testing_api=True)
    bad = [
        {"symbol": "AAPL", "signal_type": "HOLD", "entry_price": 10},
        {"symbol": "AAPL", "signal_type": "BUY", "entry_price": -1},
        {"symbol": "AAPL", "signal_type": "BUY", "entry_price": 0},
        {"signal_type": "BUY", "entry_price": 10},
        {"symbol": "AAPL", "signal_type": "BUY", "entry_price": 10, "quantity": 0},
        {"symbol": "", "signal_type": "BUY", "entry_price": 10},
    ]
    async with http(bridge) as client:
        for body in bad:
            response = await client.post("/api/testing/simulate-signal", json=body)
            assert_error(response, 400, "bad_message")
        assert_error(
            await client.post("/api/testing/simulate-signal", content=b"{oops"), 400, "bad_message"
        )
    assert await db.fetchval("SELECT count(*) FROM trades") == 0
    assert await db.fetchval("SELECT count(*) FROM positions") == 0


# -- health, stats, metrics ---------------------------------------------------


async def test_health_reports_the_source_and_the_head_seq(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        response = await client.get("/health")
        assert response.status_code == 200
        before = response.json()
        row_id = await insert_position(db, "u1", "A")
        seq = await seq_of(db, row_id)
        await wait_routed(client, seq)
        after = (await client.get("/health")).json()
    assert before["status"] == "ok"
    assert before["source"] == "wal"  # the embedded Postgres streams its WAL
    assert before["mode"] == "realtime"
    assert before["database"] == "external"
    assert isinstance(before["last_seq"], int)
    assert before["source_status"]["state"] == "connected"
    assert before["failed_tasks"] == {}
    assert datetime.fromisoformat(before["time"])
    assert after["last_seq"] == seq == before["last_seq"] + 1
    assert after["status"] == "ok"


async def test_stats_count_connections_subscriptions_and_events(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        idle = (await client.get("/api/stats")).json()
        assert idle["connections"] == 0
        assert idle["subscriptions"] == {}
        async with bridge.websocket() as ws:
            await ws.subscribe(channel="position-updates")
            await ws.subscribe(channel="position-updates", filters={"user_id": "u1"})
            await ws.subscribe(table="public.trades")
            before = (await client.get("/api/stats")).json()
            await insert_position(db, "u1", "A")
            await ws.changes(2)
            after = (await client.get("/api/stats")).json()
        closed = await wait_stats(client, lambda s: s["connections"] == 0)
    assert before["connections"] == 1
    assert before["connections_total"] == 1
    assert before["subscriptions"] == {"position-updates": 2, "public.trades": 1}
    assert after["events_in"] == before["events_in"] + 1
    assert after["events_out"] == before["events_out"] + 2
    assert after["head_seq"] == before["head_seq"] + 1
    assert "position-updates" in after["channels"]
    assert "public.positions" in after["channels"]
    assert closed["connections"] == 0
    assert closed["subscriptions"] == {}
    assert closed["connections_total"] == 1


def metric_value(text: str, name: str, **labels: str) -> float:
    value = sample(text, name, **labels)
    assert value is not None, f"{name} {labels} not in metrics:\n{text}"
    return value


async def test_metrics_expose_prometheus_text(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        async with bridge.websocket() as ws:
            await ws.subscribe(channel="position-updates")
            seq = await seq_of(db, await insert_position(db, "u1", "A"))
            await ws.changes(1)
            response = await client.get("/metrics")
            text = response.text
        closed = await wait_stats(client, lambda s: s["subscriptions"] == {})
        assert closed["subscriptions"] == {}
        after = (await client.get("/metrics")).text
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "version=0.0.4" in response.headers["content-type"]
    lines = text.splitlines()
    assert metric_value(text, "realtime_bridge_up") == 1
    assert metric_value(text, "realtime_bridge_head_seq") == seq
    assert metric_value(text, "realtime_bridge_subscriptions", channel="position-updates") == 1
    assert metric_value(text, "realtime_bridge_connections") == 1
    assert metric_value(text, "realtime_bridge_events_in_total") >= 1
    assert metric_value(text, "realtime_bridge_events_out_total") >= 1
    assert "# TYPE realtime_bridge_head_seq gauge" in lines
    assert "# TYPE realtime_bridge_events_in_total counter" in lines
    assert sample(after, "realtime_bridge_subscriptions", channel="position-updates") is None
    assert metric_value(after, "realtime_bridge_connections") == 0


async def test_unknown_route_and_wrong_method_are_json_errors(bridge: RunningBridge) -> None:
    async with http(bridge) as client:
        assert_error(await client.get("/no/such/route"), 404, "not_found")
        assert_error(await client.get("/api/broadcast"), 405, "method_not_allowed")
        index = await client.get("/")
    assert index.status_code == 200
    assert "position-updates" in index.json()["channels"]
