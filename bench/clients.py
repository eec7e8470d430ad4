"""WebSocket client processes: many sockets multiplexed on one event loop each.

The parent talks to each process over a pipe: it waits for ``ready`` (all
sockets connected and subscribed), asks for ``count`` while events drain,
sends the writer's commit times with ``results`` (each process computes its
own latencies) and finally ``close``.

Every received ``db_change`` is recorded as (marker, arrival time): the
writer stores the marker in the row's ``quantity``, and the arrival time is
``time.time()`` taken as soon as the frame is handed to us.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import signal
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.limits import event_loop_factory, raise_fd_limit

CONNECT_CONCURRENCY = 50


@dataclass(frozen=True)
class SocketSpec:
    """One socket: its subscribe frame and, for per-user, the user index it owns."""

    subscribe: dict[str, Any]
    owner: int | None = None


@dataclass
class _Socket:
    spec: SocketSpec
    markers: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    other_frames: dict[str, int] = field(default_factory=dict)
    closed_early: str | None = None


# the child process ------------------------------------------------------------


def client_main(control: Connection, ws_url: str, specs: list[SocketSpec], users: int) -> None:
    """Entry point of a client process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_client(control, ws_url, specs, users))


async def _client(control: Connection, ws_url: str, specs: list[SocketSpec], users: int) -> None:
    loop = asyncio.get_running_loop()
    sockets = [_Socket(spec) for spec in specs]
    connections: list[ClientConnection] = []
    readers: list[asyncio.Task[None]] = []
    errors: list[str] = []
    closing = False
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def open_one(sock: _Socket) -> None:
        async with gate:
            try:
                ws = await connect(
                    ws_url,
                    max_size=None,
                    compression=None,
                    ping_interval=None,
                    proxy=None,
                    open_timeout=60,
                    close_timeout=2,
                )
            except Exception as exc:
                errors.append(f"connect: {type(exc).__name__}: {exc}")
                return
            try:
                await ws.send(orjson.dumps(sock.spec.subscribe).decode())
                reply = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            except Exception as exc:
                errors.append(f"subscribe: {type(exc).__name__}: {exc}")
                await ws.close()
                return
            if reply.get("type") != "subscribed":
                errors.append(f"subscribe: {reply}")
                await ws.close()
                return
            connections.append(ws)
            readers.append(asyncio.create_task(read(ws, sock)))

    async def read(ws: ClientConnection, sock: _Socket) -> None:
        markers, times, other = sock.markers, sock.times, sock.other_frames
        try:
            async for raw in ws:
                now = time.time()
                frame = orjson.loads(raw)
                if frame.get("type") == "db_change":
                    markers.append(int(frame["data"]["quantity"]))
                    times.append(now)
                else:
                    kind = str(frame.get("type"))
                    other[kind] = other.get(kind, 0) + 1
        except ConnectionClosed as exc:
            if not closing:
                sock.closed_early = str(exc)
            return
        if not closing:
            sock.closed_early = "closed by the server"

    started = time.monotonic()
    await asyncio.gather(*(open_one(sock) for sock in sockets))
    control.send(
        (
            "ready",
            {
                "connected": len(connections),
                "failed": len(sockets) - len(connections),
                "errors": errors[:5],
                "seconds": time.monotonic() - started,
            },
        )
    )
    while True:
        command, payload = await loop.run_in_executor(None, control.recv)
        if command == "count":
            control.send(("count", sum(len(s.markers) for s in sockets)))
        elif command == "results":
            control.send(("results", _summarise(sockets, payload, users)))
        elif command == "close":
            closing = True
            for ws in connections:
                with contextlib.suppress(Exception):
                    await ws.close()
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            control.send(("closed", None))
            return


def _summarise(sockets: list[_Socket], commit_bytes: bytes, users: int) -> dict[str, Any]:
    """Latencies (ms, as packed doubles) and delivery counts for this process's sockets."""
    commits = array("d")
    commits.frombytes(commit_bytes)
    known = len(commits)
    latencies = array("d")
    received = duplicates = unknown = misrouted = 0
    first = math.inf
    last = 0.0
    other: dict[str, int] = {}
    closed_early: list[str] = []
    for sock in sockets:
        seen: set[int] = set()
        owner = sock.spec.owner
        for marker, arrived in zip(sock.markers, sock.times, strict=True):
            received += 1
            if marker in seen:
                duplicates += 1
                continue
            seen.add(marker)
            if not 0 <= marker < known or math.isnan(commits[marker]):
                unknown += 1
                continue
            if owner is not None and marker % users != owner:
                misrouted += 1
            latencies.append((arrived - commits[marker]) * 1000.0)
            first = min(first, arrived)
            last = max(last, arrived)
        for kind, count in sock.other_frames.items():
            other[kind] = other.get(kind, 0) + count
        if sock.closed_early is not None:
            closed_early.append(sock.closed_early)
    return {
        "latencies": latencies.tobytes(),
        "received": received,
        "duplicates": duplicates,
        "unknown": unknown,
        "misrouted": misrouted,
        "first_arrival": first if latencies else None,
        "last_arrival": last if latencies else None,
        "other_frames": other,
        "closed_early": closed_early,
    }


