"""The writer process: position UPDATEs, each its own transaction, timed at COMMIT.

Change number k (the *marker*, 0, 1, 2, …) sets ``quantity = k`` on the row
of user ``k % users``; the client reads it back from ``data.quantity``. The
commit time of change k is ``time.time()`` right after its autocommitted
UPDATE returns, i.e. after COMMIT. Paced mode schedules change k at
``t0 + k / rate`` over several connections, so one slow commit does not
delay the ones after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from types import TracebackType
from typing import Any

import asyncpg

UPDATE_SQL = (
    "UPDATE public.positions SET quantity = $1::bigint, current_price = $2::float8 WHERE id = $3"
)


@dataclass(frozen=True)
class WriterPlan:
    users: int
    rate: float  # changes per second; 0 = as fast as the connections go
    duration: float  # seconds
    max_events: int  # stop after this many changes
    connections: int


@dataclass
class WriterResult:
    commit_times: array[float]  # indexed by marker; NaN where the UPDATE failed
    commit_ms: array[float]  # issue → commit duration of each successful UPDATE
    issued: int
    failed: int
    started: float
    finished: float
    errors: list[str]

    @property
    def committed(self) -> int:
        return self.issued - self.failed


def writer_main(control: Connection, dsn: str, plan: WriterPlan) -> None:
    """Entry point of the writer process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    asyncio.run(_write(control, dsn, plan))


async def _write(control: Connection, dsn: str, plan: WriterPlan) -> None:
    loop = asyncio.get_running_loop()
    connections = [await asyncpg.connect(dsn, timeout=30) for _ in range(plan.connections)]
    try:
        for conn in connections:
            await conn.execute("SET synchronous_commit = on")
            await conn.prepare(UPDATE_SQL)
        capacity = plan.max_events
        if plan.rate > 0:
            capacity = min(capacity, max(1, round(plan.rate * plan.duration)))
        commits = array("d", [math.nan]) * capacity
        commit_ms = array("d")
        errors: list[str] = []
        state = {"next": 0, "failed": 0}
        control.send(("ready", None))
        await loop.run_in_executor(None, control.recv)  # "go"

        started = time.time()
        # A paced writer that cannot keep up keeps going, but not forever.
        give_up = started + plan.duration * 3 + 10

        async def work(conn: asyncpg.Connection) -> None:
            while True:
                marker = state["next"]
                if marker >= capacity:
                    return
                now = time.time()
                if plan.rate > 0:
                    if now > give_up:
                        return
                    state["next"] += 1
                    delay = started + marker / plan.rate - now
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    if now - started >= plan.duration:
                        return
                    state["next"] += 1
                user = marker % plan.users
                issued = time.time()
                try:
                    await conn.execute(UPDATE_SQL, marker, 100.0 + (marker % 1000) / 100, user + 1)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                    state["failed"] += 1
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                committed = time.time()
                commits[marker] = committed
                commit_ms.append((committed - issued) * 1000.0)

        await asyncio.gather(*(work(conn) for conn in connections))
        finished = time.time()
        issued = state["next"]
        control.send(
            (
                "done",
                {
                    "commit_times": commits[:issued].tobytes(),
                    "commit_ms": commit_ms.tobytes(),
                    "issued": issued,
                    "failed": state["failed"],
                    "started": started,
                    "finished": finished,
                    "errors": errors,
                },
            )
        )
        # Keep the connections (and so their Postgres backends, whose CPU
        # the parent measures) until the parent has taken its last reading.
        await loop.run_in_executor(None, control.recv)  # "exit"
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


class Writer:
    """The parent's handle on the writer process."""

    def __init__(self, ctx: SpawnContext, dsn: str, plan: WriterPlan) -> None:
        self.ctx = ctx
        self.dsn = dsn
        self.plan = plan
        self.process: SpawnProcess | None = None
        self.pipe: Connection | None = None

    def __enter__(self) -> Writer:
        parent, child = self.ctx.Pipe()
        self.pipe = parent
        self.process = self.ctx.Process(
            target=writer_main, args=(child, self.dsn, self.plan), name="bench-writer", daemon=True
        )
        self.process.start()
        child.close()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        process, self.process = self.process, None
        if process is not None:
            if self.pipe is not None and process.is_alive():
                with contextlib.suppress(OSError, ValueError):
                    self.pipe.send(("exit", None))
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None

    def _receive(self, expected: str, timeout: float) -> Any:
        assert self.pipe is not None
        if not self.pipe.poll(timeout):
            raise RuntimeError(f"the writer did not answer {expected!r} in {timeout:.0f} s")
        try:
            kind, payload = self.pipe.recv()
        except EOFError:
            raise RuntimeError("the writer process died") from None
        if kind != expected:
            raise RuntimeError(f"the writer answered {kind!r} instead of {expected!r}")
        return payload

    def wait_ready(self, timeout: float = 60.0) -> None:
        self._receive("ready", timeout)

    def go(self) -> None:
        assert self.pipe is not None
        self.pipe.send(("go", None))

    def wait_done(self) -> WriterResult:
        payload = self._receive("done", self.plan.duration * 3 + 60)
        commit_times = array("d")
        commit_times.frombytes(payload["commit_times"])
        commit_ms = array("d")
        commit_ms.frombytes(payload["commit_ms"])
        return WriterResult(
            commit_times=commit_times,
            commit_ms=commit_ms,
            issued=payload["issued"],
            failed=payload["failed"],
            started=payload["started"],
            finished=payload["finished"],
            errors=payload["errors"],
        )
