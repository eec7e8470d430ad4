"""`GET /sse/{channel}`: framing, filters, resume, heartbeats, errors and resync."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson

from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory
from tests.helpers import http, insert_position, seq_of, until_logged, wait_routed

SUBSCRIBED = re.compile(r"^subscribed (\S+) at seq (\d+)$")


@dataclass
class Message:
    """One block of a text/event-stream (fields, or only comments)."""

    id: str | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None

    @property
    def is_event(self) -> bool:
        return bool(self.data_lines)

    @property
    def data(self) -> str:
        return "\n".join(self.data_lines)

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.data)
        return value


class SSEReader:
    """Reads a text/event-stream in the background into a queue of messages."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.subscription_id = ""
        self.head = -1
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        current = Message()
        touched = False
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if touched:
                        await self.queue.put(current)
                    current, touched = Message(), False
                    continue
                touched = True
                if line.startswith(":"):
                    current.comments.append(line[1:].removeprefix(" "))
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    current.id = value
                elif name == "event":
                    current.event = value
                elif name == "data":
                    current.data_lines.append(value)
                elif name == "retry":
                    current.retry = value
                else:  # pragma: no cover - the server sends no other field
                    raise AssertionError(f"unexpected SSE field line {line!r}")
        finally:
            await self.queue.put(None)

    async def next(self, timeout: float = 5.0) -> Message:
        message = await asyncio.wait_for(self.queue.get(), timeout)
        assert message is not None, "the event stream ended"
        return message

    async def events(self, count: int, timeout: float = 10.0) -> list[Message]:
        """The next `count` messages that carry data (comment-only blocks skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: list[Message] = []
        while len(found) < count:
            message = await self.next(max(deadline - loop.time(), 0.001))
            if message.is_event:
                found.append(message)
        return found

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def open_sse(
    client: httpx.AsyncClient,
    path: str,
    *,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[SSEReader]:
    """Open a stream and wait for its `: subscribed` preamble (the subscription is live)."""
    async with client.stream("GET", path, params=params, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        reader = SSEReader(response)
        try:
            preamble = await reader.next()
            assert not preamble.is_event
            assert preamble.retry == "3000"
            match = SUBSCRIBED.match(preamble.comments[0])
            assert match is not None, preamble
            reader.subscription_id = match.group(1)
            reader.head = int(match.group(2))
            yield reader
        finally:
            await reader.close()


async def insert_routed(
    db: asyncpg.Connection, client: httpx.AsyncClient, symbols: list[str], user_id: str = "u1"
) -> list[int]:
    """Insert one position per symbol; return their seqs once the hub has routed them."""
    seqs = [await seq_of(db, await insert_position(db, user_id, s)) for s in symbols]
    await wait_routed(client, seqs[-1])
    return seqs


# -- framing ------------------------------------------------------------------


async def test_event_is_framed_with_seq_id_event_name_and_db_change_json(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client, open_sse(client, "/sse/position-updates") as sse:
        row_id = await insert_position(db, "u1", "AAPL", quantity=10, entry_price=100)
        (message,) = await sse.events(1)
    seq = await seq_of(db, row_id)
    row = await db.fetchrow("SELECT opened_at, updated_at FROM positions WHERE id = $1", row_id)
    created_at = await db.fetchval(
        "SELECT created_at FROM realtime_bridge.outbox WHERE seq = $1", seq
    )

    assert message.id == str(seq)
    assert message.event == "position_update"
    frame = message.json()
    data = frame.pop("data")
    timestamp = frame.pop("timestamp")
    assert frame == {
        "type": "db_change",
        "subscription_id": sse.subscription_id,
        "channel": "position-updates",
        "event": "position_update",
        "table": "public.positions",
        "operation": "INSERT",
        "user_id": "u1",
        "record_id": row_id,
        "old": None,
        "seq": seq,
    }
    assert datetime.fromisoformat(timestamp) == created_at
    opened_at = data.pop("opened_at")
    updated_at = data.pop("updated_at")
    assert data == {
        "id": row_id,
        "user_id": "u1",
        "symbol": "AAPL",
        "quantity": 10,
        "entry_price": 100,
        "current_price": 110,
        "unrealized_pnl": None,
        "stop_loss": None,
        "take_profit": None,
        "status": "open",
        "market_value": 1100,
        "unrealized_pnl_pct": 10,
    }
    assert datetime.fromisoformat(opened_at) == row["opened_at"]
    assert datetime.fromisoformat(updated_at) == row["updated_at"]
    assert sse.head < seq


async def test_text_with_unicode_line_separators_arrives_whole(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    # httpx's aiter_lines (like str.splitlines) also ends a line at U+0085, U+2028
    # and U+2029: in the JSON they travel escaped, and decode to the same text.
    symbol = "A\x85B\u2028C\u2029D"
    async with http(bridge) as client, open_sse(client, "/sse/position-updates") as sse:
        await insert_position(db, "u\x85", symbol)
        (message,) = await sse.events(1)
    assert len(message.data_lines) == 1
    frame = message.json()
    assert frame["data"]["symbol"] == symbol
    assert frame["user_id"] == "u\x85"


async def test_update_is_delivered_with_old_and_new_typed_rows(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client, open_sse(client, "/sse/position-updates") as sse:
        row_id = await insert_position(db, "u1", "AAPL", quantity=10, current_price=110)
        await db.execute("UPDATE positions SET current_price = 120 WHERE id = $1", row_id)
        inserted, updated = await sse.events(2)
    assert int(updated.id or 0) == int(inserted.id or 0) + 1
    frame = updated.json()
    assert frame["operation"] == "UPDATE"
    assert frame["seq"] == int(updated.id or 0)
    assert frame["data"]["market_value"] == 1200
    assert frame["old"]["market_value"] == 1100
    assert frame["old"]["current_price"] == 110


# -- filters ------------------------------------------------------------------


async def test_filter_delivers_only_matching_rows(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with (
        http(bridge) as client,
        open_sse(client, "/sse/position-updates", params={"filter": "user_id=eq.u1"}) as sse,
    ):
        for user, symbol in [("u2", "X1"), ("u1", "A1"), ("u2", "X2"), ("u1", "A2")]:
            await insert_position(db, user, symbol)
        # A final u1 row: anything for u2 would have to arrive before it.
        await insert_position(db, "u1", "LAST")
        messages = await sse.events(3)
    frames = [m.json() for m in messages]
    assert [f["data"]["symbol"] for f in frames] == ["A1", "A2", "LAST"]
    assert {f["user_id"] for f in frames} == {"u1"}
    seqs = [int(m.id or 0) for m in messages]
    assert seqs == sorted(seqs)
    assert [f["seq"] for f in frames] == seqs


# -- resume -------------------------------------------------------------------


async def test_since_query_resumes_with_exactly_the_later_events_in_order(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, ["S1", "S2", "S3", "S4", "S5"])
        async with open_sse(client, "/sse/position-updates", params={"since": str(seqs[1])}) as sse:
            replayed = await sse.events(3)
            live_id = await insert_position(db, "u1", "LIVE")
            (live,) = await sse.events(1)
    assert [int(m.id or 0) for m in replayed] == seqs[2:]
    assert [m.json()["data"]["symbol"] for m in replayed] == ["S3", "S4", "S5"]
    assert [m.json()["seq"] for m in replayed] == seqs[2:]
    # Nothing sent twice and nothing extra between the replay and the live event.
    assert int(live.id or 0) == await seq_of(db, live_id) == seqs[-1] + 1
    assert live.json()["data"]["symbol"] == "LIVE"


async def test_last_event_id_header_resumes_and_wins_over_since(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, ["S1", "S2", "S3", "S4", "S5"])
        async with open_sse(
            client,
            "/sse/position-updates",
            params={"since": str(seqs[0])},
            headers={"Last-Event-ID": str(seqs[2])},
        ) as sse:
            replayed = await sse.events(2)
            await insert_position(db, "u1", "LIVE")
            (live,) = await sse.events(1)
    assert [int(m.id or 0) for m in replayed] == seqs[3:]
    assert [m.json()["data"]["symbol"] for m in replayed] == ["S4", "S5"]
    assert int(live.id or 0) == seqs[-1] + 1
    assert live.json()["data"]["symbol"] == "LIVE"


async def test_last_event_id_ahead_of_the_head_gets_one_since_ahead_error_event(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client:
        (seq,) = await insert_routed(db, client, ["A"])
        response = await client.get(
            "/sse/position-updates", headers={"Last-Event-ID": str(seq + 100)}
        )
    # A stream (an EventSource cannot read an error status's body) of one error event.
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    event, data = response.text.strip().split("\n")
    assert event == "event: error"
    body = orjson.loads(data.removeprefix("data: "))
    assert body["code"] == "since_ahead"
    assert body["head_seq"] == seq
    assert f"head seq {seq}" in body["message"]


async def test_resume_older_than_the_memory_window_is_read_from_the_outbox_log(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window=1)
    async with http(bridge) as client:
        seqs = await insert_routed(db, client, ["S1", "S2", "S3", "S4"])
        async with open_sse(client, "/sse/position-updates", params={"since": str(seqs[0])}) as sse:
            replayed = await sse.events(3)
            await insert_position(db, "u1", "LIVE")
            (live,) = await sse.events(1)
    assert [int(m.id or 0) for m in replayed] == seqs[1:]
    assert [m.json()["data"]["symbol"] for m in replayed] == ["S2", "S3", "S4"]
    # Replayed from the log, the payload is still typed.
    assert all(m.json()["data"]["market_value"] == 1100 for m in replayed)
    assert int(live.id or 0) == seqs[-1] + 1


# -- table channels -----------------------------------------------------------


async def test_table_channel_delivers_raw_rows(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client, open_sse(client, "/sse/public.positions") as sse:
        row_id = await insert_position(db, "u1", "MSFT", quantity=3, entry_price=7)
        (message,) = await sse.events(1)
    raw = orjson.loads(
        await db.fetchval("SELECT to_jsonb(p) FROM positions p WHERE id = $1", row_id)
    )
    seq = await seq_of(db, row_id)
    assert message.id == str(seq)
    assert message.event == "row_change"
    frame = message.json()
    assert frame["type"] == "db_change"
    assert frame["subscription_id"] == sse.subscription_id
    assert frame["channel"] == "public.positions"
    assert frame["event"] == "row_change"
    assert frame["table"] == "public.positions"
    assert frame["operation"] == "INSERT"
    assert frame["seq"] == seq
    assert frame["data"] == raw
    assert "market_value" not in frame["data"]


# -- heartbeats ---------------------------------------------------------------


async def test_idle_stream_sends_heartbeat_comments(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(sse_heartbeat=0.2)
    async with http(bridge) as client, open_sse(client, "/sse/position-updates") as sse:
        idle = [await sse.next(timeout=3) for _ in range(3)]
        await insert_position(db, "u1", "AFTER")
        (event,) = await sse.events(1)
    for message in idle:
        assert not message.is_event
        assert message.id is None
        assert message.event is None
        assert message.comments == ["heartbeat"]
    assert event.json()["data"]["symbol"] == "AFTER"


# -- errors before streaming --------------------------------------------------


async def test_bad_requests_get_a_json_error_instead_of_a_stream(bridge: RunningBridge) -> None:
    cases: list[tuple[str, dict[str, str], dict[str, str], int, str]] = [
        ("/sse/no-such-channel", {}, {}, 404, "unknown_channel"),
        ("/sse/public.no_such_table", {}, {}, 404, "unknown_table"),
        ("/sse/position-updates", {"filter": "no_such_column=eq.1"}, {}, 400, "invalid_filter"),
        ("/sse/position-updates", {"filter": "user_id"}, {}, 400, "invalid_filter"),
        ("/sse/position-updates", {"filter": "user_id=match.u%"}, {}, 400, "invalid_filter"),
        ("/sse/position-updates", {"filter": "user_id=like.u\\"}, {}, 400, "invalid_filter"),
        ("/sse/position-updates", {"since": "abc"}, {}, 400, "bad_message"),
        ("/sse/position-updates", {"since": "-1"}, {}, 400, "bad_message"),
        ("/sse/position-updates", {"since": "1.5"}, {}, 400, "bad_message"),
        ("/sse/position-updates", {}, {"Last-Event-ID": "abc"}, 400, "bad_message"),
        ("/sse/position-updates", {}, {"Last-Event-ID": "-3"}, 400, "bad_message"),
    ]
    async with http(bridge) as client:
        for path, params, headers, status, code in cases:
            where = (path, params, headers)
            async with client.stream("GET", path, params=params, headers=headers) as response:
                # Checked before reading the body: a stream opened by mistake fails here
                # instead of being read forever.
                assert response.status_code == status, where
                await response.aread()
            assert response.headers["content-type"].startswith("application/json"), where
            body = response.json()
            assert body["code"] == code, (where, body)
            assert isinstance(body["message"], str)
            assert body["message"], where
        unknown = (await client.get("/sse/no-such-channel")).json()
        assert unknown["channel"] == "no-such-channel"
        stats = (await client.get("/api/stats")).json()
    # None of them opened a stream or left a subscription behind.
    assert stats["connections"] == 0
    assert stats["connections_total"] == 0
    assert stats["subscriptions"] == {}
    assert stats["errors_sent"]["bad_message"] == 5
    assert stats["errors_sent"]["invalid_filter"] == 4


async def test_closing_the_stream_removes_its_subscription(bridge: RunningBridge) -> None:
    async with http(bridge) as client:
        async with open_sse(client, "/sse/position-updates"):
            stats = (await client.get("/api/stats")).json()
            assert stats["connections"] == 1
            assert stats["subscriptions"] == {"position-updates": 1}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            stats = (await client.get("/api/stats")).json()
            if stats["subscriptions"] == {} and stats["connections"] == 0:
                break
            await asyncio.sleep(0.02)
        assert stats["subscriptions"] == {}
        assert stats["connections"] == 0


# -- resync -------------------------------------------------------------------


async def test_resume_older_than_retention_gets_resync_required_then_continues_live(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window=1)
    async with http(bridge) as client:
        async with open_sse(client, "/sse/position-updates") as live:
            for symbol in ["S1", "S2", "S3"]:
                await insert_position(db, "u1", symbol)
            delivered = await live.events(3)
        seqs = [int(m.id or 0) for m in delivered]
        await wait_routed(client, seqs[-1])
        await until_logged(bridge, seqs[-1])
        await db.execute("UPDATE realtime_bridge.outbox SET created_at = now() - interval '3 days'")
        assert await db.fetchval("SELECT realtime_bridge.prune()") == 3
        head = (await client.get("/health")).json()["last_seq"]
        assert head == seqs[-1]

        async with open_sse(client, "/sse/position-updates", params={"since": str(seqs[0])}) as sse:
            first = await sse.next()
            while not first.is_event:  # heartbeats, if any
                first = await sse.next()
            assert first.event == "resync_required"
            assert first.id is None
            assert first.json() == {
                "type": "resync_required",
                "subscription_id": sse.subscription_id,
                "channel": "position-updates",
                "earliest_seq": head + 1,
                "next_seq": head,
            }
            row_id = await insert_position(db, "u1", "AFTER")
            (after,) = await sse.events(1)
        stats = (await client.get("/api/stats")).json()
    assert after.event == "position_update"
    assert int(after.id or 0) == await seq_of(db, row_id) == head + 1
    assert after.json()["data"]["symbol"] == "AFTER"
    assert stats["resyncs"] == 1