# the parent's handle --------------------------------------------------------------


@dataclass
class ClientReport:
    connected: int
    failed: int
    connect_seconds: float
    errors: list[str]


@dataclass
class Delivery:
    latencies_ms: array[float]
    received: int
    duplicates: int
    unknown: int
    misrouted: int
    first_arrival: float | None
    last_arrival: float | None
    other_frames: dict[str, int]
    closed_early: list[str]


class ClientFleet:
    """The client processes, each owning a slice of the sockets."""

    def __init__(
        self, ctx: SpawnContext, ws_url: str, specs: list[SocketSpec], processes: int, users: int
    ) -> None:
        self.ctx = ctx
        self.ws_url = ws_url
        self.specs = specs
        self.users = users
        self.count_processes = max(1, min(processes, len(specs)))
        self.processes: list[SpawnProcess] = []
        self.pipes: list[Connection] = []

    def __enter__(self) -> ClientFleet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        for index in range(self.count_processes):
            chunk = self.specs[index :: self.count_processes]
            parent, child = self.ctx.Pipe()
            process = self.ctx.Process(
                target=client_main,
                args=(child, self.ws_url, chunk, self.users),
                name=f"bench-clients-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self.processes.append(process)
            self.pipes.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes if p.pid is not None]

    def _receive(self, pipe: Connection, expected: str, timeout: float) -> Any:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a client process did not answer {expected!r} in {timeout:.0f} s")
        try:
            kind, payload = pipe.recv()
        except EOFError:
            raise RuntimeError("a client process died") from None
        if kind != expected:
            raise RuntimeError(f"a client process answered {kind!r} instead of {expected!r}")
        return payload

    def wait_ready(self, timeout: float) -> ClientReport:
        deadline = time.monotonic() + timeout
        reports = [
            self._receive(pipe, "ready", max(deadline - time.monotonic(), 0.1))
            for pipe in self.pipes
        ]
        return ClientReport(
            connected=sum(r["connected"] for r in reports),
            failed=sum(r["failed"] for r in reports),
            connect_seconds=max(r["seconds"] for r in reports),
            errors=[e for r in reports for e in r["errors"]],
        )

    def received(self) -> int:
        for pipe in self.pipes:
            pipe.send(("count", None))
        return sum(int(self._receive(pipe, "count", 30)) for pipe in self.pipes)

    def results(self, commit_times: array[float]) -> Delivery:
        payload = commit_times.tobytes()
        for pipe in self.pipes:
            pipe.send(("results", payload))
        parts = [self._receive(pipe, "results", 120) for pipe in self.pipes]
        latencies = array("d")
        for part in parts:
            latencies.frombytes(part["latencies"])
        firsts = [p["first_arrival"] for p in parts if p["first_arrival"] is not None]
        lasts = [p["last_arrival"] for p in parts if p["last_arrival"] is not None]
        other: dict[str, int] = {}
        for part in parts:
            for kind, count in part["other_frames"].items():
                other[kind] = other.get(kind, 0) + count
        return Delivery(
            latencies_ms=latencies,
            received=sum(p["received"] for p in parts),
            duplicates=sum(p["duplicates"] for p in parts),
            unknown=sum(p["unknown"] for p in parts),
            misrouted=sum(p["misrouted"] for p in parts),
            first_arrival=min(firsts) if firsts else None,
            last_arrival=max(lasts) if lasts else None,
            other_frames=other,
            closed_early=[c for p in parts for c in p["closed_early"]],
        )

    def stop(self) -> None:
        """Close the sockets politely if the processes answer, else terminate them."""
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            if process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    pipe.send(("close", None))
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            with contextlib.suppress(OSError, EOFError, ValueError):
                if process.is_alive() and pipe.poll(10):
                    pipe.recv()
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            pipe.close()
        self.processes.clear()
        self.pipes.clear()


def spawn_context() -> SpawnContext:
    return multiprocessing.get_context("spawn")
