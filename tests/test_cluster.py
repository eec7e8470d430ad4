"""Several bridge instances on one database and one Redis (the backplane), on loopback.

In-process instances (run_bridge) for delivery and outages; `realtime-bridge
serve` subprocesses where an instance must die by SIGKILL (presence expiry,
leader failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets

from realtime_bridge.auth import Authenticator, Role
from realtime_bridge.sources.outbox import OutboxSource
from realtime_bridge.testing import JsonSocket, RunningBridge
from tests.conftest import ROOT, BridgeFactory
from tests.helpers import until
from tests.redis_support import RedisProcess, free_port, redis_server
from tests.test_supabase_protocol import INSERT, Phx

__all__ = ["redis_server"]  # the fixture, used by name

SECRET = "cluster-test-secret-" + "x" * 24
TTL = 1.5
# A dead instance's presences leave within TTL plus one heartbeat interval (TTL / 3).
LEAVE_BOUND = TTL * 4 / 3


def token(role: Role = Role.SERVICE) -> str:
    return Authenticator(SECRET).make_token(role)


@pytest.fixture
def prefix() -> str:
    """One backplane namespace per test (the session's Redis is shared)."""
    return f"rb-test-{secrets.token_hex(4)}"


@pytest.fixture
def cluster(
    start_bridge: BridgeFactory, redis_server: str, prefix: str
) -> Any:  # a factory of instances joined through the backplane
    async def start(**overrides: Any) -> RunningBridge:
        values: dict[str, Any] = {
            "redis_url": redis_server,
            "redis_prefix": prefix,
            "backplane_ttl": TTL,
            "supabase_jwt_secret": SECRET,
        }
        values.update(overrides)
        bridge = await start_bridge(**values)
        backplane = bridge.bridge.backplane
        assert backplane is not None
        assert await backplane.wait_connected(10), backplane.to_json()
        return bridge

    return start


@contextlib.asynccontextmanager
async def phx(port: int, vsn: str = "1.0.0") -> AsyncIterator[Phx]:
    url = f"ws://127.0.0.1:{port}/realtime/v1/websocket?apikey={token()}&vsn={vsn}"
    async with websockets.connect(url, max_size=None) as ws:
        yield Phx(ws, vsn)


async def health(port: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        body: dict[str, Any] = (
            await http.get("/health", headers={"Authorization": f"Bearer {token()}"})
        ).json()
        return body


async def diff_naming(client: Phx, key: str, side: str, timeout: float = 5.0) -> float:
    """Wait for a presence_diff with `key` among its `side` (joins/leaves); when it came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg = await client.next("presence_diff", max(deadline - loop.time(), 0.01))
        if key in msg.payload[side]:
            return time.monotonic()


async def broadcasts(client: Phx, seconds: float = 0.5) -> list[Any]:
    """Every broadcast payload arriving within `seconds`."""
    got: list[Any] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while True:
                msg = await client.recv(seconds)
                if msg.event == "broadcast":
                    got.append(msg.payload["payload"])
    return got


async def test_broadcasts_cross_instances_once_and_self_false_holds(cluster: Any) -> None:
    a, b = await cluster(), await cluster()
    topic = "realtime:room-1"
    config = {"broadcast": {"self": False}}
    async with phx(a.port) as sender, phx(a.port, "2.0.0") as near, phx(b.port) as far:
        for client in (sender, near, far):
            await client.join(topic, config)
        await sender.push(
            topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 1}}
        )
        assert await broadcasts(far) == [{"n": 1}]
        assert await broadcasts(near, 0.1) == [{"n": 1}]
        assert await broadcasts(sender, 0.1) == []
        # From B to A, and the REST endpoint of B reaches A too.
        await far.push(topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 2}})
        async with httpx.AsyncClient(base_url=b.url) as http:
            response = await http.post(
                "/api/broadcast/room-1/events/e",
                json={"n": 3},
                headers={"Authorization": f"Bearer {token()}"},
            )
            assert response.status_code in (200, 202), response.text
        assert await broadcasts(sender) == [{"n": 2}, {"n": 3}]
        assert await broadcasts(near, 0.1) == [{"n": 2}, {"n": 3}]
        assert await broadcasts(far, 0.1) == [{"n": 3}]
    for instance in (a, b):
        body = await health(instance.port)
        assert body["backplane"]["state"] == "connected"
        assert body["role"] in ("leader", "follower")


async def test_presence_converges_and_a_stopped_instance_leaves(cluster: Any) -> None:
    a, b = await cluster(), await cluster()
    topic = "realtime:lobby"
    async with phx(b.port) as watcher:
        await watcher.join(topic, {"presence": {"enabled": True, "key": "w"}})
        assert (await watcher.next("presence_state")).payload == {}
        async with phx(a.port) as bob:
            await bob.join(topic, {"presence": {"enabled": True, "key": "bob"}})
            await bob.next("presence_state")
            await bob.push(topic, "presence", {"event": "track", "payload": {"at": 1}})
            diff = await watcher.next("presence_diff")
            assert diff.payload["joins"]["bob"]["metas"][0]["at"] == 1
            # Tracked on B: seen on A (bob's diff), and a newcomer on B sees both.
            await watcher.push(topic, "presence", {"event": "track", "payload": {"at": 2}})
            await diff_naming(bob, "w", "joins")
            async with phx(b.port) as newcomer:
                await newcomer.join(topic, {"presence": {"enabled": True, "key": "n"}})
                state = (await newcomer.next("presence_state")).payload
                assert set(state) == {"bob", "w"}
        # bob's socket closed on A: B hears the leave.
        await diff_naming(watcher, "bob", "leaves")
        # A whole instance stopping: its members leave at once (not after the TTL).
        c = await cluster()
        async with phx(c.port) as carol:
            await carol.join(topic, {"presence": {"enabled": True, "key": "carol"}})
            await carol.push(topic, "presence", {"event": "track", "payload": {}})
            await diff_naming(watcher, "carol", "joins")
            assert c.bridge.backplane is not None
            started = time.monotonic()
            await c.bridge.backplane.stop()
            assert await diff_naming(watcher, "carol", "leaves", timeout=TTL) - started < TTL


async def test_a_change_reaches_every_instance_once_with_the_same_seqs(
    cluster: Any, db: asyncpg.Connection
) -> None:
    instances = [await cluster() for _ in range(3)]
    roles = sorted([(await health(i.port))["role"] for i in instances])
    assert roles == ["follower", "follower", "leader"]
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(i.websocket()) for i in instances]
        for ws in sockets:
            assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
        ids = [await db.fetchval(INSERT, "u1", f"S{n}", n + 1) for n in range(20)]
        seen = []
        for ws in sockets:
            changes = await ws.changes(20)
            assert await ws.silent(0.3)
            seen.append([(c["seq"], c["data"]["id"]) for c in changes])
    assert seen[0] == seen[1] == seen[2]
    assert [row_id for _, row_id in seen[0]] == ids
    for instance in instances:
        body = await health(instance.port)
        assert body["lag_seqs"] == 0
        assert body["log_head"] == body["last_seq"]


async def test_a_redis_outage_degrades_to_local_delivery_and_recovers(
    start_bridge: BridgeFactory, prefix: str
) -> None:
    redis = RedisProcess()
    redis.start()
    try:
        settings = {
            "redis_url": redis.url,
            "redis_prefix": prefix,
            "backplane_ttl": TTL,
            "supabase_jwt_secret": SECRET,
        }
        a, b = await start_bridge(**settings), await start_bridge(**settings)
        for instance in (a, b):
            assert instance.bridge.backplane is not None
            assert await instance.bridge.backplane.wait_connected(10)
        topic = "realtime:outage"
        async with (
            phx(a.port) as sender,
            phx(a.port) as near,
            phx(b.port) as far,
        ):
            for client in (sender, near, far):
                await client.join(topic, {"presence": {"enabled": True, "key": "k"}})
            redis.stop()
            for instance in (a, b):
                await until(
                    lambda i=instance: i.bridge.backplane.state.value == "degraded",  # type: ignore[misc]
                    timeout=10,
                )
            body = await health(a.port)
            assert body["backplane"]["state"] == "degraded"
            assert body["backplane"]["last_error"]
            assert body["status"] == "ok"  # the database side is untouched
            await sender.push(
                topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 1}}
            )
            assert await broadcasts(near) == [{"n": 1}]
            assert await broadcasts(far, 0.2) == []
            # Tracked while Redis is away: B learns it once Redis is back.
            await sender.push(
                topic, "presence", {"event": "track", "payload": {"during": "outage"}}
            )
            redis.start()
            for instance in (a, b):
                assert instance.bridge.backplane is not None
                assert await instance.bridge.backplane.wait_connected(15)
            joined = await far.next("presence_diff", timeout=10)
            assert joined.payload["joins"]["k"]["metas"][0]["during"] == "outage"
            await sender.push(
                topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 2}}
            )
            assert await broadcasts(far) == [{"n": 2}]
            assert (await health(b.port))["backplane"]["reconnects"] >= 1
    finally:
        redis.close()


# subprocess instances -------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@contextlib.asynccontextmanager
async def serve(dsn: str, tmp: str, **env: str) -> AsyncIterator[Served]:
    """`realtime-bridge serve` in a subprocess, healthy; SIGINT (or already killed) on exit."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k not in {"SUPABASE_URL", "REDIS_URL"}}
    environ.update(
        DATABASE_URL=dsn,
        HOST="127.0.0.1",
        PORT=str(port),
        PLUGIN_PATHS=str(ROOT / "plugins"),
        SUPABASE_JWT_SECRET=SECRET,
        DATA_DIR=tmp,
        LOG_LEVEL="WARNING",
        PRUNE_INTERVAL="3600",
        **env,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "realtime_bridge", "serve"], env=environ, cwd=tmp
    )
    served = Served(process, port)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "serve exited during start-up"
            with contextlib.suppress(httpx.TransportError):
                if (await health(port)).get("status") == "ok":
                    break
            assert time.monotonic() < deadline, "serve never became healthy"
            await asyncio.sleep(0.1)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                served.kill()


async def test_a_killed_instances_presences_leave_within_the_bound(
    cluster: Any, redis_server: str, prefix: str, dsn: str, tmp_path: Any
) -> None:
    b = await cluster()
    topic = "realtime:kill"
    async with (
        serve(
            dsn,
            str(tmp_path),
            REDIS_URL=redis_server,
            REDIS_PREFIX=prefix,
            BACKPLANE_TTL=str(TTL),
        ) as a,
        phx(b.port) as watcher,
    ):
        await watcher.join(topic, {"presence": {"enabled": True, "key": "w"}})
        await watcher.next("presence_state")
        async with phx(a.port) as doomed:
            await doomed.join(topic, {"presence": {"key": "doomed"}})
            await doomed.push(topic, "presence", {"event": "track", "payload": {}})
            assert "doomed" in (await watcher.next("presence_diff", timeout=5)).payload["joins"]
            a.kill()
            killed = time.monotonic()
            left = await watcher.next("presence_diff", timeout=LEAVE_BOUND + 2)
            took = time.monotonic() - killed
        assert "doomed" in left.payload["leaves"]
        print(f"\npresence of a SIGKILLed instance left after {took:.2f} s (bound {LEAVE_BOUND} s)")
        assert took <= LEAVE_BOUND + 0.5
        body = await health(b.port)
        assert body["backplane"]["expired_instances"] == 1


@pytest.mark.parametrize("fanout", ["log", "stream"])
@pytest.mark.parametrize("capture", ["wal", "triggers"], indirect=True)
async def test_leader_failover_loses_and_duplicates_nothing(
    start_bridge: BridgeFactory,
    dsn: str,
    tmp_path: Any,
    capture: str,
    fanout: str,
    redis_server: str,
    prefix: str,
) -> None:
    """SIGKILL the leader mid-stream: a follower takes the slot; no client anywhere misses or
    repeats a change (with the change stream: the other follower keeps reading it)."""
    env = {"REDIS_URL": redis_server, "REDIS_PREFIX": prefix} if fanout == "stream" else {}
    linked = {"redis_url": redis_server, "redis_prefix": prefix} if fanout == "stream" else {}
    async with serve(dsn, str(tmp_path), CAPTURE=capture, **env) as leader:
        assert (await health(leader.port))["role"] == "leader"
        followers = [await start_bridge(supabase_jwt_secret=SECRET, **linked) for _ in range(2)]
        for follower in followers:
            assert (await health(follower.port))["role"] == "follower"
            if fanout == "stream":
                await stream_reading(follower)
        stop = asyncio.Event()
        inserted: list[int] = []

        async def write() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                n = 0
                while not stop.is_set():
                    inserted.append(await conn.fetchval(INSERT, "u1", f"F{n}", n + 1))
                    n += 1
                    await asyncio.sleep(0.002)
            finally:
                await conn.close()

        async with contextlib.AsyncExitStack() as stack:
            sockets = [await stack.enter_async_context(f.websocket()) for f in followers]
            for ws in sockets:
                assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
            writers = [asyncio.create_task(write()) for _ in range(3)]
            await until(lambda: len(inserted) > 150, timeout=20)
            leader.kill()
            killed = time.monotonic()
            at_kill = max(f.bridge.hub.head for f in followers)
            streamed_at_kill = [
                f.bridge.change_stream.delivered_changes if f.bridge.change_stream else 0
                for f in followers
            ]
            await until(
                lambda: any(f.bridge.role == "leader" for f in followers),
                timeout=30,
                what="a new leader",
            )
            took = time.monotonic() - killed
            # Changes flow again: something written after the kill was numbered and routed.
            await until(
                lambda: min(f.bridge.hub.head for f in followers) > at_kill + 10, timeout=30
            )
            flowing = time.monotonic() - killed
            await until(lambda: len(inserted) > 450, timeout=20)
            stop.set()
            await asyncio.gather(*writers)
            received = [await ws.changes(len(inserted), timeout=30) for ws in sockets]
            for ws in sockets:
                assert await ws.silent(0.5)
    print(
        f"\n{capture}/{fanout}: a follower took the lead {took * 1000:.0f} ms after the "
        f"leader's SIGKILL; changes flowed again on both after {flowing * 1000:.0f} ms"
    )
    for changes in received:
        seqs = [c["seq"] for c in changes]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        ids = [c["data"]["id"] for c in changes]
        assert sorted(ids) == sorted(inserted)
        assert len(set(ids)) == len(ids)
    assert [c["seq"] for c in received[0]] == [c["seq"] for c in received[1]]
    if fanout == "stream":
        n, still = next((n, f) for n, f in enumerate(followers) if f.bridge.role == "follower")
        assert still.bridge.change_stream is not None
        # The new leader's entries reached the remaining follower through the stream.
        assert still.bridge.change_stream.delivered_changes > streamed_at_kill[n] + 50
    assert took < 5


async def test_three_instances_behind_haproxy(
    cluster: Any, db: asyncpg.Connection, tmp_path: Any
) -> None:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if binary is None:
        pytest.fail("haproxy is not installed: run `make cluster-tools` (apt-get install haproxy)")
    instances = [await cluster() for _ in range(3)]
    port = free_port()
    servers = "\n".join(
        f"    server b{n} 127.0.0.1:{i.port} check inter 500ms" for n, i in enumerate(instances)
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n"
        "    timeout server 60s\n    timeout tunnel 1h\n"
        f"frontend public\n    bind 127.0.0.1:{port}\n    default_backend bridges\n"
        "backend bridges\n    balance roundrobin\n    option httpchk GET /health\n"
        f"{servers}\n"
    )
    proxy = subprocess.Popen([binary, "-db", "-f", str(config)])
    try:
        deadline = time.monotonic() + 10
        while True:
            assert proxy.poll() is None, "haproxy exited"
            with contextlib.suppress(httpx.TransportError):
                if (await health(port)).get("status") == "ok":
                    break
            assert time.monotonic() < deadline, "haproxy never answered"
            await asyncio.sleep(0.1)
        topic = "realtime:lb"
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(phx(port)) for _ in range(3)]
            # Round robin: one socket on each instance.
            await until(
                lambda: [i.bridge.counters.connections_open for i in instances] == [1, 1, 1],
                timeout=5,
                what="one connection per instance",
            )
            for client in clients:
                await client.join(topic, {"presence": {"enabled": True, "key": "k"}})
            await clients[0].push(
                topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {"via": "lb"}}
            )
            for client in clients[1:]:
                assert await broadcasts(client) == [{"via": "lb"}]
            await clients[1].push(topic, "presence", {"event": "track", "payload": {"n": 1}})
            for n in (0, 2):
                await diff_naming(clients[n], "k", "joins")
            url = f"ws://127.0.0.1:{port}/ws/db_subscriptions?apikey={token()}"
            sockets = [
                JsonSocket(await stack.enter_async_context(websockets.connect(url)))
                for _ in range(3)
            ]
            for ws in sockets:
                assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
            ids = [await db.fetchval(INSERT, "u1", f"L{n}", n + 1) for n in range(5)]
            seen = [[(c["seq"], c["data"]["id"]) for c in await ws.changes(5)] for ws in sockets]
            assert seen[0] == seen[1] == seen[2]
            assert [row_id for _, row_id in seen[0]] == ids
            assert [i.bridge.counters.connections_open for i in instances] == [2, 2, 2]
    finally:
        proxy.terminate()
        proxy.wait(10)


