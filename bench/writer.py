"""The writer process: paced UPDATEs timed at COMMIT, and INSERT throughput runs.

Change number k of a run sets ``quantity = base + k`` (the *marker*) on the
row of user ``k % users``; clients read it back from ``data.quantity``. The
commit time of change k is ``time.time()`` right after its autocommitted
UPDATE returns, i.e. after COMMIT. Paced runs schedule change k at
``t0 + k / rate`` over several connections, so one slow commit does not
delay the ones after it; a run that cannot keep up stops issuing after
1.5 × its duration (its achieved rate then shows it).

The process keeps its connections between runs (the parent sends one
command per run), so a ramp of short runs pays no start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from types import TracebackType
from typing import Any

import asyncpg

from bench.limits import event_loop_factory, pin

UPDATE_SQL = {
    "real": "UPDATE public.positions SET quantity = $1::bigint, current_price = $2::float8 "
    "WHERE id = $3",
    "floor": "UPDATE bench.floor_positions SET quantity = $1::bigint, current_price = $2::float8, "
    "updated_at = clock_timestamp() WHERE id = $3",
}
# Several rows per statement (P2's multi-row ramp): one marker per row, as above.
UPDATE_MANY_SQL = {
    "real": "UPDATE public.positions p SET quantity = v.q, current_price = v.price "
    "FROM unnest($1::bigint[], $2::float8[], $3::bigint[]) AS v(q, price, id) WHERE p.id = v.id",
    "floor": "UPDATE bench.floor_positions p SET quantity = v.q, current_price = v.price, "
    "updated_at = clock_timestamp() "
    "FROM unnest($1::bigint[], $2::float8[], $3::bigint[]) AS v(q, price, id) WHERE p.id = v.id",
}
INSERT_ONE = "INSERT INTO {table} (user_id, symbol, quantity, price) VALUES ($1, 'BENCH', $2, 100)"
INSERT_MANY = (
    "INSERT INTO {table} (user_id, symbol, quantity, price) "
    "SELECT 'u' || (g % 1000), 'BENCH', g, 100 FROM generate_series(1, {rows}) g"
)


@dataclass(frozen=True)
class UpdatePlan:
    target: str  # "real" (public.positions) or "floor" (bench.floor_positions)
    base: int  # first marker
    users: int
    rate: float  # changes per second; 0 = as fast as the connections go
    duration: float  # seconds
    max_events: int  # stop after this many changes
    connections: int
    rows: int = 1  # rows (changes) per UPDATE statement, each its own transaction


@dataclass
class WriterResult:
    base: int
    commit_times: array[float]  # indexed by marker - base; NaN where the UPDATE failed
    commit_ms: array[float]  # issue → commit duration of each successful UPDATE
    issued: int
    failed: int
    started: float
    finished: float
    errors: list[str]

    @property
    def committed(self) -> int:
        return self.issued - self.failed

    @property
    def rate(self) -> float:
        return self.committed / max(self.finished - self.started, 1e-9)


@dataclass(frozen=True)
class InsertPlan:
    table: str
    rows_per_statement: int
    duration: float
    connections: int


@dataclass
class InsertResult:
    rows: int
    statements: int
    seconds: float
    errors: list[str]

    @property
    def rows_per_second(self) -> float:
        return self.rows / max(self.seconds, 1e-9)


def writer_main(control: Connection, dsn: str, connections: int, cpus: list[int] | None) -> None:
    """Entry point of the writer process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent cleans up on Ctrl-C
    if cpus:
        pin(os.getpid(), cpus)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(control, dsn, connections))


async def _serve(control: Connection, dsn: str, count: int) -> None:
    loop = asyncio.get_running_loop()
    connections = [await asyncpg.connect(dsn, timeout=30) for _ in range(count)]
    try:
        for conn in connections:
            await conn.execute("SET synchronous_commit = on")
        control.send(("ready", None))
        while True:
            command, plan = await loop.run_in_executor(None, control.recv)
            if command == "update":
                control.send(("done", await _update(connections[: plan.connections], plan)))
            elif command == "insert":
                control.send(("inserted", await _insert(connections[: plan.connections], plan)))
            else:
                control.send(("exit", None))
                return
    finally:
        for conn in connections:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)


