"""`realtime_bridge.client` against a real bridge, through a proxy that can cut it off."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel
from websockets.asyncio.server import ServerConnection, serve

from realtime_bridge import auth, errors
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.testing import RunningBridge
from realtime_bridge_client import (
    ClientClosed,
    ConnectionState,
    Event,
    InvalidFilter,
    Refused,
    ResyncRequired,
    TokenExpired,
    Unauthorized,
    UnknownChannel,
    UnknownTable,
    connect,
)
from realtime_bridge_client._client import websocket_url
from tests.conftest import BridgeFactory
from tests.helpers import until

POSITION = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, $3, 100, 110) RETURNING id"
)
TRADE = (
    "INSERT INTO trades (user_id, symbol, signal_type, quantity, entry_price, status) "
    "VALUES ($1, $2, 'BUY', 1, 10, $3) RETURNING id"
)


class TradeView(BaseModel):
    """A consumer's own model of the fields of `trade-updates` it needs."""

    id: int
    status: str
    user_id: str


# Fast reconnects and heartbeats, so that the tests take seconds.
FAST: dict[str, Any] = {"reconnect_base": 0.05, "reconnect_max": 0.2}


class Proxy:
    """A TCP proxy in front of the bridge that can drop, refuse or freeze connections."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.accepted = 0
        self.accepted_at: list[float] = []
        self.refusing = False
        self.links: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.drop_all()
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def drop_all(self) -> None:
        """Reset every open connection, as a network failure would."""
        for client, upstream, _ in self.links:
            client.transport.abort()
            upstream.transport.abort()
        self.links.clear()

    def freeze(self) -> None:
        """Stop forwarding on the open connections but keep them open (a half-dead link)."""
        for _, _, flowing in self.links:
            flowing.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.accepted_at.append(asyncio.get_running_loop().time())
        if self.refusing:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        flowing = asyncio.Event()
        flowing.set()
        self.links.append((writer, up_writer, flowing))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink, flowing))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, flowing: asyncio.Event
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                await flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()


@pytest.fixture
async def proxy_for() -> AsyncIterator[Callable[[RunningBridge], Awaitable[Proxy]]]:
    proxies: list[Proxy] = []

    async def make(bridge: RunningBridge) -> Proxy:
        proxy = Proxy(bridge.port)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


async def take(sub: AsyncIterator[Event[Any]], count: int, timeout: float = 10) -> list[Event[Any]]:
    events: list[Event[Any]] = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            events.append(await anext(sub))
    return events


async def quiet(sub: AsyncIterator[Event[Any]], seconds: float = 0.3) -> bool:
    """True when nothing arrives within `seconds`."""
    try:
        event = await asyncio.wait_for(anext(sub), seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"expected nothing, got {event!r}")


def test_the_websocket_url_is_derived_from_the_base_url() -> None:
    assert websocket_url("http://h:8000", "k") == "ws://h:8000/ws/db_subscriptions?apikey=k&batch=1"
    assert (
        websocket_url("https://example.com/bridge/?x=1&apikey=old", "k")
        == "wss://example.com/bridge/ws/db_subscriptions?x=1&apikey=k&batch=1"
    )
    assert websocket_url("ws://h/ws/db_subscriptions", None) == "ws://h/ws/db_subscriptions?batch=1"
    with pytest.raises(ValueError, match="http"):
        websocket_url("ftp://h", "k")


async def test_typed_events_with_filters_and_the_raw_frame_by_key(
    start_bridge: BridgeFactory, db: asyncpg.Connection, registry: PluginRegistry
) -> None:
    bridge = await start_bridge()
    # The registry types position-updates; `model=` types trade-updates with a model
    # of the caller's own.
    position_model = registry.by_channel["position-updates"].model
    registry = PluginRegistry([registry.by_channel["position-updates"]])
    async with (
        connect(bridge.url, api_key=bridge.service_key, registry=registry) as client,
        client.subscribe("position-updates", filters={"user_id": "u1"}) as positions,
        client.subscribe("trade-updates", filters="status=eq.open", model=TradeView) as trades,
        client.subscribe("public.trades", filters={"symbol": "OPEN"}) as table,
    ):
        assert client.state is ConnectionState.OPEN
        first = await db.fetchval(POSITION, "u1", "AAPL", 2)
        await db.fetchval(POSITION, "u2", "MSFT", 3)
        await db.execute("UPDATE positions SET current_price = 120 WHERE id = $1", first)
        await db.fetchval(TRADE, "u1", "PENDING", "pending")
        trade_id = await db.fetchval(TRADE, "u2", "OPEN", "open")

        insert, update = await take(positions, 2)
        (trade,) = await take(trades, 1)
        (row,) = await take(table, 1)
        assert await quiet(positions)
        assert await quiet(trades, 0.1)

    assert isinstance(insert.data, position_model)
    assert position_model.__name__ == "PositionUpdate"
    assert insert.data.model_dump()["market_value"] == 220.0
    assert insert.old is None
    assert (insert.channel, insert.event, insert.operation) == (
        "position-updates",
        "position_update",
        "INSERT",
    )
    assert (insert.record_id, insert.user_id, insert.table) == (first, "u1", "public.positions")
    assert insert.timestamp.tzinfo is not None
    assert insert["data"] == {**insert["data"], "market_value": 220.0}
    assert isinstance(insert["data"], dict)
    assert isinstance(update.old, position_model)
    assert isinstance(update.data, position_model)
    assert update.old.model_dump()["current_price"] == 110.0
    assert update.data.model_dump()["current_price"] == 120.0
    assert insert.seq < update.seq < trade.seq

    assert trade.data == TradeView(id=trade_id, status="open", user_id="u2")
    # A table channel without a plugin model carries the raw row as a dict.
    assert row.data == row["data"]
    assert isinstance(row.data, dict)
    assert row["data"]["symbol"] == "OPEN"
    assert "market_value" not in row
    assert dict(row)["seq"] == row.seq


async def test_two_subscriptions_share_one_socket(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with connect(bridge.url, api_key=bridge.service_key) as client:
        async with (
            client.subscribe("position-updates", filters={"user_id": "u1"}) as mine,
            client.subscribe("position-updates") as everyone,
        ):
            ids = (mine.id, everyone.id)
            assert None not in ids
            assert ids[0] != ids[1]
            await db.execute(POSITION, "u1", "A", 1)
            await db.execute(POSITION, "u2", "B", 1)
            (a,) = await take(mine, 1)
            both = await take(everyone, 2)
            stats = bridge.bridge.stats()
            assert stats["connections"] == 1
            assert stats["subscriptions"]["position-updates"] == 2
        # Leaving `async with` unsubscribed both; the socket stays.
        await until(
            lambda: bridge.bridge.stats()["subscriptions"].get("position-updates", 0) == 0,
            what="the server to drop both subscriptions",
        )
        assert client.connections == 1
    assert mine.id is None
    assert a.subscription_id == ids[0]
    assert {e.subscription_id for e in both} == {ids[1]}
    assert [e["data"]["symbol"] for e in both] == ["A", "B"]


async def test_reconnects_and_resumes_with_no_loss_and_no_duplicate(
    start_bridge: BridgeFactory,
    db: asyncpg.Connection,
    proxy_for: Callable[[RunningBridge], Awaitable[Proxy]],
) -> None:
    bridge = await start_bridge()
    proxy = await proxy_for(bridge)
    async with (
        connect(proxy.url, api_key=bridge.service_key, **FAST) as client,
        client.subscribe("position-updates", filters={"user_id": "u1"}) as positions,
        client.subscribe("trade-updates") as trades,
    ):
        await db.execute(POSITION, "u1", "BEFORE", 1)
        await take(positions, 1)
        # A burst, cut off in the middle by a network failure.
        writer = asyncio.create_task(
            db.execute(
                "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
                "SELECT 'u1', 'BURST', g, 1 FROM generate_series(1, 200) g"
            )
        )
        proxy.refusing = True
        proxy.drop_all()
        await writer
        for i in range(5):
            await db.execute(POSITION, "u1" if i % 2 == 0 else "u2", f"DOWN{i}", i)
            await db.execute(TRADE, "u1", f"DOWN{i}", "open")
        await until(lambda: proxy.accepted >= 2, what="a few refused reconnects")
        assert client.state is ConnectionState.CONNECTING
        proxy.refusing = False
        await db.execute(POSITION, "u1", "AFTER", 1)

        resumed = await take(positions, 200 + 3 + 1)
        trade_events = await take(trades, 5)
        assert await quiet(positions)
        assert client.connections == 2
    symbols = [e["data"]["symbol"] for e in resumed]
    assert symbols == ["BURST"] * 200 + ["DOWN0", "DOWN2", "DOWN4", "AFTER"]
    assert [e["data"]["quantity"] for e in resumed[:200]] == [float(i) for i in range(1, 201)]
    seqs = [e.seq for e in resumed]
    assert seqs == sorted(set(seqs))
    assert [e["data"]["symbol"] for e in trade_events] == [f"DOWN{i}" for i in range(5)]


async def test_a_silent_connection_is_detected_by_the_heartbeat_and_replaced(
    start_bridge: BridgeFactory,
    db: asyncpg.Connection,
    proxy_for: Callable[[RunningBridge], Awaitable[Proxy]],
) -> None:
    bridge = await start_bridge()
    proxy = await proxy_for(bridge)
    async with (
        connect(
            proxy.url,
            api_key=bridge.service_key,
            heartbeat_interval=0.1,
            heartbeat_timeout=0.3,
            **FAST,
        ) as client,
        client.subscribe("position-updates") as positions,
    ):
        proxy.freeze()  # the TCP connection stays open; nothing gets through
        await db.execute(POSITION, "u1", "FROZEN", 1)
        (event,) = await take(positions, 1, timeout=5)
        assert client.connections == 2
        assert proxy.accepted == 2
    assert event["data"]["symbol"] == "FROZEN"


async def test_a_consumer_that_falls_behind_catches_up_without_loss(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with (
        connect(bridge.url, api_key=bridge.service_key) as client,
        client.subscribe("position-updates", max_queue=8) as positions,
    ):
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
            "SELECT 'u1', 'S', g, 1 FROM generate_series(1, 100) g"
        )
        await asyncio.sleep(0.3)  # not reading: the queue fills, the feed stops
        assert len(positions._queue) <= 8
        events = await take(positions, 100)
        assert await quiet(positions)
        assert client.connections == 1
    assert [e["data"]["quantity"] for e in events] == [float(i) for i in range(1, 101)]


async def test_an_expired_token_is_renewed_through_get_access_token(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    asked = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def renew() -> str:
        nonlocal calls
        calls += 1
        asked.set()
        await release.wait()
        return bridge.user_token("u1", ttl=60)

    async with (
        connect(
            bridge.url,
            api_key=bridge.anon_key,
            access_token=bridge.user_token("u1", ttl=2),
            get_access_token=renew,
        ) as client,
        client.subscribe("position-updates") as positions,
    ):
        await db.execute(POSITION, "u1", "BEFORE", 1)
        (before,) = await take(positions, 1)
        await asyncio.wait_for(asked.wait(), 5)
        # Paused while the token is renewed: these must arrive afterwards.
        for i in range(3):
            await db.execute(POSITION, "u1", f"WHILE{i}", i)
        await db.execute(POSITION, "u2", "NOT-MINE", 1)
        assert await quiet(positions)
        release.set()
        missed = await take(positions, 3)
        await db.execute(POSITION, "u1", "AFTER", 1)
        (after,) = await take(positions, 1)
        assert await quiet(positions)
        assert client.connections == 1
    assert calls == 1
    assert before["data"]["symbol"] == "BEFORE"
    assert [e["data"]["symbol"] for e in missed] == ["WHILE0", "WHILE1", "WHILE2"]
    assert after["data"]["symbol"] == "AFTER"


async def test_a_token_that_expired_while_disconnected_is_renewed_at_the_handshake(
    start_bridge: BridgeFactory,
    db: asyncpg.Connection,
    proxy_for: Callable[[RunningBridge], Awaitable[Proxy]],
) -> None:
    bridge = await start_bridge()
    proxy = await proxy_for(bridge)
    renewed_while: list[ConnectionState] = []

    async def renew() -> str:
        renewed_while.append(client.state)
        return bridge.user_token("u1", ttl=60)

    async with (
        connect(
            proxy.url,
            api_key=bridge.anon_key,
            access_token=bridge.user_token("u1", ttl=2),
            get_access_token=renew,
            **FAST,
        ) as client,
        client.subscribe("position-updates") as positions,
    ):
        proxy.refusing = True
        proxy.drop_all()
        await db.execute(POSITION, "u1", "OFFLINE", 1)
        await asyncio.sleep(2.2)  # the token expires while the client is away
        proxy.refusing = False
        (event,) = await take(positions, 1)
        assert client.connections == 2
    assert event["data"]["symbol"] == "OFFLINE"
    # Renewed once, at the handshake the bridge refused for the expired token.
    assert renewed_while == [ConnectionState.CONNECTING]
    assert bridge.bridge.stats()["errors_sent"]["token_expired"] == 1


async def test_an_expired_token_without_a_renewer_raises_token_expired(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge()
    async with connect(
        bridge.url, api_key=bridge.anon_key, access_token=bridge.user_token("u1", ttl=1)
    ) as client:
        async with client.subscribe("position-updates") as positions:
            with pytest.raises(TokenExpired) as raised:
                await asyncio.wait_for(anext(positions), 5)
        assert isinstance(raised.value, auth.TokenExpired)
        assert client.failure is raised.value
        assert client.state is ConnectionState.CLOSED
        with pytest.raises(TokenExpired):
            await client.subscribe("trade-updates").__aenter__()


async def test_refusals_are_exceptions_and_the_socket_stays_usable(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with connect(bridge.url, api_key=bridge.anon_key) as anon:
        with pytest.raises(Unauthorized, match="anon key") as denied:
            await anext(anon.subscribe("trade-updates"))
        assert denied.value.code == "unauthorized"
        assert isinstance(denied.value, auth.Unauthorized)

    async with connect(bridge.url, api_key=bridge.service_key) as client:
        with pytest.raises(UnknownChannel) as unknown:
            await client.subscribe("nope").__aenter__()
        assert isinstance(unknown.value, errors.UnknownChannel)
        assert unknown.value.details == {"channel": "nope"}
        with pytest.raises(UnknownTable, match="not tracked") as table:
            await client.subscribe("public.missing").__aenter__()
        assert isinstance(table.value, UnknownChannel)
        with pytest.raises(InvalidFilter, match="colour") as bad_filter:
            await client.subscribe("position-updates", filters={"colour": "red"}).__aenter__()
        assert isinstance(bad_filter.value, errors.InvalidFilter)
        assert isinstance(bad_filter.value, Refused)
        # The connection survived every refusal.
        async with client.subscribe("position-updates") as positions:
            await db.execute(POSITION, "u1", "OK", 1)
            (event,) = await take(positions, 1)
        assert event["data"]["symbol"] == "OK"
        assert client.connections == 1

    async with connect(bridge.url, api_key="not-a-key", **FAST) as bad_key:
        with pytest.raises(Unauthorized, match="refused the connection"):
            await asyncio.wait_for(bad_key.subscribe("trade-updates").__aenter__(), 5)
        assert bad_key.connections == 0

    with pytest.raises(ClientClosed):
        await anext(connect(bridge.url).subscribe("trade-updates"))


async def test_resync_required_is_raised_then_the_subscription_goes_on(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    for i in range(3):
        await db.execute(POSITION, "u1", f"OLD{i}", i)
    bridge = await start_bridge(replay_window=1)
    assert await bridge.bridge.hub.wait_for_head(3, timeout=10)
    await db.execute("UPDATE realtime_bridge.outbox SET created_at = now() - interval '3 days'")
    assert await db.fetchval("SELECT realtime_bridge.prune()") == 3
    seen: list[ResyncRequired] = []
    async with (
        connect(bridge.url, api_key=bridge.service_key) as client,
        client.subscribe("position-updates", since=0) as raising,
        client.subscribe("position-updates", since=0, on_resync=seen.append) as calling,
    ):
        with pytest.raises(ResyncRequired) as resync:
            await asyncio.wait_for(anext(raising), 5)
        assert (resync.value.code, resync.value.earliest_seq) == ("resync_required", 4)
        # A change made before the bridge signalled the resync is part of the
        # snapshot the client reloads; wait for both signals before the next one.
        async with asyncio.timeout(5):
            while bridge.bridge.stats()["resyncs"] < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await db.execute(POSITION, "u1", "NEW", 1)
        (event,) = await take(raising, 1)
        (called,) = await take(calling, 1)
    assert event["data"]["symbol"] == called["data"]["symbol"] == "NEW"
    assert [r.earliest_seq for r in seen] == [4]


async def test_reconnect_waits_grow_with_jitter_up_to_the_maximum(
    start_bridge: BridgeFactory, proxy_for: Callable[[RunningBridge], Awaitable[Proxy]]
) -> None:
    bridge = await start_bridge()
    proxy = await proxy_for(bridge)
    proxy.refusing = True
    async with connect(
        proxy.url, api_key=bridge.service_key, reconnect_base=0.1, reconnect_max=0.4
    ):
        while proxy.accepted < 6:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    gaps = [b - a for a, b in itertools.pairwise(proxy.accepted_at[:6])]
    ceilings = [0.1, 0.2, 0.4, 0.4, 0.4]
    for gap, ceiling in zip(gaps, ceilings, strict=True):
        assert ceiling / 2 - 0.01 <= gap <= ceiling + 0.25, (gaps, ceilings)
    assert len({round(g, 3) for g in gaps[2:]}) > 1  # jittered, not in step


@contextlib.asynccontextmanager
async def scripted_bridge(
    answer: Callable[[dict[str, Any]], list[dict[str, Any]]],
) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in bridge answering each frame with `answer(frame)`; yields (url, frames seen).

    For orderings a real bridge produces only by chance.
    """
    seen: list[dict[str, Any]] = []

    async def session(ws: ServerConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            seen.append(frame)
            for reply in answer(frame):
                await ws.send(json.dumps(reply))

    async with serve(session, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"http://127.0.0.1:{port}", seen


EXPIRED = {"type": "error", "code": "token_expired", "message": "expired"}
CHANGE = {
    "type": "db_change",
    "subscription_id": "sub_1",
    "channel": "trade-updates",
    "event": "trade_update",
    "table": "public.trades",
    "operation": "INSERT",
    "user_id": "u1",
    "record_id": 1,
    "data": {"id": 1},
    "old": None,
    "seq": 8,
    "timestamp": "2026-11-23T07:36:57+00:00",
}


@pytest.mark.parametrize("expired_was_the_reply", [True, False])
async def test_a_token_expired_during_a_subscribe_is_told_apart_by_a_ping(
    expired_was_the_reply: bool,
) -> None:
    subscribes = 0

    def answer(frame: dict[str, Any]) -> list[dict[str, Any]]:
        nonlocal subscribes
        if frame["type"] == "ping":
            return [{"type": "pong"}]
        if frame["type"] == "access_token":
            return [{"type": "access_token", "status": "ok", "expires_at": None}]
        subscribes += 1
        subscribed = {"type": "subscribed", "subscription_id": "sub_1", "seq": 7}
        if expired_was_the_reply and subscribes == 1:
            return [EXPIRED]  # refused: the connection's token had expired
        if subscribes == 1:
            return [EXPIRED, subscribed, CHANGE]  # the bridge's own notice, then the reply
        return [subscribed, CHANGE]

    async def renew() -> str:
        return "fresh"

    async with (
        scripted_bridge(answer) as (url, seen),
        connect(url, api_key="k", get_access_token=renew) as client,
        client.subscribe("trade-updates") as trades,
    ):
        (event,) = await take(trades, 1)
        assert event.seq == 8
        assert client.connections == 1
    # (The unsubscribe at the end races the close, which ends it anyway.)
    kinds = [f["type"] for f in seen if f["type"] != "unsubscribe"]
    if expired_was_the_reply:
        assert kinds == ["subscribe", "ping", "access_token", "subscribe"]
    else:
        assert kinds == ["subscribe", "ping", "access_token"]
    assert seen[2]["token"] == "fresh"


TOKEN = "7340:7345:7341,7343"


async def test_a_snapshot_token_goes_with_every_resubscribe_until_a_resync() -> None:
    """Each connection: `subscribed`, then its script, then (but the last) the bridge hangs up."""
    resync = {
        "type": "resync_required",
        "subscription_id": "sub_1",
        "channel": "trade-updates",
        "earliest_seq": 300,
        "next_seq": 45,
    }
    scripts: list[list[dict[str, Any]]] = [[{**CHANGE, "seq": 41}], [resync], []]
    subscribes: list[dict[str, Any]] = []

    async def session(ws: ServerConnection) -> None:
        script = scripts.pop(0)
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            if frame["type"] != "subscribe":
                continue
            subscribes.append(frame)
            await ws.send(json.dumps({"type": "subscribed", "subscription_id": "sub_1", "seq": 45}))
            for reply in script:
                await ws.send(json.dumps(reply))
            if scripts:
                await ws.close()

    async with serve(session, "127.0.0.1", 0) as server:
        url = f"http://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}"
        async with (
            connect(url, api_key="k", **FAST) as client,
            client.subscribe("trade-updates", since=40, snapshot_token=TOKEN) as trades,
        ):
            (event,) = await take(trades, 1)
            with pytest.raises(ResyncRequired) as resync_required:
                await asyncio.wait_for(anext(trades), 5)
            async with asyncio.timeout(5):
                while len(subscribes) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
    assert event.seq == 41
    assert [(f["since"], f.get("snapshot_token")) for f in subscribes] == [
        (40, TOKEN),  # the first subscribe
        (41, TOKEN),  # after the bridge hung up: the same token, the new since
        (45, None),  # after resync_required: the token no longer applies
    ]
    assert resync_required.value.earliest_seq == 300


async def test_a_snapshot_token_needs_since(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge()
    async with connect(bridge.url, api_key=bridge.service_key) as client:
        with pytest.raises(ValueError, match="snapshot_token needs since"):
            client.subscribe("trade-updates", snapshot_token=TOKEN)
        # None (a snapshot from a bridge without a database log) is no token at all.
        assert "snapshot_token" not in client.subscribe(
            "trade-updates", since=3, snapshot_token=None
        )._subscribe_frame(None)


async def test_events_committed_together_arrive_batched_in_order(
    start_bridge: BridgeFactory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime_bridge.protocols import websocket, wire

    arrays: list[int] = []
    original = wire.write_batches

    def recording(encoder: wire.Encoder, frames: Any) -> Any:
        arrays.extend(len(run) for run in wire.batches(frames) if len(run) > 1)
        return original(encoder, frames)

    monkeypatch.setattr(websocket, "write_batches", recording)
    bridge = await start_bridge()
    async with (
        connect(bridge.url, api_key=bridge.service_key) as client,
        client.subscribe("position-updates", filters={"user_id": "u1"}) as positions,
    ):
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
            "SELECT 'u1', 'S' || i, i, 100, 110 FROM generate_series(1, 40) AS i"
        )
        events = await take(positions, 40)
        assert await quiet(positions)
    assert arrays, "the bridge sent no batch frame"
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 40
