"""Client processes: thousands of sockets multiplexed on one (uv)loop each.

The parent drives each process over a pipe. A fleet is started once and
reused: ``open`` connects (and subscribes) sockets to a server, ``count``
reports frames received so far, ``results`` turns them into latencies
against the writer's commit times (and forgets them), ``heartbeat`` starts
pinging every socket, ``health`` says how many are still open,
``close_sockets`` disconnects them all, ``poll_start`` / ``poll_stop`` run
HTTP polling clients (the naive approach), ``exit`` ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import signal
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any

from bench.lifecycle import Managed
from bench.limits import event_loop_factory, pin, raise_fd_limit
from bench.wsclient import HttpPoller, Sink, WsClient, open_socket

SOURCE_SPREAD = 16  # source addresses 127.0.0.1 … 127.0.0.16


@dataclass(frozen=True)
class SocketSpec:
    """One socket: the query string of its URL (its key) and the user it subscribes to.

    `owner` None subscribes to the whole `public.positions` table channel.
    """

    query: str
    owner: int | None


def subscribe_frame(owner: int | None) -> dict[str, Any]:
    if owner is None:
        return {"type": "subscribe", "table": "public.positions"}
    return {"type": "subscribe", "channel": "position-updates", "filters": {"user_id": f"u{owner}"}}


# the child process ------------------------------------------------------------------------


def client_main(control: Connection, index: int, cpus: list[int] | None) -> None:
    """Entry point of a client process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    raise_fd_limit()
    if cpus:
        pin(os.getpid(), cpus)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_Process(control, index).serve())