# the change stream (leader → followers through Redis) -------------------------------------

# Hostile payloads: ids that are equal as numbers but not as text, deep nesting, a large value.
DEEP: Any = {"leaf": True}
for _ in range(60):
    DEEP = {"next": DEEP, "0001": 1, "1": "0001"}
HOSTILE = [
    {"id": "0001", "other": "1", "nested": DEEP},
    {"id": "1", "big": "x" * 300_000, "unicode": "\u00e9\u4e2d\U0001f600\u0000"[:3]},
    {"list": [[[[[]]]]], "num": 12345678901234567, "neg": -0.5},
]


def logged(change: Any) -> tuple[Any, ...]:
    """What a change says, as every path must say it (outbox_id is this process's own)."""
    return (
        change.seq,
        change.operation,
        change.schema,
        change.table,
        change.record,
        change.old_record,
        change.committed_at,
        change.channel,
        change.event,
    )


def record_changes(instance: RunningBridge) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    instance.bridge.change_listeners.append(lambda batch: seen.extend(map(logged, batch)))
    return seen


async def stream_reading(instance: RunningBridge) -> None:
    stream = instance.bridge.change_stream
    assert stream is not None
    await until(lambda: stream.reading, timeout=10, what="the follower reading the stream")


async def write_mixed(dsn: str) -> int:
    """Single rows from 3 connections, a 50-row statement, updates, hostile broadcasts."""

    async def rows(n: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for i in range(10):
                await conn.fetchval(INSERT, f"u{n}", f"S{n}-{i}", i + 1)
        finally:
            await conn.close()

    await asyncio.gather(*(rows(n) for n in range(3)))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
            "SELECT 'u9', 'B' || g, g, 100, 110 FROM generate_series(1, 50) g"
        )
        await conn.execute("UPDATE positions SET current_price = 120 WHERE user_id = 'u9'")
        for payload in HOSTILE:
            await conn.execute(
                "SELECT realtime_bridge.broadcast('hostile', 'e', $1::jsonb)",
                orjson.dumps(payload).decode(),
            )
    finally:
        await conn.close()
    return 30 + 50 + 50 + len(HOSTILE)


