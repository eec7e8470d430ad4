"""Connection limits: who a connection counts for, and that every count comes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidStatus

from realtime_bridge.limits import ConnectionLimits, TooManyConnections
from realtime_bridge.settings import Settings
from realtime_bridge.testing import RunningBridge, run_bridge
from tests.conftest import BridgeFactory, make_settings
from tests.helpers import until
from tests.test_supabase_protocol import phx

BINDING = {"event": "*", "schema": "public", "table": "positions"}


def counts(bridge: RunningBridge) -> tuple[dict[str, int], dict[str, int]]:
    limits = bridge.bridge.limits
    return dict(limits.by_ip), dict(limits.by_user)


async def settled(bridge: RunningBridge, timeout: float = 5.0) -> None:
    """Every per-address and per-user counter is back to zero."""
    limits = bridge.bridge.limits
    await until(lambda: not limits.by_ip and not limits.by_user, timeout, "counters at zero")


def test_a_seat_counts_each_user_once_and_gives_everything_back() -> None:
    limits = ConnectionLimits(Settings(_env_file=None, max_connections_per_user=1))  # type: ignore[call-arg]
    seat = limits.seat("10.0.0.1")
    seat.occupy(None)
    seat.hold("u1")
    seat.hold("u1")  # a second channel for the same user: still one connection
    assert limits.by_user == {"u1": 1}
    other = limits.seat("10.0.0.1")
    other.occupy(None)
    with pytest.raises(TooManyConnections):
        other.hold("u1")
    with pytest.raises(TooManyConnections):
        other.switch(None, "u1")
    seat.switch("u1", "u2")
    assert limits.by_user == {"u1": 1, "u2": 1}
    seat.close()
    seat.close()
    other.close()
    assert limits.by_user == {}
    assert limits.by_ip == {}


# -- JSON WebSocket -------------------------------------------------------------------


async def test_a_subscribe_token_counts_against_its_user(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(max_connections_per_user=3)
    token = bridge.user_token("u1")
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):
            ws = await stack.enter_async_context(bridge.websocket(key=bridge.anon_key))
            reply = await ws.subscribe(channel="position-updates", token=token, client_id="c")
            assert reply["type"] == "subscribed", reply
        fourth = await stack.enter_async_context(bridge.websocket(key=bridge.anon_key))
        refused = await fourth.subscribe(channel="position-updates", token=token, client_id="c4")
        assert refused["type"] == "error"
        assert refused["code"] == "too_many_connections"
        assert refused["client_id"] == "c4"
        # Refused, not closed: the socket carries on as the anon key.
        await fourth.send({"type": "ping"})
        assert await fourth.recv() == {"type": "pong"}
        assert counts(bridge)[1] == {"u1": 3}
    await settled(bridge)


async def test_an_identity_switch_moves_the_count(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(max_connections_per_user=3)
    for _ in range(3):
        async with bridge.websocket(key=bridge.user_token("u1")) as ws:
            await ws.send({"type": "access_token", "token": bridge.user_token("u2")})
            assert (await ws.recv())["status"] == "ok"
            assert counts(bridge)[1] == {"u2": 1}
    await settled(bridge)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(3):  # u1 was never left holding a phantom connection
            await stack.enter_async_context(bridge.websocket(key=bridge.user_token("u2")))
        async with bridge.websocket(key=bridge.user_token("u1")) as mine:
            await mine.send({"type": "access_token", "token": bridge.user_token("u2")})
            refused = await mine.recv()
            assert refused["code"] == "too_many_connections", refused
            # Still u1, subscriptions and all.
            reply = await mine.subscribe(channel="position-updates")
            assert reply["type"] == "subscribed", reply
            assert counts(bridge)[1] == {"u1": 1, "u2": 3}
    await settled(bridge)


@pytest.mark.parametrize("path", ["handshake", "frame", "switch", "expiry", "abort"])
async def test_json_socket_counters_return_to_zero(start_bridge: BridgeFactory, path: str) -> None:
    bridge = await start_bridge()
    key = bridge.user_token("u1", ttl=1) if path == "expiry" else bridge.user_token("u1")
    if path == "frame":
        key = bridge.anon_key
    async with bridge.websocket(key=key) as ws:
        if path == "frame":
            token = bridge.user_token("u1")
            assert (await ws.subscribe(channel="position-updates", token=token))["type"] == (
                "subscribed"
            )
        elif path == "switch":
            await ws.send({"type": "access_token", "token": bridge.user_token("u2")})
            assert (await ws.recv())["status"] == "ok"
        elif path == "expiry":
            assert (await ws.recv(timeout=5))["code"] == "token_expired"
        assert counts(bridge)[0] == {"127.0.0.1": 1}
        assert len(counts(bridge)[1]) == 1
        if path == "abort":
            ws.ws.transport.abort()  # an abrupt TCP drop: no close frame
    await settled(bridge)


# -- Supabase (Phoenix) ---------------------------------------------------------------


async def test_a_join_token_counts_against_its_user(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(max_connections_per_user=3)
    token = bridge.user_token("u1")
    async with contextlib.AsyncExitStack() as stack:
        for i in range(3):
            client = await stack.enter_async_context(phx(bridge, key=bridge.anon_key))
            joined = await client.join(f"realtime:a{i}", {"postgres_changes": [BINDING]}, token)
            assert joined.payload["status"] == "ok", joined
            # A second channel of the same user on the same socket: still one connection.
            again = await client.join(f"realtime:b{i}", {"postgres_changes": [BINDING]}, token)
            assert again.payload["status"] == "ok", again
        assert counts(bridge)[1] == {"u1": 3}
        fourth = await stack.enter_async_context(phx(bridge, key=bridge.anon_key))
        refused = await fourth.join("realtime:d", {"postgres_changes": [BINDING]}, token)
        assert refused.payload["status"] == "error"
        assert "too_many_connections" in refused.payload["response"]["reason"]
        # The socket stays usable under its own key.
        joined = await fourth.join("realtime:room", {})
        assert joined.payload["status"] == "ok"
        # A channel switching to u1's token is refused the same way and keeps its token.
        await fourth.push("realtime:room", "access_token", {"access_token": token})
        system = await fourth.next("system")
        assert system.payload["status"] == "error"
        assert "too_many_connections" in system.payload["message"]
        await fourth.push("phoenix", "heartbeat", {})
        assert (await fourth.next("phx_reply")).payload["status"] == "ok"
        assert counts(bridge)[1] == {"u1": 3}
    await settled(bridge)


@pytest.mark.parametrize("path", ["handshake", "join", "switch", "expiry", "leave", "abort"])
async def test_supabase_socket_counters_return_to_zero(
    start_bridge: BridgeFactory, path: str
) -> None:
    bridge = await start_bridge()
    config = {"postgres_changes": [BINDING]}
    key = bridge.user_token("u1") if path == "handshake" else bridge.anon_key
    async with phx(bridge, key=key) as client:
        if path != "handshake":
            ttl = 1 if path == "expiry" else 3600
            joined = await client.join("realtime:t", config, bridge.user_token("u1", ttl=ttl))
            assert joined.payload["status"] == "ok", joined
            assert counts(bridge)[1] == {"u1": 1}
        if path == "switch":
            token = bridge.user_token("u2")
            await client.push("realtime:t", "access_token", {"access_token": token})
            await client.push("phoenix", "heartbeat", {})
            await client.next("phx_reply")
            assert counts(bridge)[1] == {"u2": 1}
        elif path == "expiry":
            await client.next("system")
            expired = await client.next("system", timeout=5)
            assert expired.payload["message"].startswith("Token has expired")
        elif path == "leave":
            await client.push("realtime:t", "phx_leave", {})
            await client.next("phx_close")
            assert counts(bridge)[1] == {}
        elif path == "abort":
            client.ws.transport.abort()
    await settled(bridge)


# -- SSE and long-poll ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["close", "expiry", "abort"])
async def test_sse_counters_return_to_zero(start_bridge: BridgeFactory, path: str) -> None:
    bridge = await start_bridge()
    ttl = 1 if path == "expiry" else 3600
    headers = {"Authorization": f"Bearer {bridge.user_token('u1', ttl=ttl)}"}
    if path == "abort":
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        request = (
            f"GET /sse/position-updates HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {headers['Authorization']}\r\n\r\n"
        )
        writer.write(request.encode())
        assert b"200" in await reader.readline()
        await until(lambda: counts(bridge)[1] == {"u1": 1}, what="the stream counted")
        writer.transport.abort()
        await settled(bridge)
        return
    async with (
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as http,
        http.stream("GET", "/sse/position-updates", headers=headers) as stream,
    ):
        lines = stream.aiter_lines()
        assert (await anext(lines)).startswith(": subscribed")
        assert counts(bridge)[1] == {"u1": 1}
        if path == "expiry":
            async for line in lines:
                if "token_expired" in line:
                    break
    await settled(bridge)


async def test_an_abandoned_long_poll_gives_its_place_back(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge()
    _reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(
        b"GET /api/channels/position-updates/events?wait=30 HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {bridge.user_token('u1')}\r\n\r\n".encode()
    )
    await writer.drain()
    await until(lambda: counts(bridge)[1] == {"u1": 1}, what="the poll counted")
    writer.transport.abort()
    await settled(bridge)


# -- forwarded addresses --------------------------------------------------------------


async def test_forwarded_for_is_ignored_unless_the_proxy_is_trusted(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge(max_connections_per_ip=1)
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    async with bridge.websocket():
        with pytest.raises(InvalidStatus) as refused:
            async with bridge.websocket(additional_headers=spoofed):
                pass
        assert refused.value.response.status_code == 429
        assert counts(bridge)[0] == {"127.0.0.1": 1}


async def test_a_trusted_proxy_forwards_the_client_address(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge(max_connections_per_ip=1, trusted_proxies="127.0.0.1")
    async with (
        bridge.websocket(),
        bridge.websocket(additional_headers={"X-Forwarded-For": "203.0.113.9"}),
    ):
        assert counts(bridge)[0] == {"127.0.0.1": 1, "203.0.113.9": 1}
    await settled(bridge)


def test_trusted_proxies_are_validated() -> None:
    parsed = Settings(_env_file=None, trusted_proxies="10.0.0.0/8, 192.168.1.7,*")  # type: ignore[call-arg, arg-type]
    assert parsed.trusted_proxies == ["10.0.0.0/8", "192.168.1.7", "*"]
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        Settings(_env_file=None, trusted_proxies="railway")  # type: ignore[call-arg, arg-type]


# -- slow consumers -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def stalled_socket(bridge: RunningBridge, key: str, frame: str) -> AsyncIterator[None]:
    """A WebSocket client with a tiny receive buffer that sends `frame` and never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", bridge.port))
    request = (
        f"GET /ws/db_subscriptions?apikey={key} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(sock, 1)
    assert response.startswith(b"HTTP/1.1 101"), response
    payload = frame.encode()
    assert len(payload) < 126
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    await loop.sock_sendall(sock, bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    try:
        yield
    finally:
        sock.close()


async def test_a_stalled_reader_is_cut_off_and_its_place_given_back(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    timeout = 1.0
    bridge = await start_bridge(slow_consumer_timeout=timeout, send_queue_max=16)
    count = 400
    subscribe = '{"type":"subscribe","channel":"position-updates"}'
    async with contextlib.AsyncExitStack() as stack:
        fast = []
        for _ in range(3):
            ws = await stack.enter_async_context(bridge.websocket())
            assert (await ws.subscribe(channel="position-updates"))["type"] == "subscribed"
            fast.append(ws)
        await stack.enter_async_context(
            stalled_socket(bridge, bridge.user_token("slow"), subscribe)
        )
        await until(lambda: counts(bridge)[1] == {"slow": 1}, what="the slow client counted")
        await asyncio.sleep(0.2)  # its subscribe is in

        async def read_all(ws: Any) -> int:
            return len(await ws.changes(count, timeout=60))

        readers = [asyncio.create_task(read_all(ws)) for ws in fast]
        await db.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price) "
            "SELECT 'slow', repeat('X', 8000) || g, g, 1 FROM generate_series(1, $1) g",
            count,
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        await until(
            lambda: "slow" not in bridge.bridge.limits.by_user,
            timeout + 2,
            "the stalled client to be cut off",
        )
        assert loop.time() - started <= timeout + 2
        assert bridge.bridge.stats()["errors_sent"]["slow_consumer"] == 1
        assert bridge.bridge.counters.connections_open == 3
        assert [await reader for reader in readers] == [count] * 3


# -- refused handshakes in the log ----------------------------------------------------


class DenialUnfinishedProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sansio protocol as some releases ship it (Kludex/uvicorn#3138).

    Those never mark the handshake complete after a denial response, and log
    an ERROR for every deliberate refusal.
    """

    async def send(self, message: Any) -> None:
        before = self.handshake_complete
        await super().send(message)
        if message["type"] == "websocket.http.response.start":
            self.handshake_complete = before


async def test_a_refused_handshake_is_logged_once_and_not_as_an_error(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="realtime_bridge")
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addHandler(caplog.handler)
    try:
        settings = make_settings(dsn)
        async with run_bridge(settings, ws=DenialUnfinishedProtocol) as bridge:
            with pytest.raises(InvalidStatus) as refused:
                async with websockets.connect(bridge.ws_url + "?apikey=nope"):
                    pass
            assert refused.value.response.status_code == 401
            await asyncio.sleep(0.2)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    ours = [r.getMessage() for r in caplog.records if "refused a WebSocket" in r.getMessage()]
    assert len(ours) == 1
    assert "401 unauthorized" in ours[0]
    assert "127.0.0.1" in ours[0]