class _Process:
    def __init__(self, control: Connection, index: int) -> None:
        self.control = control
        self.index = index
        self.clients: list[WsClient] = []
        self.sinks: list[Sink] = []
        self.heartbeat: asyncio.Task[None] | None = None
        self.pollers: list[HttpPoller] = []
        self.poll_sinks: list[Sink] = []
        self.poll_tasks: list[asyncio.Task[None]] = []
        self.poll_errors: list[str] = []
        self.opened_total = 0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, payload = await loop.run_in_executor(None, self.control.recv)
            if command == "exit":
                await self.close_sockets()
                await self.poll_stop()
                self.control.send(("exit", None))
                return
            handler = getattr(self, f"do_{command}")
            self.control.send((command, await handler(payload)))

    async def do_open(self, payload: dict[str, Any]) -> dict[str, Any]:
        url: str = payload["url"]
        specs: list[SocketSpec] = payload["sockets"]
        timeout: float = payload["timeout"]
        gate = asyncio.Semaphore(payload["concurrency"])
        errors: list[str] = []
        failed = 0

        async def one(spec: SocketSpec, number: int) -> None:
            nonlocal failed
            sink = Sink(owner=spec.owner)
            full = f"{url}?{spec.query}" if spec.query else url
            async with gate:
                try:
                    client = await open_socket(
                        full, sink, index=number, spread=SOURCE_SPREAD, timeout=timeout
                    )
                    reply = await client.request(subscribe_frame(spec.owner), timeout)
                except Exception as exc:
                    failed += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    return
            if reply.get("type") != "subscribed":
                failed += 1
                if len(errors) < 5:
                    errors.append(f"subscribe answered {reply}")
                client.close()
                return
            self.clients.append(client)
            self.sinks.append(sink)

        started = time.monotonic()
        base = self.opened_total * 2 + self.index
        await asyncio.gather(*(one(spec, base + 2 * i) for i, spec in enumerate(specs)))
        self.opened_total += len(specs)
        return {
            "connected": len(specs) - failed,
            "failed": failed,
            "errors": errors,
            "seconds": time.monotonic() - started,
        }

    async def do_count(self, _payload: Any) -> int:
        return sum(len(s.markers) for s in self.sinks) + sum(
            len(s.markers) for s in self.poll_sinks
        )

    async def do_results(self, payload: dict[str, Any]) -> dict[str, Any]:
        sinks = self.poll_sinks if payload.get("polling") else self.sinks
        summary = summarise(sinks, payload["base"], payload["commits"], payload["users"])
        for sink in sinks:
            sink.reset()
        return summary

    async def do_heartbeat(self, payload: dict[str, Any]) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            self.heartbeat = None
        interval: float = payload["interval"]
        if interval > 0:
            self.heartbeat = asyncio.create_task(self._beat(interval))

    async def _beat(self, interval: float) -> None:
        """Ping every socket once per `interval`, spread evenly over it."""
        while True:
            clients = list(self.clients)
            if not clients:
                await asyncio.sleep(interval)
                continue
            step = interval / len(clients)
            started = time.monotonic()
            for number, client in enumerate(clients):
                if not client.closed:
                    client.ping()
                delay = started + (number + 1) * step - time.monotonic()
                if delay > 0.002:
                    await asyncio.sleep(delay)

    async def do_health(self, _payload: Any) -> dict[str, Any]:
        other: dict[str, int] = {}
        for sink in self.sinks:
            for kind, count in sink.other.items():
                other[kind] = other.get(kind, 0) + count
        closed = [s.closed_early for s in self.sinks if s.closed_early is not None]
        return {
            "sockets": len(self.clients),
            "open": sum(1 for c in self.clients if not c.closed),
            "closed_early": len(closed),
            "closed_examples": closed[:3],
            "pings_sent": sum(s.pings_sent for s in self.sinks),
            "pongs": sum(s.pongs for s in self.sinks),
            "server_pings": sum(s.server_pings for s in self.sinks),
            "other": other,
            "errors": [e for s in self.sinks for e in s.errors][:5],
            "rtts": b"".join(s.rtts.tobytes() for s in self.sinks),
        }

    async def do_close_sockets(self, _payload: Any = None) -> None:
        await self.close_sockets()

    async def close_sockets(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.cancel()
            self.heartbeat = None
        for client in self.clients:
            client.close()
        await asyncio.sleep(0.05)
        self.clients = []
        self.sinks = []

    async def do_poll_start(self, payload: dict[str, Any]) -> dict[str, Any]:
        url: str = payload["url"]
        interval: float = payload["interval"]
        users: list[int] = payload["users"]
        errors: list[str] = []
        started = time.monotonic()
        for number, user in enumerate(users):
            sink = Sink(owner=user)
            poller = HttpPoller(url, user, sink)
            try:
                await poller.connect(number * 2 + self.index, SOURCE_SPREAD)
            except OSError as exc:
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            self.pollers.append(poller)
            self.poll_sinks.append(sink)
        # A first request each (it returns the cursor), then every `interval` s,
        # the clients spread evenly over it.
        first = await asyncio.gather(*(p.poll() for p in self.pollers), return_exceptions=True)
        failed = [f for f in first if isinstance(f, BaseException)]
        if failed and len(errors) < 5:
            errors.append(f"first poll: {failed[0]!r}")
        for number, poller in enumerate(self.pollers):
            offset = interval * number / max(len(self.pollers), 1)
            self.poll_tasks.append(asyncio.create_task(self._poll(poller, interval, offset)))
        return {
            "connected": len(self.pollers),
            "failed": len(users) - len(self.pollers),
            "errors": errors,
            "seconds": time.monotonic() - started,
        }

    async def _poll(self, poller: HttpPoller, interval: float, offset: float) -> None:
        await asyncio.sleep(offset)
        next_at = time.monotonic()
        while True:
            try:
                await poller.poll()
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if len(self.poll_errors) < 5:
                    self.poll_errors.append(f"{type(exc).__name__}: {exc}")
                return
            next_at += interval
            await asyncio.sleep(max(next_at - time.monotonic(), 0))

    async def do_poll_stop(self, _payload: Any = None) -> dict[str, Any]:
        return await self.poll_stop()

    async def poll_stop(self) -> dict[str, Any]:
        for task in self.poll_tasks:
            task.cancel()
        await asyncio.gather(*self.poll_tasks, return_exceptions=True)
        requests = sum(p.requests for p in self.pollers)
        reconnects = sum(p.reconnects for p in self.pollers)
        for poller in self.pollers:
            poller.close()
        self.poll_tasks = []
        self.pollers = []
        errors, self.poll_errors = self.poll_errors, []
        return {"requests": requests, "reconnects": reconnects, "errors": errors}


def summarise(sinks: list[Sink], base: int, commit_bytes: bytes, users: int) -> dict[str, Any]:
    """Latencies (ms, packed doubles) and delivery counts for these sockets."""
    commits = array("d")
    commits.frombytes(commit_bytes)
    known = len(commits)
    latencies = array("d")
    received = duplicates = unknown = misrouted = 0
    first = math.inf
    last = 0.0
    for sink in sinks:
        seen: set[int] = set()
        owner = sink.owner
        for marker, arrived in zip(sink.markers, sink.times, strict=True):
            received += 1
            if marker in seen:
                duplicates += 1
                continue
            seen.add(marker)
            k = marker - base
            if not 0 <= k < known or math.isnan(commits[k]):
                unknown += 1
                continue
            if owner is not None and users and k % users != owner:
                misrouted += 1
            latencies.append((arrived - commits[k]) * 1000.0)
            first = min(first, arrived)
            last = max(last, arrived)
    return {
        "latencies": latencies.tobytes(),
        "received": received,
        "duplicates": duplicates,
        "unknown": unknown,
        "misrouted": misrouted,
        "first_arrival": first if latencies else None,
        "last_arrival": last if latencies else None,
    }


# the parent's handle ------------------------------------------------------------------------


@dataclass
class OpenReport:
    connected: int
    failed: int
    seconds: float
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


@dataclass
class Health:
    sockets: int
    open: int
    closed_early: int
    closed_examples: list[str]
    pings_sent: int
    pongs: int
    server_pings: int
    other: dict[str, int]
    errors: list[str]
    rtts_ms: list[float]  # heartbeat ping → pong round trips, sorted


class ClientFleet(Managed):
    """The client processes; sockets are dealt to them round-robin."""

    def __init__(self, ctx: SpawnContext, processes: int, cpus: list[int] | None) -> None:
        self.ctx = ctx
        self.count_processes = max(1, processes)
        self.cpus = cpus
        self.processes: list[SpawnProcess] = []
        self.pipes: list[Connection] = []

    def start(self) -> None:
        for index in range(self.count_processes):
            parent, child = self.ctx.Pipe()
            process = self.ctx.Process(
                target=client_main,
                args=(child, index, self.cpus),
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

    def _ask_all(self, command: str, payloads: list[Any], timeout: float) -> list[Any]:
        for pipe, payload in zip(self.pipes, payloads, strict=True):
            pipe.send((command, payload))
        deadline = time.monotonic() + timeout
        answers = []
        for pipe in self.pipes:
            if not pipe.poll(max(deadline - time.monotonic(), 0.1)):
                raise RuntimeError(
                    f"a client process did not answer {command!r} in {timeout:.0f} s"
                )
            try:
                kind, answer = pipe.recv()
            except EOFError:
                raise RuntimeError("a client process died") from None
            if kind != command:
                raise RuntimeError(f"a client process answered {kind!r} to {command!r}")
            answers.append(answer)
        return answers

    def _same(self, command: str, payload: Any, timeout: float) -> list[Any]:
        return self._ask_all(command, [payload] * len(self.pipes), timeout)

    def open(
        self, url: str, specs: list[SocketSpec], *, concurrency: int = 64, timeout: float = 60
    ) -> OpenReport:
        n = len(self.pipes)
        payloads = [
            {"url": url, "sockets": specs[i::n], "concurrency": concurrency, "timeout": timeout}
            for i in range(n)
        ]
        answers = self._ask_all("open", payloads, timeout=120 + 0.05 * len(specs))
        return OpenReport(
            connected=sum(a["connected"] for a in answers),
            failed=sum(a["failed"] for a in answers),
            seconds=max(a["seconds"] for a in answers),
            errors=[e for a in answers for e in a["errors"]],
        )

    def received(self) -> int:
        return sum(int(c) for c in self._same("count", None, 30))

    def results(
        self, base: int, commit_times: array[float], users: int, *, polling: bool = False
    ) -> Delivery:
        payload = {
            "base": base,
            "commits": commit_times.tobytes(),
            "users": users,
            "polling": polling,
        }
        parts = self._same("results", payload, 120)
        latencies = array("d")
        for part in parts:
            latencies.frombytes(part["latencies"])
        firsts = [p["first_arrival"] for p in parts if p["first_arrival"] is not None]
        lasts = [p["last_arrival"] for p in parts if p["last_arrival"] is not None]
        return Delivery(
            latencies_ms=latencies,
            received=sum(p["received"] for p in parts),
            duplicates=sum(p["duplicates"] for p in parts),
            unknown=sum(p["unknown"] for p in parts),
            misrouted=sum(p["misrouted"] for p in parts),
            first_arrival=min(firsts) if firsts else None,
            last_arrival=max(lasts) if lasts else None,
        )

    def heartbeat(self, interval: float) -> None:
        self._same("heartbeat", {"interval": interval}, 30)

    def health(self) -> Health:
        parts = self._same("health", None, 60)
        other: dict[str, int] = {}
        for part in parts:
            for kind, count in part["other"].items():
                other[kind] = other.get(kind, 0) + count
        return Health(
            sockets=sum(p["sockets"] for p in parts),
            open=sum(p["open"] for p in parts),
            closed_early=sum(p["closed_early"] for p in parts),
            closed_examples=[e for p in parts for e in p["closed_examples"]][:3],
            pings_sent=sum(p["pings_sent"] for p in parts),
            pongs=sum(p["pongs"] for p in parts),
            server_pings=sum(p["server_pings"] for p in parts),
            other=other,
            errors=[e for p in parts for e in p["errors"]][:5],
            rtts_ms=sorted(_doubles(b"".join(p["rtts"] for p in parts))),
        )

    def close_sockets(self) -> None:
        self._same("close_sockets", None, 120)

    def poll_start(self, url: str, users: list[int], interval: float) -> OpenReport:
        n = len(self.pipes)
        payloads = [{"url": url, "users": users[i::n], "interval": interval} for i in range(n)]
        answers = self._ask_all("poll_start", payloads, 120)
        return OpenReport(
            connected=sum(a["connected"] for a in answers),
            failed=sum(a["failed"] for a in answers),
            seconds=max(a["seconds"] for a in answers),
            errors=[e for a in answers for e in a["errors"]],
        )

    def poll_stop(self) -> tuple[int, int, list[str]]:
        """Requests made, connections reopened (keep-alive timeouts), errors."""
        answers = self._same("poll_stop", None, 60)
        return (
            sum(a["requests"] for a in answers),
            sum(a["reconnects"] for a in answers),
            [e for a in answers for e in a["errors"]],
        )

    def restart(self) -> None:
        """After a failure (a pipe out of step, a dead process): fresh processes."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Ask the processes to exit; terminate the ones that do not."""
        for pipe, process in zip(self.pipes, self.processes, strict=True):
            if process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    pipe.send(("exit", None))
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


def _doubles(raw: bytes) -> array[float]:
    values = array("d")
    values.frombytes(raw)
    return values


def spawn_context() -> SpawnContext:
    return multiprocessing.get_context("spawn")