@pytest.mark.parametrize("capture", ["wal", "triggers"], indirect=True)
async def test_the_change_stream_carries_every_change_once_as_the_log_holds_it(
    cluster: Any, dsn: str, capture: str
) -> None:
    leader = await cluster()
    streamed = await cluster()
    from_log = await cluster(change_stream=False)  # the Postgres path, for comparison
    assert streamed.bridge.role == from_log.bridge.role == "follower"
    stream = streamed.bridge.change_stream
    assert stream is not None
    assert from_log.bridge.change_stream is None
    # Any read of the log from now on would be a fallback, not a slow machine.
    stream.grace = 60
    await stream_reading(streamed)
    source = streamed.bridge.source
    assert isinstance(source, OutboxSource)
    reads_before = source.follower_statements
    seen = {
        name: record_changes(i) for name, i in (("L", leader), ("S", streamed), ("P", from_log))
    }
    async with streamed.websocket() as ws:
        assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
        start = leader.bridge.hub.head
        total = await write_mixed(dsn)
        for instance in (leader, streamed, from_log):
            await until(
                lambda i=instance: i.bridge.hub.head >= start + total,  # type: ignore[misc]
                timeout=30,
                what="every change routed",
            )
        frames = await ws.changes(130)
        assert await ws.silent(0.3)
    assert seen["S"] == seen["P"] == seen["L"]
    assert [c[0] for c in seen["S"]] == list(range(start + 1, start + total + 1))
    hostile = [c[4] for c in seen["S"] if c[7] == "hostile"]
    assert hostile == HOSTILE
    assert [f["seq"] for f in frames] == [c[0] for c in seen["S"] if c[3] == "positions"]
    # Everything came through the stream: not one read of the log.
    assert source.follower_statements == reads_before
    assert stream.delivered_changes == total
    assert stream.gaps_filled == stream.fallback_reads == 0
    body = await health(streamed.port)
    assert body["change_stream"]["state"] == "connected"
    assert body["lag_seqs"] == 0
    async with httpx.AsyncClient(base_url=streamed.url) as http:
        text = (await http.get("/metrics", headers={"Authorization": f"Bearer {token()}"})).text
    assert 'realtime_bridge_role{role="follower"} 1.0' in text
    assert 'realtime_bridge_backplane_up{link="stream"} 1.0' in text
    assert 'realtime_bridge_backplane_messages_total{direction="received",link="stream"}' in text
    leader_stream = (await health(leader.port))["change_stream"]
    assert leader_stream["published_changes"] >= total
    assert leader_stream["dropped"] == 0


