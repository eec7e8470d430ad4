"""`python -m bench.row_security`: what row-level security costs next to owner scoping.

One table, the same users, the same writes, two bridges on fresh databases:

* owner: ``TABLE_ACCESS=public.bench_notes=owner`` (the hub compares ``user_id``
  with the token's ``sub``, in memory);
* rls: ``ROW_SECURITY=public.bench_notes=rls`` with the equivalent policy
  ``user_id = auth.jwt() ->> 'sub'`` (Postgres decides, one statement per batch of
  changes for every distinct user interested).

Each mode runs a steady phase (``--rate`` single-row INSERTs/s for ``--seconds``:
latency p50/p99, receive time − the writer's clock just before its INSERT) and a
burst (``--burst`` INSERTs from 4 connections as fast as they go: delivered
changes/s, first INSERT → last frame). Statements per change: row-security
statements the bridge ran ÷ changes. Everything runs in this process (bridge,
clients, writers) on an embedded Postgres: compare the two modes, not the
absolute figures with ``python -m bench``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import websockets

from realtime_bridge.settings import Settings
from realtime_bridge.testing import RunningBridge, TestDatabase, run_bridge

SCHEMA = """
CREATE TABLE public.bench_notes (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    sent double precision NOT NULL,
    body text
);
ALTER TABLE public.bench_notes ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON public.bench_notes TO authenticated;
CREATE POLICY own ON public.bench_notes FOR SELECT TO authenticated
    USING (user_id = auth.jwt() ->> 'sub');
SELECT realtime_bridge.track('public.bench_notes');
"""

INSERT = "INSERT INTO bench_notes (user_id, sent, body) VALUES ($1, $2, 'x')"


@dataclass
class Figures:
    mode: str
    latencies: list[float] = field(default_factory=list)
    burst_per_second: float = 0.0
    statements_per_change: float = 0.0
    received: int = 0
    expected: int = 0

    def line(self) -> str:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float:
            return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000 if ordered else 0

        mean = statistics.fmean(ordered) if ordered else 0.0
        return (
            f"{self.mode:>5}: steady p50 {pct(0.5):6.2f} ms  p99 {pct(0.99):6.2f} ms  "
            f"({len(ordered)} frames; mean {mean * 1000:.2f} ms)  "
            f"burst {self.burst_per_second:8.0f} changes/s  "
            f"row-security statements/change {self.statements_per_change:.3f}  "
            f"frames {self.received}/{self.expected}"
        )


class Reader:
    """One user's socket: records when each of its changes arrives."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "table": "public.bench_notes"}))
            reply = orjson.loads(await ws.recv())
            if reply.get("type") != "subscribed":
                raise RuntimeError(f"subscribe refused: {reply}")
            self.ready.set()
            async for raw in ws:
                now = time.time()
                frame = orjson.loads(raw)
                if frame.get("type") == "db_change":
                    self.arrivals.append((now, frame["data"]))


async def _wait(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return  # the figures say how many frames came
        await asyncio.sleep(0.01)


async def run_mode(
    databases: TestDatabase, mode: str, users: int, rate: float, seconds: float, burst: int
) -> Figures:
    dsn = await databases.create()
    try:
        conn = await asyncpg.connect(dsn)
        await conn.execute(SCHEMA)
        await conn.close()
        table = "public.bench_notes"
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=dsn,
            gc_tuning=False,
            prune_interval=3600,
            max_connections_per_user=1000,
            table_access={} if mode == "rls" else {table: "owner"},
            row_security={table: "rls"} if mode == "rls" else {},
        )
        async with run_bridge(settings) as bridge:
            return await _measure(bridge, dsn, mode, users, rate, seconds, burst)
    finally:
        await databases.drop(dsn)


async def _measure(
    bridge: RunningBridge, dsn: str, mode: str, users: int, rate: float, seconds: float, burst: int
) -> Figures:
    names = [f"user-{i:04d}" for i in range(users)]
    readers = [Reader(f"{bridge.ws_url}?apikey={bridge.user_token(name)}") for name in names]
    for reader in readers:
        reader.task = asyncio.create_task(reader.run())
    await asyncio.gather(*(asyncio.wait_for(r.ready.wait(), 30) for r in readers))
    figures = Figures(mode)
    writer = await asyncpg.connect(dsn)
    statements_before = bridge.bridge.row_security.statements
    try:
        # Steady: one INSERT every 1/rate s, round robin over the users.
        count = int(rate * seconds)
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await writer.execute(INSERT, names[i % users], time.time())
        await _wait(lambda: sum(len(r.arrivals) for r in readers) >= count, 30)
        figures.latencies = [t - d["sent"] for r in readers for t, d in r.arrivals]
        for reader in readers:
            reader.arrivals.clear()
        # Burst: 4 connections, as fast as they go.
        writers = [await asyncpg.connect(dsn) for _ in range(4)]
        began = time.time()

        async def write(conn: asyncpg.Connection, part: int) -> None:
            for i in range(part, burst, 4):
                await conn.execute(INSERT, names[i % users], time.time())

        await asyncio.gather(*(write(c, n) for n, c in enumerate(writers)))
        await _wait(lambda: sum(len(r.arrivals) for r in readers) >= burst, 60)
        last = max((t for r in readers for t, _ in r.arrivals), default=began)
        received = sum(len(r.arrivals) for r in readers)
        figures.burst_per_second = received / max(last - began, 1e-9)
        figures.received = received + len(figures.latencies)
        figures.expected = count + burst
        statements = bridge.bridge.row_security.statements - statements_before
        figures.statements_per_change = statements / figures.expected
        for conn in writers:
            await conn.close()
    finally:
        await writer.close()
        for reader in readers:
            if reader.task is not None:
                reader.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader.task
    return figures


async def main_async(args: argparse.Namespace) -> None:
    async with TestDatabase.start() as databases:
        for mode in ("owner", "rls"):
            figures = await run_mode(
                databases, mode, args.users, args.rate, args.seconds, args.burst
            )
            print(figures.line(), flush=True)


def main() -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs.*")
    parser = argparse.ArgumentParser(prog="python -m bench.row_security", description=__doc__)
    parser.add_argument("--users", type=int, default=50, help="users, one socket each")
    parser.add_argument("--rate", type=float, default=200, help="steady INSERTs per second")
    parser.add_argument("--seconds", type=float, default=5, help="steady phase length")
    parser.add_argument("--burst", type=int, default=2000, help="INSERTs in the burst")
    args = parser.parse_args()
    print(
        f"row security vs owner scoping: {args.users} users, {args.rate:g} INSERT/s × "
        f"{args.seconds:g} s, then a burst of {args.burst}",
        flush=True,
    )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
