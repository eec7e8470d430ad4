"""A counting TCP proxy in front of Postgres: how many statements does a server issue?

Postgres has no per-client statement counter (and the embedded server has no
pg_stat_statements), so the servers whose database traffic we count (P7
idle cost, P8 polling) connect through this proxy. It forwards bytes both
ways untouched and parses the client → server stream of the v3 protocol:
every simple ``Query`` ('Q') and every extended-protocol ``Execute`` ('E')
is one statement. The statement's text comes from the ``Query`` itself or
the ``Parse`` ('P') of the statement the portal was bound to.

Runs in its own process; the parent reads its counters over a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from types import TracebackType

from bench.limits import event_loop_factory, pin

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


@dataclass
class Counts:
    connections: int = 0
    statements: int = 0
    by_text: Counter[str] = field(default_factory=Counter)
    # Round trip as seen here (statement sent → ReadyForQuery back), per text.
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def timed(self, text: str, seconds: float) -> None:
        samples = self.seconds.setdefault(text, [])
        if len(samples) < 20_000:
            samples.append(seconds)


def _short(text: str) -> str:
    return " ".join(text.split())[:120]


class _Session:
    """Parses one connection: client → server (statements) and server → client (timing)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = b""
        self.started = False
        self.statements: dict[bytes, str] = {}
        self.portals: dict[bytes, str] = {}
        self.executed: str | None = None  # the statement executed since the last Sync
        self.in_flight: deque[tuple[str | None, float]] = deque()
        self.server_buffer = b""
        self.single_byte_replies = 0  # answers to SSLRequest / GSSENCRequest

    def feed_server(self, data: bytes) -> None:
        buffer = self.server_buffer + data
        pos = 0
        while True:
            if self.single_byte_replies:
                if len(buffer) - pos < 1:
                    break
                self.single_byte_replies -= 1
                pos += 1
                continue
            if len(buffer) - pos < 5:
                break
            kind = buffer[pos : pos + 1]
            (length,) = struct.unpack_from("!i", buffer, pos + 1)
            if len(buffer) - pos < 1 + length:
                break
            pos += 1 + length
            if kind == b"Z" and self.in_flight:
                text, sent = self.in_flight.popleft()
                if text is not None:
                    self.counts.timed(text, time.monotonic() - sent)
        self.server_buffer = buffer[pos:]

    def feed(self, data: bytes) -> None:
        buffer = self.buffer + data
        pos = 0
        while True:
            if not self.started:
                if len(buffer) - pos < 8:
                    break
                length, code = struct.unpack_from("!ii", buffer, pos)
                if len(buffer) - pos < length:
                    break
                pos += length
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    self.single_byte_replies += 1
                elif code != CANCEL_REQUEST:
                    self.started = True
                continue
            if len(buffer) - pos < 5:
                break
            kind = buffer[pos : pos + 1]
            (length,) = struct.unpack_from("!i", buffer, pos + 1)
            if len(buffer) - pos < 1 + length:
                break
            body = buffer[pos + 5 : pos + 1 + length]
            pos += 1 + length
            self._message(kind, body)
        self.buffer = buffer[pos:]

    def _message(self, kind: bytes, body: bytes) -> None:
        if kind == b"Q":
            text = _short(body.rstrip(b"\0").decode(errors="replace"))
            self._count(text)
            self.in_flight.append((text, time.monotonic()))
        elif kind == b"S":
            self.in_flight.append((self.executed, time.monotonic()))
            self.executed = None
        elif kind == b"P":
            name, _, rest = body.partition(b"\0")
            query, _, _ = rest.partition(b"\0")
            self.statements[name] = query.decode(errors="replace")
        elif kind == b"B":
            portal, _, rest = body.partition(b"\0")
            statement, _, _ = rest.partition(b"\0")
            self.portals[portal] = self.statements.get(statement, "?")
        elif kind == b"E":
            portal, _, _ = body.partition(b"\0")
            text = _short(self.portals.get(portal, "?"))
            self._count(text)
            self.executed = text

    def _count(self, text: str) -> None:
        self.counts.statements += 1
        self.counts.by_text[text] += 1


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, feed: Callable[[bytes], None]
) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            feed(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(control: Connection, upstream: tuple[str, int]) -> None:
    counts = Counts()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        session = _Session(counts)
        await asyncio.gather(
            _pipe(reader, up_writer, session.feed), _pipe(up_reader, writer, session.feed_server)
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    control.send(("port", port))
    loop = asyncio.get_running_loop()
    async with server:
        while True:
            command = await loop.run_in_executor(None, control.recv)
            if command == "counts":
                control.send(
                    (
                        "counts",
                        {
                            "connections": counts.connections,
                            "statements": counts.statements,
                            "by_text": dict(counts.by_text),
                            "seconds": counts.seconds,
                        },
                    )
                )
            else:
                control.send(("exit", None))
                return


def proxy_main(control: Connection, upstream: tuple[str, int], cpus: list[int] | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        pin(os.getpid(), cpus)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(control, upstream))


@dataclass
class Snapshot:
    statements: int
    by_text: dict[str, int]
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def minus(self, earlier: Snapshot) -> Snapshot:
        return Snapshot(
            self.statements - earlier.statements,
            {
                text: count - earlier.by_text.get(text, 0)
                for text, count in self.by_text.items()
                if count - earlier.by_text.get(text, 0)
            },
            {
                text: samples[len(earlier.seconds.get(text, [])) :]
                for text, samples in self.seconds.items()
                if len(samples) > len(earlier.seconds.get(text, []))
            },
        )

    def round_trip_ms(self, text: str) -> tuple[float, float] | None:
        """Median and p99 round trip of `text` in ms (None when never timed)."""
        samples = sorted(self.seconds.get(text, []))
        if not samples:
            return None
        return (
            samples[len(samples) // 2] * 1000,
            samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
        )


class CountingProxy:
    """The parent's handle: start, read counters, stop."""

    def __init__(
        self, ctx: SpawnContext, upstream: tuple[str, int], cpus: list[int] | None
    ) -> None:
        self.ctx = ctx
        self.upstream = upstream
        self.cpus = cpus
        self.process: SpawnProcess | None = None
        self.pipe: Connection | None = None
        self.port = 0

    def __enter__(self) -> CountingProxy:
        parent, child = self.ctx.Pipe()
        self.pipe = parent
        self.process = self.ctx.Process(
            target=proxy_main, args=(child, self.upstream, self.cpus), daemon=True
        )
        self.process.start()
        child.close()
        if not parent.poll(30):
            raise RuntimeError("the counting proxy did not start")
        _, self.port = parent.recv()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            if self.pipe is not None and self.process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    self.pipe.send("exit")
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        if self.pipe is not None:
            self.pipe.close()

    def snapshot(self) -> Snapshot:
        assert self.pipe is not None
        self.pipe.send("counts")
        if not self.pipe.poll(30):
            raise RuntimeError("the counting proxy did not answer")
        _, counts = self.pipe.recv()
        return Snapshot(counts["statements"], counts["by_text"], counts["seconds"])