async def test_redis_restarted_mid_stream_loses_and_repeats_nothing(
    start_bridge: BridgeFactory, prefix: str, dsn: str
) -> None:
    redis = RedisProcess()
    redis.start()
    try:
        settings = {"redis_url": redis.url, "redis_prefix": prefix, "supabase_jwt_secret": SECRET}
        leader = await start_bridge(**settings)
        follower = await start_bridge(**settings)
        assert follower.bridge.role == "follower"
        stream = follower.bridge.change_stream
        assert stream is not None
        await stream_reading(follower)
        stop = asyncio.Event()
        inserted: list[int] = []

        async def write() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                n = 0
                while not stop.is_set():
                    inserted.append(await conn.fetchval(INSERT, "u1", f"R{n}", n + 1))
                    n += 1
                    await asyncio.sleep(0.003)
            finally:
                await conn.close()

        async with follower.websocket() as ws:
            assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
            writers = [asyncio.create_task(write()) for _ in range(2)]
            await until(lambda: stream.delivered_changes > 50, timeout=20, what="stream traffic")
            redis.stop()
            await until(lambda: not stream.reading, timeout=10, what="the stream seen down")
            down_at = len(inserted)
            await until(lambda: len(inserted) > down_at + 50, timeout=20)
            # Postgres stood in while Redis was away.
            assert stream.fallback_reads >= 1
            assert (await health(follower.port))["change_stream"]["state"] == "degraded"
            redis.start()
            await stream_reading(follower)
            back = stream.delivered_changes
            await until(
                lambda: stream.delivered_changes > back + 50, timeout=20, what="the stream again"
            )
            stop.set()
            await asyncio.gather(*writers)
            changes = await ws.changes(len(inserted), timeout=30)
            assert await ws.silent(0.5)
    finally:
        redis.close()
    seqs = [c["seq"] for c in changes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    ids = [c["data"]["id"] for c in changes]
    assert sorted(ids) == sorted(inserted)
    assert len(set(ids)) == len(ids)
    assert leader.bridge.hub.head == follower.bridge.hub.head


async def test_a_follower_that_missed_trimmed_entries_reads_them_from_postgres(
    cluster: Any, redis_server: str, prefix: str, dsn: str, db: asyncpg.Connection, tmp_path: Any
) -> None:
    from redis.asyncio import Redis

    leader = await cluster()
    stream = leader.bridge.change_stream
    assert stream is not None
    async with (
        serve(dsn, str(tmp_path), REDIS_URL=redis_server, REDIS_PREFIX=prefix) as follower,
        websockets.connect(
            f"ws://127.0.0.1:{follower.port}/ws/db_subscriptions?apikey={token()}"
        ) as raw,
    ):
        ws = JsonSocket(raw)
        assert (await health(follower.port))["role"] == "follower"
        deadline = time.monotonic() + 10
        while not (await health(follower.port))["change_stream"]["reading"]:
            assert time.monotonic() < deadline, "the follower never read the stream"
            await asyncio.sleep(0.05)
        assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
        ids = [await db.fetchval(INSERT, "u1", f"T{n}", 1) for n in range(3)]
        assert len(await ws.changes(3)) == 3
        # The follower stalls; meanwhile its entries are written and trimmed away.
        follower.process.send_signal(signal.SIGSTOP)
        try:
            published = stream.published_changes
            missed = []
            for n in range(40):
                # Apart by more than WAL_LOG_INTERVAL: one stream entry each, so the
                # XREAD the follower was blocked in can hold only the first of them.
                missed.append(await db.fetchval(INSERT, "u1", f"M{n}", 1))
                await asyncio.sleep(0.05)
            await until(lambda: stream.published_changes >= published + 40, timeout=10)
            redis = Redis.from_url(redis_server)
            try:
                await redis.xtrim(stream.key, maxlen=0, approximate=False)
                assert await redis.xlen(stream.key) == 0
            finally:
                await redis.aclose()
            after = [await db.fetchval(INSERT, "u1", f"A{n}", 1) for n in range(5)]
            await until(lambda: stream.published_changes >= published + 45, timeout=10)
        finally:
            follower.process.send_signal(signal.SIGCONT)
        changes = await ws.changes(45, timeout=20)
        assert await ws.silent(0.5)
        body = await health(follower.port)
    got = [c["data"]["id"] for c in changes]
    assert got == missed + after
    seqs = [c["seq"] for c in changes]
    assert seqs == list(range(seqs[0], seqs[0] + 45))
    # Woken, the follower finds the hole before the next entry (gaps_filled), or its
    # NOTIFY fallback is due first (fallback_reads): either way Postgres filled it.
    read_postgres = body["change_stream"]["gaps_filled"] + body["change_stream"]["fallback_reads"]
    assert read_postgres >= 1
    assert ids


async def test_a_killed_follower_s_client_resumes_on_another_instance_losing_nothing(
    cluster: Any, redis_server: str, prefix: str, dsn: str, tmp_path: Any
) -> None:
    """SIGKILL a follower mid-stream: its client resumes on another instance by seq."""
    await cluster()  # the leader
    survivor = await cluster()
    async with serve(dsn, str(tmp_path), REDIS_URL=redis_server, REDIS_PREFIX=prefix) as doomed:
        assert (await health(doomed.port))["role"] == "follower"
        stop = asyncio.Event()
        inserted: list[int] = []

        async def write() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                n = 0
                while not stop.is_set():
                    inserted.append(await conn.fetchval(INSERT, "u1", f"K{n}", n + 1))
                    n += 1
                    await asyncio.sleep(0.003)
            finally:
                await conn.close()

        url = f"ws://127.0.0.1:{doomed.port}/ws/db_subscriptions?apikey={token()}"
        got: list[dict[str, Any]] = []
        async with websockets.connect(url) as raw:
            ws = JsonSocket(raw)
            assert (await ws.subscribe(table="positions"))["type"] == "subscribed"
            writers = [asyncio.create_task(write()) for _ in range(2)]
            with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
                while True:
                    frame = await ws.recv(5)
                    got.append(frame)
                    if len(got) == 100:
                        doomed.kill()
    assert len(got) >= 100
    last = got[-1]["seq"]
    async with survivor.websocket() as ws:
        reply = await ws.subscribe(table="positions", since=last)
        assert reply["type"] == "subscribed", reply
        await until(lambda: len(inserted) > len(got) + 100, timeout=20)
        stop.set()
        await asyncio.gather(*writers)
        rest = await ws.changes(len(inserted) - len(got), timeout=30)
        assert await ws.silent(0.5)
    changes = got + rest
    seqs = [c["seq"] for c in changes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    ids = [c["data"]["id"] for c in changes]
    assert sorted(ids) == sorted(inserted)
    assert len(set(ids)) == len(ids)
    print(
        f"\nfollower SIGKILLed after {len(got)} frames; resumed on another instance: 0 lost, 0 dup"
    )
