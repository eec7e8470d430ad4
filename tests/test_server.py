"""Serving: SIGTERM (every deploy) drains the clients in bounded time, each told where to resume."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import websockets

from realtime_bridge.auth import Authenticator, Role
from tests.conftest import ROOT
from tests.helpers import insert_position
from tests.test_cli import free_port

SECRET = "test-secret-for-the-shutdown-test-0123456789"
SHUTDOWN_TIMEOUT = 5


def serve(dsn: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in {"SUPABASE_URL", "PORT"}}
    env.update(
        DATABASE_URL=dsn,
        SUPABASE_JWT_SECRET=SECRET,
        PLUGIN_PATHS=str(ROOT / "plugins"),
        SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
        LOG_LEVEL="INFO",
    )
    command = [sys.executable, "-m", "realtime_bridge", "serve", "--port", str(port)]
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_healthy(http: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert process.poll() is None, "serve exited during start-up"
        try:
            if (await http.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("serve never became healthy")


class SseReader:
    """Reads a stream's events (fields of each, comments skipped) in the background."""

    def __init__(self, response: httpx.Response) -> None:
        self.events: list[dict[str, str]] = []
        self.ended = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read(response))

    async def _read(self, response: httpx.Response) -> None:
        fields: dict[str, str] = {}
        try:
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue
                if line == "":
                    if fields:
                        self.events.append(fields)
                        self._arrived.set()
                        fields = {}
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
        finally:
            self.ended.set()
            self._arrived.set()

    async def next(self, event: str, timeout: float) -> dict[str, str]:
        """The first event named `event` (earlier ones are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                while self.events:
                    fields = self.events.pop(0)
                    if fields.get("event") == event:
                        return fields
                if self.ended.is_set():
                    raise AssertionError(f"the stream ended without a {event!r} event")
                self._arrived.clear()
                await self._arrived.wait()

    def close(self) -> None:
        self._task.cancel()


async def test_sigterm_tells_every_client_to_reconnect_and_exits_in_bounded_time(
    dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    process = serve(dsn, port, log)
    service = Authenticator(SECRET).make_token(Role.SERVICE)
    headers = {"Authorization": f"Bearer {service}"}
    base = f"http://127.0.0.1:{port}"
    ws_base = f"ws://127.0.0.1:{port}"
    db = await asyncpg.connect(dsn)
    try:
        async with (
            httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http,
            httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as poller,
        ):
            await wait_healthy(http, process)
            async with (
                http.stream("GET", "/sse/position-updates") as sse,
                websockets.connect(f"{ws_base}/ws/db_subscriptions?apikey={service}") as ws,
                websockets.connect(
                    f"{ws_base}/realtime/v1/websocket?apikey={service}&vsn=1.0.0"
                ) as phx,
            ):
                reader = SseReader(sse)
                await ws.send(orjson.dumps({"type": "subscribe", "channel": "position-updates"}))
                subscribed = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert subscribed["type"] == "subscribed", subscribed
                join = {
                    "topic": "realtime:room1",
                    "event": "phx_join",
                    "payload": {"config": {}},
                    "ref": "1",
                    "join_ref": "1",
                }
                await phx.send(orjson.dumps(join).decode())
                assert orjson.loads(await asyncio.wait_for(phx.recv(), 5))["event"] == "phx_reply"

                # A second subscription, following a snapshot with its token.
                taken = (await http.get("/api/channels/public.trades/snapshot")).json()
                assert taken["snapshot_token"], taken
                after = {
                    "type": "subscribe",
                    "table": "public.trades",
                    "since": taken["seq"],
                    "snapshot_token": taken["snapshot_token"],
                }
                await ws.send(orjson.dumps(after))
                following = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert following["type"] == "subscribed", following

                await insert_position(db, "u1", "AAPL")
                change = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                assert change["type"] == "db_change", change
                seq = change["seq"]
                streamed = await reader.next("position_update", 5)
                assert streamed["id"] == str(seq)

                poll = asyncio.create_task(
                    poller.get(
                        "/api/channels/position-updates/events", params={"since": seq, "wait": 30}
                    )
                )
                await asyncio.sleep(0.5)  # the long-poll is waiting
                assert not poll.done()

                process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()

                # SSE: a retry and a final event carrying the resume position as its id.
                final = await reader.next("reconnect", SHUTDOWN_TIMEOUT)
                assert final["id"] == str(seq)
                assert int(final["retry"]) > 0
                notice = orjson.loads(final["data"])
                assert notice["code"] == "service_restart"
                assert notice["last_event_id"] == seq
                # ...and then the stream ends.
                await asyncio.wait_for(reader.ended.wait(), SHUTDOWN_TIMEOUT)
                assert reader.events == []

                # JSON WebSocket: a reconnect frame with each subscription's `since`, then 1012.
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), SHUTDOWN_TIMEOUT))
                assert frame["type"] == "reconnect", frame
                assert frame["code"] == "service_restart"
                assert frame["subscriptions"] == [
                    {
                        "subscription_id": subscribed["subscription_id"],
                        "channel": "position-updates",
                        "since": seq,
                    },
                    {  # the token goes with it: the resumed subscription still skips
                        "subscription_id": following["subscription_id"],
                        "channel": "public.trades",
                        "since": taken["seq"],  # no trade since
                        "snapshot_token": taken["snapshot_token"],
                    },
                ]
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), SHUTDOWN_TIMEOUT)
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1012

                # Supabase protocol: closed 1012 like Phoenix's socket drainer (clients rejoin).
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(phx.recv(), SHUTDOWN_TIMEOUT)  # and no phx_close
                assert closed.value.rcvd is not None
                assert closed.value.rcvd.code == 1012

                # Long-poll: answered at once with what it has and where to poll from.
                response = await asyncio.wait_for(poll, SHUTDOWN_TIMEOUT)
                assert response.status_code == 200
                assert response.json() == {"events": [], "next_seq": seq}

        code = await asyncio.to_thread(process.wait, SHUTDOWN_TIMEOUT + 5)
        took = time.monotonic() - signalled
        assert code == 0, log.read_text()
        assert took < SHUTDOWN_TIMEOUT + 3, took
        print(f"exited {code} {took:.2f} s after SIGTERM")
    finally:
        await db.close()
        if process.poll() is None:
            process.kill()
            process.wait()
