"""Test helpers: a real Postgres, a running bridge, connected clients.

Used by this project's own suite and meant for yours (testing a plugin the
same way the bundled ones are tested)::

    async with TestDatabase.start() as databases:      # embedded, or DATABASE_URL
        dsn = await databases.create()                 # fresh database, migrated
        async with run_bridge(Settings(database_url=dsn)) as bridge:
            async with bridge.websocket() as ws:
                ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from realtime_bridge.app import create_app
from realtime_bridge.auth import Role
from realtime_bridge.bridge import Bridge
from realtime_bridge.embedded import EmbeddedPostgres
from realtime_bridge.migrate import migrate
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.server import BridgeServer, server_config
from realtime_bridge.settings import Settings


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@dataclass
class TestDatabase:
    """Hands out fresh, migrated databases cloned from one template."""

    __test__ = False  # not a pytest test class

    admin_dsn: str
    embedded: EmbeddedPostgres | None = None
    # The demo trading schema (supabase/demo) in every database handed out.
    demo: bool = False
    template: str = field(default_factory=lambda: f"rb_template_{os.getpid()}")
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _created: list[str] = field(default_factory=list)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, database_url: str | None = None, *, demo: bool = False
    ) -> AsyncIterator[TestDatabase]:
        """Use `database_url` (e.g. DATABASE_URL) or an embedded server in a temp folder.

        `demo=True` gives every database the demo trading schema as well.
        """
        embedded: EmbeddedPostgres | None = None
        temp: tempfile.TemporaryDirectory[str] | None = None
        if database_url is None:
            temp = tempfile.TemporaryDirectory(prefix="rb-test-pg-")
            embedded = EmbeddedPostgres(Path(temp.name))
            database_url = await asyncio.to_thread(embedded.start)
        databases = cls(database_url, embedded, demo)
        try:
            await databases._make_template()
            yield databases
        finally:
            await databases._drop_all()
            if embedded is not None:
                await asyncio.to_thread(embedded.stop, "immediate")
            if temp is not None:
                temp.cleanup()

    async def _admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.admin_dsn)

    async def _make_template(self) -> None:
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await conn.close()
        await migrate(with_database(self.admin_dsn, self.template), demo=self.demo)

    async def create(self) -> str:
        """A new database with every migration applied; returns its DSN."""
        name = f"rb_test_{os.getpid()}_{next(self._names)}"
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await conn.close()
        self._created.append(name)
        return with_database(self.admin_dsn, name)

    async def drop(self, dsn: str) -> None:
        """Drop one database made by `create()` (its replication slots first)."""
        name = urlsplit(dsn).path.lstrip("/")
        conn = await self._admin()
        try:
            await _drop_database(conn, name)
        finally:
            await conn.close()
        if name in self._created:
            self._created.remove(name)

    async def _drop_all(self) -> None:
        conn = await self._admin()
        try:
            for name in [*self._created, self.template]:
                await _drop_database(conn, name)
        finally:
            await conn.close()


async def _drop_database(conn: asyncpg.Connection, name: str) -> None:
    # A database with a replication slot cannot be dropped, even with FORCE.
    for _ in range(50):
        active = await conn.fetchval(
            """
            SELECT count(pg_terminate_backend(active_pid)) FROM pg_catalog.pg_replication_slots
            WHERE database = $1 AND active_pid IS NOT NULL
            """,
            name,
        )
        if not active:
            break
        await asyncio.sleep(0.05)
    await conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots"
        " WHERE database = $1 AND NOT active",
        name,
    )
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class RunningBridge:
    """A bridge served by uvicorn on a loopback port."""

    app: Any
    bridge: Bridge
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/db_subscriptions"

    @property
    def service_key(self) -> str:
        return self.bridge.auth.make_token(Role.SERVICE)

    @property
    def anon_key(self) -> str:
        return self.bridge.auth.make_token(Role.ANON)

    def user_token(self, user_id: str, ttl: float = 3600, **claims: Any) -> str:
        """A signed `authenticated` token for `user_id`."""
        return self.bridge.auth.make_token(Role.AUTHENTICATED, sub=user_id, ttl=ttl, **claims)

    @property
    def service_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.service_key}"}

    @contextlib.asynccontextmanager
    async def websocket(
        self, key: str | None = "service", **kwargs: Any
    ) -> AsyncIterator[JsonSocket]:
        """A JSON WebSocket client; `key` defaults to the service key (None: no key)."""
        url = self.ws_url
        if key == "service":
            key = self.service_key
        if key is not None:
            url += f"?apikey={key}"
        async with websockets.connect(url, max_size=None, **kwargs) as ws:
            yield JsonSocket(ws)


@dataclass
class JsonSocket:
    """A WebSocket client speaking JSON frames."""

    ws: ClientConnection

    async def send(self, frame: Any) -> None:
        await self.ws.send(
            frame if isinstance(frame, str | bytes) else orjson.dumps(frame).decode()
        )

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: dict[str, Any] = orjson.loads(raw)
        return frame

    async def subscribe(self, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """Send a subscribe frame and return the `subscribed` reply (or the error)."""
        await self.send({"type": "subscribe", **fields})
        return await self.recv(timeout)

    async def changes(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next `count` db_change frames (other frames are an error)."""
        frames: list[dict[str, Any]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(frames) < count:
            frame = await self.recv(max(deadline - loop.time(), 0.001))
            assert frame["type"] == "db_change", frame
            frames.append(frame)
        return frames

    async def silent(self, seconds: float = 0.3) -> bool:
        """True if nothing arrives within `seconds`."""
        try:
            frame = await self.recv(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected silence, got {frame}")


@contextlib.contextmanager
def real_redis(url: str | None = None) -> Iterator[str]:
    """`url` when given, else a `redis-server` from PATH on a free port, stopped on exit.

    Fails loudly (RuntimeError) when neither works: Redis tests must not pass by skipping.
    """
    if url is not None:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no REDIS_URL and no redis-server on PATH: install Redis or set one")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tempfile.TemporaryDirectory(prefix="rb-test-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder.name,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    error = process.stderr.read().decode() if process.stderr else ""
                    raise RuntimeError(f"redis-server did not start: {error}") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        folder.cleanup()


@contextlib.asynccontextmanager
async def run_bridge(
    settings: Settings, registry: PluginRegistry | None = None, **server_options: Any
) -> AsyncIterator[RunningBridge]:
    """Start the app on a free loopback port; stop it on exit.

    Served as `realtime-bridge serve` serves it (`server_options`: uvicorn's, to override).
    """
    app = create_app(settings, registry)
    config = server_config(
        app,
        settings,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        **server_options,
    )
    # The same shutdown as `serve`: clients get their reconnect notice on exit.
    server = BridgeServer(config, app.state.bridge, timeout=2)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the bridge stopped during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningBridge(app, app.state.bridge, port)
    finally:
        server.should_exit = True
        await task
