"""The outbox source: numbered, gap-free changes from Postgres.

Capture triggers insert rows into ``realtime_bridge.outbox`` without a seq.
One bridge instance per database wins a session advisory lock and becomes
the *sequencer*: in one short statement it numbers the rows that have
become visible since its last pass, in the order they became visible. So
seqs follow commit order, have no gaps, and a long transaction elsewhere
holds back nobody but itself. Every other instance is a *follower* that
reads numbered rows by seq and waits on a blocking lock call to take over
if the sequencer goes away.

Waking up: the sequencer sleeps on LISTEN holding an exclusive advisory
lock (``realtime_bridge.wake_key()``). A writer's trigger sends NOTIFY only
when it cannot take that lock shared, i.e. only while the sequencer sleeps.
Before sleeping the sequencer takes the lock (if it cannot, writers are
active: it drains again after a short pause) and then drains once more;
dropping that final drain strands rows. One pass (release the lock after a
wake-up, number, try the lock, the final drain) is one round trip:
``realtime_bridge.sequence_pass_with_xid()``, whose final drain is a statement of its
own and so sees everything committed before the lock was taken. A database
migrated before that function existed gets the same protocol in separate
statements.

A dropped connection or a Postgres restart is survived by reconnecting with
backoff and resuming from the last seq handed on; nothing committed in the
meantime is lost because the outbox is the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from realtime_bridge.change import Change
from realtime_bridge.sources.base import (
    Backoff,
    Deliver,
    ModeStatus,
    SourceState,
    SourceStatus,
)

if TYPE_CHECKING:
    from realtime_bridge.changestream import ChangeStream, Entry

logger = logging.getLogger(__name__)

LEADER_KEY = 7305424200
WAKE_CHANNEL = "realtime_bridge_wake"
SEQ_CHANNEL = "realtime_bridge_seq"

_COLUMNS = (
    "coalesce(o.ref, o.id) AS id, o.seq, o.operation, o.schema_name, o.table_name, o.record,"
    " o.old_record, o.created_at, o.channel, o.event, o.changes, o.batch, o.xid"
)

# Changes routed between two yields to the event loop.
HAND_ON_SLICE = 200

# The most changes one outbox row holds (a statement-level chunk).
MAX_CHANGES_PER_ROW = 1000

# One pass of the sequencer (the same as realtime_bridge.sequence_rows_with_xid(), for a
# database without that function). Visible unnumbered rows are taken in id order,
# up to about $1 changes (at least one row); a row of n changes gets n
# consecutive seqs. `batch` is bounded and materialised; the counter row is
# touched only when there is something to number, so an idle pass writes
# nothing; followers are notified once per pass.
SEQUENCE_SQL = f"""
WITH candidates AS MATERIALIZED (
    SELECT id, changes FROM realtime_bridge.outbox
    WHERE seq IS NULL
    ORDER BY id
    LIMIT $1
), batch AS MATERIALIZED (
    SELECT id, changes, running - changes AS before
    FROM (SELECT id, changes, sum(changes) OVER (ORDER BY id) AS running FROM candidates) c
    WHERE running - changes < $1
), counter AS (
    UPDATE realtime_bridge.sequencer s
    SET last_seq = s.last_seq + b.n
    FROM (SELECT sum(changes) AS n FROM batch) b
    WHERE b.n > 0
    RETURNING s.last_seq - b.n AS base, s.last_seq AS head
), wake AS MATERIALIZED (
    SELECT pg_notify('{SEQ_CHANNEL}', counter.head::text) AS sent FROM counter
)
UPDATE realtime_bridge.outbox o
SET seq = counter.base + batch.before + 1, sequenced_at = clock_timestamp()
FROM batch, counter, wake
WHERE o.id = batch.id
RETURNING {_COLUMNS}
"""

# One pass of the sequencer in one round trip (see the migration defining
# it): the rows it numbered, then a state row (seq NULL) whose `event` says
# whether we now hold the wake lock ('asleep'), hold nothing and should call
# again ('awake') or hold nothing because writers are mid-transaction ('busy').
PASS_SQL = "SELECT * FROM realtime_bridge.sequence_pass_with_xid($1, $2)"
PASS_FUNCTION = "realtime_bridge.sequence_pass_with_xid(integer,boolean)"

# Rows holding any seq in ($1, $2]; a batch row may start up to
# MAX_CHANGES_PER_ROW - 1 before $1, which keeps the seq index usable.
READ_SQL = f"""
SELECT {_COLUMNS}
FROM realtime_bridge.outbox o
WHERE o.seq > $1 - {MAX_CHANGES_PER_ROW - 1} AND o.seq <= $2
  AND o.seq + o.changes - 1 > $1