async def _update(connections: list[asyncpg.Connection], plan: UpdatePlan) -> dict[str, Any]:
    sql = UPDATE_SQL[plan.target]
    capacity = plan.max_events
    if plan.rate > 0:
        capacity = min(capacity, max(1, round(plan.rate * plan.duration)))
    commits = array("d", [math.nan]) * capacity
    commit_ms = array("d")
    errors: list[str] = []
    state = {"next": 0, "failed": 0}
    started = time.time()
    give_up = started + plan.duration * 1.5 + 2

    rows = max(1, min(plan.rows, plan.users))  # distinct rows within one statement
    many = UPDATE_MANY_SQL[plan.target]

    async def work(conn: asyncpg.Connection) -> None:
        while True:
            k = state["next"]
            if k >= capacity:
                return
            take = min(rows, capacity - k)
            now = time.time()
            if plan.rate > 0:
                if now > give_up:
                    return
                state["next"] += take
                delay = started + k / plan.rate - now
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                if now - started >= plan.duration:
                    return
                state["next"] += take
            issued = time.time()
            try:
                if take == 1:
                    await conn.execute(
                        sql, plan.base + k, 100.0 + (k % 1000) / 100, k % plan.users + 1
                    )
                else:
                    ks = range(k, k + take)
                    await conn.execute(
                        many,
                        [plan.base + j for j in ks],
                        [100.0 + (j % 1000) / 100 for j in ks],
                        [j % plan.users + 1 for j in ks],
                    )
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                state["failed"] += take
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            committed = time.time()
            for j in range(k, k + take):
                commits[j] = committed
            commit_ms.append((committed - issued) * 1000.0)

    await asyncio.gather(*(work(conn) for conn in connections))
    finished = time.time()
    issued = state["next"]
    return {
        "commit_times": commits[:issued].tobytes(),
        "commit_ms": commit_ms.tobytes(),
        "issued": issued,
        "failed": state["failed"],
        "started": started,
        "finished": finished,
        "errors": errors,
    }


async def _insert(connections: list[asyncpg.Connection], plan: InsertPlan) -> dict[str, Any]:
    if plan.rows_per_statement == 1:
        sql = INSERT_ONE.format(table=plan.table)
    else:
        sql = INSERT_MANY.format(table=plan.table, rows=plan.rows_per_statement)
    errors: list[str] = []
    totals = {"statements": 0}
    started = time.monotonic()
    deadline = started + plan.duration

    async def work(conn: asyncpg.Connection, number: int) -> None:
        k = number
        while time.monotonic() < deadline:
            try:
                if plan.rows_per_statement == 1:
                    await conn.execute(sql, f"u{k % 1000}", k)
                else:
                    await conn.execute(sql)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            totals["statements"] += 1
            k += len(connections)

    await asyncio.gather(*(work(conn, i) for i, conn in enumerate(connections)))
    seconds = time.monotonic() - started
    return {
        "rows": totals["statements"] * plan.rows_per_statement,
        "statements": totals["statements"],
        "seconds": seconds,
        "errors": errors,
    }


class Writer:
    """The parent's handle on the writer process."""

    def __init__(
        self, ctx: SpawnContext, dsn: str, connections: int, cpus: list[int] | None
    ) -> None:
        self.ctx = ctx
        self.dsn = dsn
        self.connections = connections
        self.cpus = cpus
        self.process: SpawnProcess | None = None
        self.pipe: Connection | None = None

    def __enter__(self) -> Writer:
        parent, child = self.ctx.Pipe()
        self.pipe = parent
        self.process = self.ctx.Process(
            target=writer_main,
            args=(child, self.dsn, self.connections, self.cpus),
            name="bench-writer",
            daemon=True,
        )
        self.process.start()
        child.close()
        try:
            self._receive("ready", 60)
        except BaseException:
            self.__exit__(None, None, None)
            raise
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

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

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

    def start_update(self, plan: UpdatePlan) -> None:
        assert self.pipe is not None
        self.pipe.send(("update", plan))

    def wait_update(self, plan: UpdatePlan) -> WriterResult:
        payload = self._receive("done", plan.duration * 2 + 60)
        commit_times = array("d")
        commit_times.frombytes(payload["commit_times"])
        commit_ms = array("d")
        commit_ms.frombytes(payload["commit_ms"])
        return WriterResult(
            base=plan.base,
            commit_times=commit_times,
            commit_ms=commit_ms,
            issued=payload["issued"],
            failed=payload["failed"],
            started=payload["started"],
            finished=payload["finished"],
            errors=payload["errors"],
        )

    def insert(self, plan: InsertPlan) -> InsertResult:
        assert self.pipe is not None
        self.pipe.send(("insert", plan))
        payload = self._receive("inserted", plan.duration * 2 + 60)
        return InsertResult(
            rows=payload["rows"],
            statements=payload["statements"],
            seconds=payload["seconds"],
            errors=payload["errors"],
        )