ORDER BY o.seq
LIMIT $3
"""


def row_to_changes(row: asyncpg.Record) -> list[Change]:
    """The changes of one numbered outbox row (a batch row holds several)."""
    if not row["batch"]:
        return [
            Change(
                seq=row["seq"],
                operation=row["operation"],
                schema=row["schema_name"],
                table=row["table_name"],
                record=row["record"],
                old_record=row["old_record"],
                committed_at=row["created_at"],
                channel=row["channel"],
                event=row["event"],
                outbox_id=row["id"],
                xid=row["xid"],
            )
        ]
    records = row["record"] or [None] * row["changes"]
    old_records = row["old_record"] or [None] * row["changes"]
    return [
        Change(
            seq=row["seq"] + i,
            operation=row["operation"],
            schema=row["schema_name"],
            table=row["table_name"],
            record=record,
            old_record=old,
            committed_at=row["created_at"],
            outbox_id=row["id"],
            xid=row["xid"],
        )
        for i, (record, old) in enumerate(zip(records, old_records, strict=True))
    ]


def rows_to_changes(rows: list[asyncpg.Record], after: int) -> list[Change]:
    """The changes of `rows` with a seq above `after`, in seq order."""
    changes = [c for row in rows for c in row_to_changes(row) if c.seq > after]
    changes.sort(key=lambda c: c.seq)
    return changes


async def init_connection(conn: asyncpg.Connection) -> None:
    """Decode json/jsonb with orjson on every connection the bridge opens."""
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind,
            schema="pg_catalog",
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
        )


class OutboxSource:
    """Streams numbered changes to `deliver`, in seq order, forever."""

    name = "outbox"
    durable = True

    def __init__(
        self,
        dsn: str,
        deliver: Deliver,
        *,
        start_after: int,
        batch_size: int = 5000,
        connect: Callable[[str], Awaitable[asyncpg.Connection]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.deliver = deliver
        self.batch_size = batch_size
        self.status = SourceStatus(last_seq=start_after)
        self.mode = ModeStatus(reason="capture triggers and the outbox")
        self._connect = connect or self._default_connect
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._connections: set[asyncpg.Connection] = set()
        self._backoff = Backoff(first=0.1, cap=5.0)
        # The sequencer's statements, the NOTIFY wake-ups it slept until and its
        # passes that found writers mid-transaction (for the bench).
        self.statements = 0
        self.wake_ups = 0
        self.busy_polls = 0
        # The Redis change stream (REDIS_URL + CHANGE_STREAM): the leader appends what
        # it numbered; a follower reads it instead of the log (see `changestream`).
        self.stream: ChangeStream | None = None
        # A follower's reads of the log (head checks and reads by seq), for the bench.
        self.follower_statements = 0
        # The highest log head a NOTIFY has named (a stream follower's watchdog).
        self._notified_head = 0
        # Stream readers cancelled and not yet ended.
        self._ending: set[asyncio.Task[None]] = set()

    async def _default_connect(self, dsn: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, timeout=10)
        await init_connection(conn)
        return conn

    @property
    def last_seq(self) -> int:
        return self.status.last_seq

    async def wait_logged(self, seq: int, timeout: float) -> bool:
        """Is everything handed on up to `seq` in the log (within `timeout` s)?

        Here always: the triggers' rows are in the log before they are handed on.
        """
        return True

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="outbox-source")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in list(self._connections):
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
        self.status.set(SourceState.STOPPED)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until the source is connected (True) or `timeout` passes (False)."""
        return await self.status.wait_connected(timeout)

    @property
    def healthy(self) -> bool:
        return self.status.state is SourceState.CONNECTED

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong (asyncpg raises a few kinds outside its
                # PostgresError tree when a connection dies mid-operation), the
                # source must come back: reconnect and resume from last_seq.
                message = f"{type(exc).__name__}: {exc}"
                if self.status.state is not SourceState.RECONNECTING:
                    logger.warning("outbox source lost its database (%s); reconnecting", message)
                self.status.set(SourceState.RECONNECTING, message)
                self.status.reconnects += 1
            finally:
                for conn in list(self._connections):
                    with contextlib.suppress(Exception):
                        conn.terminate()
                self._connections.clear()
            await asyncio.sleep(self._backoff.next())

    def _connected(self) -> None:
        """A session is established: the next outage starts again from the shortest wait."""
        self.status.set(SourceState.CONNECTED)
        self._backoff.reset()

    async def _open(self) -> asyncpg.Connection:
        conn = await self._connect(self.dsn)
        self._connections.add(conn)
        conn.add_termination_listener(lambda _c: self._lost.set())
        return conn

    async def _session(self) -> None:
        self._lost.clear()
        conn = await self._open()
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_KEY):
            await self._lead(conn)
            return
        await self._follow(conn)

    # reading -------------------------------------------------------------

    async def _hand_on(self, rows: list[asyncpg.Record], *, numbered: bool = False) -> None:
        """Hand on the changes of `rows` above last_seq (`numbered`: this leader numbered them)."""
        if not rows:
            return
        await self._pass_on(rows_to_changes(rows, self.status.last_seq), numbered=numbered)

    async def _pass_on(self, fresh: list[Change], *, numbered: bool = False) -> None:
        if not fresh:
            return
        self.status.last_lag_ms = (
            datetime.now(UTC) - fresh[-1].committed_at
        ).total_seconds() * 1000
        # Routing a large pass to many subscribers is long CPU work: hand it
        # on in slices and let sockets, heartbeats and /health run between.
        for start in range(0, len(fresh), HAND_ON_SLICE):
            part = fresh[start : start + HAND_ON_SLICE]
            self.status.last_seq = part[-1].seq
            if numbered and self.stream is not None:
                self.stream.publish(part)
            self.deliver(part)
            if start + HAND_ON_SLICE < len(fresh):
                await asyncio.sleep(0)

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Hand on rows numbered while we were not looking (after a reconnect)."""
        head = await conn.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
        await self._read_upto(conn, head)

    async def _read_upto(self, conn: asyncpg.Connection, head: int) -> None:
        """Hand on the log's changes in (last_seq, head]."""
        while self.status.last_seq < head:
            if self.status.role == "follower":
                self.follower_statements += 1
            rows = await conn.fetch(READ_SQL, self.status.last_seq, head, self.batch_size)
            if not rows:
                logger.error(
                    "outbox rows %s..%s are missing (pruned?)", self.status.last_seq + 1, head
                )
                break
            await self._hand_on(rows)

    # sequencer -------------------------------------------------------------

    async def _lead(self, conn: asyncpg.Connection) -> None:
        self.status.role = "sequencer"
        # Pin the plan: the batch is small, so a nested loop over the
        # primary key is always right; a large analysed outbox can otherwise
        # tempt the planner into a full merge join. READ COMMITTED: the final
        # drain inside sequence_pass() needs a snapshot of its own.
        await conn.execute(
            "SET enable_mergejoin = off; SET enable_hashjoin = off; "
            "SET default_transaction_isolation = 'read committed'"
        )
        await conn.add_listener(WAKE_CHANNEL, self._on_notify)
        await self._catch_up(conn)
        self._connected()
        logger.info("outbox source connected as sequencer at seq %s", self.status.last_seq)
        wake_key, one_trip = await conn.fetchrow(
            "SELECT realtime_bridge.wake_key(), to_regprocedure($1) IS NOT NULL", PASS_FUNCTION
        )
        if one_trip:
            await self._lead_in_one_trip(conn)
        else:
            await self._lead_in_statements(conn, wake_key)

    async def _lead_in_one_trip(self, conn: asyncpg.Connection) -> None:
        """Sequence with one statement per pass: per wake-up, or per poll while writers are busy."""
        holding = False  # the wake lock (we sleep holding it)
        idle_polls = 0
        while True:
            # A NOTIFY from now on may be a writer this pass does not see.
            self._wake.clear()
            self.statements += 1
            rows = await conn.fetch(PASS_SQL, self.batch_size, holding)
            if not rows or rows[-1]["seq"] is not None:
                raise RuntimeError("realtime_bridge.sequence_pass_with_xid() returned no state row")
            state = rows[-1]["event"]
            holding = state == "asleep"
            await self._hand_on(rows[:-1], numbered=True)
            if state == "asleep":
                # Nothing left that did not notify: wait for a NOTIFY (at once
                # if one came during the pass); the next pass lets go of the lock.
                await self._sleep()
                self.wake_ups += 1
                idle_polls = 0
            elif state == "busy":
                # Writers hold the shared lock: they are mid-transaction and
                # did not notify. Look again in a millisecond (latency is the
                # point); only a writer that stays open for long (a batch
                # job on a tracked table) makes us slow down, to 5 ms.
                idle_polls += 1
                self.busy_polls += 1
                await asyncio.sleep(0.001 if idle_polls < 50 else 0.005)
            else:
                idle_polls = 0

    async def _lead_in_statements(self, conn: asyncpg.Connection, wake_key: int) -> None:
        """The same protocol without sequence_pass() (a database not migrated since)."""
        idle_polls = 0
        while True:
            if await self._sequence(conn):
                idle_polls = 0
                continue
            self.statements += 1
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", wake_key):
                idle_polls += 1
                await asyncio.sleep(0.001 if idle_polls < 50 else 0.005)
                continue
            self._wake.clear()
            # The final drain: rows committed before we took the lock.
            if not await self._sequence(conn):
                await self._sleep()
                self.wake_ups += 1
            self.statements += 1
            await conn.fetchval("SELECT pg_advisory_unlock($1)", wake_key)
            idle_polls = 0

    async def _sequence(self, conn: asyncpg.Connection) -> bool:
        self.statements += 1
        rows = await conn.fetch(SEQUENCE_SQL, self.batch_size)
        await self._hand_on(rows, numbered=True)
        return bool(rows)

    def stats(self) -> dict[str, Any]:
        """The sequencer's statements and wake-ups so far (this instance, while it led)."""
        return {
            "statements": self.statements,
            "wake_ups": self.wake_ups,
            "busy_polls": self.busy_polls,
        }

    def _on_notify(self, *args: Any) -> None:
        # The followers' NOTIFY names the log's new head (an older database: nothing).
        payload = args[3] if len(args) > 3 else ""
        head = int(payload) if payload and str(payload).isdigit() else self.status.last_seq + 1
        self._notified_head = max(self._notified_head, head)
        self._wake.set()

    async def _sleep(self) -> None:
        wake = asyncio.ensure_future(self._wake.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({wake, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            lost.cancel()
        if self._lost.is_set():
            raise ConnectionError("database connection closed")

    # follower ----------------------------------------------------------------

    async def _follow(self, conn: asyncpg.Connection) -> None:
        self.status.role = "follower"
        await conn.add_listener(SEQ_CHANNEL, self._on_notify)
        self._connected()
        logger.info(
            "outbox source connected as follower at seq %s (reading %s)",
            self.status.last_seq,
            "the Redis change stream" if self.stream is not None else "the log",
        )
        lock_conn = await self._open()
        takeover = asyncio.ensure_future(
            lock_conn.fetchval("SELECT pg_advisory_lock($1)", LEADER_KEY)
        )
        try:
            if self.stream is None:
                await self._follow_log(conn, takeover)
            else:
                await self._follow_stream(conn, takeover, self.stream)
        except BaseException:
            takeover.cancel()
            raise
        takeover.result()
        logger.info("sequencer gone; this instance takes over")
        await conn.close()
        self._connections.discard(conn)
        await self._lead(lock_conn)

    async def _head(self, conn: asyncpg.Connection) -> int:
        self.follower_statements += 1
        return int(await conn.fetchval("SELECT last_seq FROM realtime_bridge.sequencer"))

    async def _follow_log(self, conn: asyncpg.Connection, takeover: asyncio.Future[Any]) -> None:
        """Read the log by seq on each NOTIFY until `takeover` is done."""
        while not takeover.done():
            self._wake.clear()
            head = await self._head(conn)
            if head > self.status.last_seq:
                await self._read_upto(conn, head)
                continue
            await self._wait(takeover)

    async def _wait(self, *others: asyncio.Future[Any], timeout: float | None = None) -> None:
        wake = asyncio.ensure_future(self._wake.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait(
                {wake, lost, *others}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wake.cancel()
            lost.cancel()
        if self._lost.is_set():
            raise ConnectionError("database connection closed")

    async def _follow_stream(
        self, conn: asyncpg.Connection, takeover: asyncio.Future[Any], stream: ChangeStream
    ) -> None:
        """Hand on the stream's entries; the log fills holes and stands in while it is silent.

        Each NOTIFY names the log's new head. If the stream has not brought us
        that far within `stream.grace`, the leader is not reaching Redis: read
        the log, and keep reading it on every NOTIFY (`stale`) until an entry
        comes again. While this instance cannot read the stream, the same.
        """
        queue: asyncio.Queue[Entry] = asyncio.Queue(64)
        reader = asyncio.create_task(
            self._read_stream(stream, queue), name="outbox-source-stream-reader"
        )
        getter: asyncio.Future[Entry] | None = None
        from_log = True  # read the log now (at the start, and whenever it must stand in)
        stale = False
        behind_since: float | None = None
        self._notified_head = 0
        try:
            while not takeover.done():
                if from_log:
                    from_log = False
                    self._wake.clear()
                    head = await self._head(conn)
                    if head > self.status.last_seq:
                        stream.fallback_reads += 1
                        await self._read_upto(conn, head)
                    behind_since = None
                if getter is None:
                    getter = asyncio.ensure_future(queue.get())
                timeout = None
                if behind_since is not None:
                    timeout = max(behind_since + stream.grace - time.monotonic(), 0)
                await self._wait(takeover, getter, timeout=timeout)
                if getter.done():
                    entry = getter.result()
                    getter = None
                    stale = False
                    await self._apply(conn, entry, stream)
                    if self.status.last_seq >= self._notified_head:
                        behind_since = None
                if self._wake.is_set():
                    self._wake.clear()
                    if stale or not stream.reading:
                        from_log = True
                    elif behind_since is None and self._notified_head > self.status.last_seq:
                        behind_since = time.monotonic()
                if behind_since is not None and time.monotonic() >= behind_since + stream.grace:
                    from_log = True
                    stale = True
        finally:
            if getter is not None:
                getter.cancel()
            # Not awaited: a Redis client cancelled mid-XREAD can take a while to let go,
            # and a follower taking over the slot must not wait for it. It is kept
            # referenced until it has ended, and its outcome is collected.
            reader.cancel()
            self._ending.add(reader)
            reader.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._ending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("change stream reader ended: %s", task.exception())

    async def _read_stream(self, stream: ChangeStream, queue: asyncio.Queue[Entry]) -> None:
        entries: AsyncIterator[Entry] = stream.entries(lambda: self.status.last_seq)
        async for entry in entries:
            if entry.last > self.status.last_seq:
                await queue.put(entry)

    async def _apply(self, conn: asyncpg.Connection, entry: Entry, stream: ChangeStream) -> None:
        """Hand on an entry's new changes, after reading any hole before it from the log."""
        if entry.last <= self.status.last_seq:
            return
        if entry.first > self.status.last_seq + 1:
            stream.gaps_filled += 1
            await self._read_upto(conn, entry.first - 1)
        fresh = [c for c in entry.changes if c.seq > self.status.last_seq]
        stream.delivered_changes += len(fresh)
        await self._pass_on(fresh)
