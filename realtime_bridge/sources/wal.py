"""The WAL source: changes read from Postgres's write-ahead log, numbered once.

The leading instance (the one holding the leader advisory lock, as with
the triggers) reads the ``supabase_realtime`` publication through a
permanent ``pgoutput`` slot and gives each change the next seq in commit
order. It hands the numbered changes on at once, and appends them to the
outbox in batches (one statement per `log_interval`, or sooner when a
batch is full). That statement also records how far the WAL has been
logged (``realtime_bridge.wal_state``); only after it has committed is the
slot's position acknowledged.

Handing on before logging is safe because the numbering is a pure
function of the stream: a committed change stays in the WAL until the
slot is acknowledged past it, and whoever leads next (this process after
a reconnect, or another instance after a crash) replays the stream from
the logged position and gives every change the seq it had before. A
client that saw seq 120 of a leader that died with 100 logged gets 101..120
again, with the same seqs and contents, from the next one (its `since`
waits for that head), and nothing is lost or numbered twice. So a change
reaches clients one WAL read after its commit, while the log costs one
statement per batch, not one per change.

Followers tail the outbox by seq exactly as they do behind the trigger
sequencer (one wake-up per batch), and take over the slot when the leader
goes away.

The replication connection is psycopg2's (the maintained Python driver
that speaks the streaming replication protocol; asyncpg and psycopg 3 do
not), in asynchronous mode, read from the event loop with `add_reader`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from realtime_bridge.change import Change
from realtime_bridge.sources.outbox import (
    HAND_ON_SLICE,
    MAX_CHANGES_PER_ROW,
    SEQ_CHANNEL,
    OutboxSource,
)
from realtime_bridge.sources.pgoutput import (
    TYPES_SQL,
    Begin,
    Commit,
    Decoder,
    Message,
    Relation,
    RowChange,
    Types,
    format_lsn,
    parse_lsn,
)

logger = logging.getLogger(__name__)

BROADCAST_PREFIX = "realtime_bridge"
#: The log marker of a capture gap (a lost slot): every client must resync.
RESYNC_CHANNEL = "$resync"
SWITCH_PREFIX = "realtime_bridge.switch"

# Changes held in memory (read but not yet logged) before reading pauses
# for the log to catch up: two full batches, so reading goes on while one is written.
MAX_HELD = 10_000

# One statement appends a batch: numbered rows, the counter, the WAL position
# and the followers' wake-up.
APPEND_SQL = f"""
WITH logged AS (
    INSERT INTO realtime_bridge.outbox
        (seq, operation, schema_name, table_name, record, old_record, channel, event,
         changes, batch, created_at, ref, xid, sequenced_at)
    SELECT r.seq, r.operation, r.schema_name, r.table_name, r.record::jsonb, r.old_record::jsonb,
           r.channel, r.event, r.changes, r.batch, r.created_at, r.ref, r.xid, clock_timestamp()
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::int[], $10::bool[], $11::timestamptz[],
                $16::bigint[], $17::bigint[])
         AS r(seq, operation, schema_name, table_name, record, old_record, channel, event,
              changes, batch, created_at, ref, xid)
    RETURNING 1
), visible AS (
    -- Commit only once every writer is visible to new snapshots (see the
    -- migration defining it): a snapshot that sees these rows sees their writes.
    SELECT realtime_bridge.await_visible($17::bigint[]) AS ok
), counter AS (
    UPDATE realtime_bridge.sequencer SET last_seq = $12 WHERE last_seq < $12 RETURNING 1
), position AS (
    UPDATE realtime_bridge.wal_state
    SET commit_lsn = $13::pg_lsn, logged = $14, switch_pending = $15
    RETURNING 1
), wake AS (
    SELECT pg_notify('{SEQ_CHANNEL}', ($12::bigint)::text) FROM counter
)
SELECT (SELECT count(*) FROM logged) AS rows, (SELECT count(*) FROM wake) AS woken,
       (SELECT ok FROM visible) AS visible
"""

SLOT_SQL = """
SELECT s.slot_name, s.wal_status,
       pg_current_wal_lsn() - s.confirmed_flush_lsn AS lag_bytes
FROM pg_catalog.pg_replication_slots s
WHERE s.slot_name = $1 AND s.database = current_database()
"""


def slot_name(database: str) -> str:
    """The default slot of `database`: slot names are shared by every database of a server."""
    suffix = re.sub(r"[^a-z0-9_]", "_", database.lower())
    return f"realtime_bridge_{suffix}"[:63]


class WalUnavailable(Exception):
    """This database cannot be read through the WAL (say why)."""


async def wal_unavailable(conn: asyncpg.Connection, publication: str) -> str | None:
    """Why this role cannot stream the WAL here, or None when it can."""
    row = await conn.fetchrow(
        """
        SELECT current_setting('wal_level') AS wal_level,
               (SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles
                WHERE rolname = current_user) AS may_replicate,
               EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1) AS published,
               to_regclass('realtime_bridge.wal_state') IS NOT NULL AS installed
        """,
        publication,
    )
    assert row is not None
    if row["wal_level"] != "logical":
        return f"wal_level is {row['wal_level']!r}, not 'logical'"
    if not row["may_replicate"]:
        return "this database role has no REPLICATION attribute"
    if not row["published"]:
        return f"the publication {publication!r} does not exist"
    if not row["installed"]:
        return "realtime_bridge.wal_state is not installed (run `realtime-bridge migrate`)"
    return None


@dataclass
class _Pending:
    """Changes read from the stream, not yet handed on (values still in text form)."""

    changes: list[tuple[int, RowChange | Message | Change, Begin | None]] = field(
        default_factory=list
    )
    # The WAL position once these are logged: (commit LSN of the last
    # transaction touched, how many of its changes are logged).
    commit_lsn: int = 0
    logged: int = 0
    # Acknowledge up to here once logged (the end of the last whole transaction).
    ack_lsn: int = 0
    switch_pending: bool = False


@dataclass
class _Unlogged:
    """Changes handed on but not yet in the log, and where the log stands with them."""

    changes: list[Change] = field(default_factory=list)
    commit_lsn: int = 0
    logged: int = 0
    ack_lsn: int = 0
    switch_pending: bool = False
    since: float = 0.0  # time.monotonic() when the first of them was handed on


class WalSource(OutboxSource):
    """The outbox source whose leader reads the WAL instead of numbering trigger rows."""

    name = "wal"

    def __init__(
        self,
        dsn: str,
        deliver: Any,
        *,
        start_after: int,
        publication: str = "supabase_realtime",
        slot: str | None = None,
        max_lag_bytes: int = 1 << 30,
        batch_size: int = 5000,
        log_interval: float = 0.025,
    ) -> None:
        super().__init__(dsn, deliver, start_after=start_after, batch_size=batch_size)
        self.publication = publication
        self.slot = slot or ""  # unset: named after the database when leading starts
        self.max_lag_bytes = max_lag_bytes
        # The longest a handed-on change waits for the log (a full batch goes at once).
        self.log_interval = log_interval
        self.mode.reason = f"logical replication of the {publication!r} publication"
        self.types = Types()
        self.decoder = Decoder()
        self.slot_lag_bytes: int | None = None
        self.slot_recreated = 0
        self.statements = 0  # statements sent by the leader (for the bench)
        self.logged_seq = start_after  # the log's head (status.last_seq: what is handed on)
        self._replication: Any = None
        self._cursor: Any = None
        self._pending = _Pending()
        self._unlogged = _Unlogged()
        self._writing: asyncio.Task[None] | None = None
        self._written: _Unlogged | None = None  # the batch `_writing` appends
        self._conn_lock = asyncio.Lock()  # the log writes and the type lookups share `conn`
        # What the stream loop awaits (one future per wait, resolved by `_rouse`).
        self._waiter: asyncio.Future[None] | None = None
        self._log_grew = asyncio.Event()
        self._stream_error: BaseException | None = None
        self._paused = False
        self._acked = 0
        # Per-transaction state while reading.
        self._txn: Begin | None = None
        self._txn_index = 0
        self._skip_before: tuple[int, int] = (0, 0)
        self._skipping_switch = False
        self._logged_switch_pending = False
        self._next_seq = start_after + 1
        self._gap_reason: str | None = None

    # leading ---------------------------------------------------------------

    async def _lead(self, conn: asyncpg.Connection) -> None:
        self.status.role = "sequencer"  # the one instance that numbers changes
        try:
            await self._catch_up(conn)
            await self._prepare_slot(conn)
            await self._switch_from_triggers(conn)
            state = await conn.fetchrow(
                "SELECT commit_lsn::text AS lsn, logged, switch_pending"
                " FROM realtime_bridge.wal_state"
            )
            assert state is not None
            self._skip_before = (parse_lsn(state["lsn"]) if state["lsn"] else 0, state["logged"])
            self._skipping_switch = bool(state["switch_pending"])
            self._logged_switch_pending = self._skipping_switch
            self._pending = _Pending(switch_pending=self._skipping_switch)
            self._unlogged = _Unlogged(switch_pending=self._skipping_switch)
            self.logged_seq = int(
                await conn.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
            )
            # What this process handed on before a reconnect may be ahead of the log:
            # the replay from the logged position numbers it again, with the same seqs.
            self.status.last_seq = max(self.status.last_seq, self.logged_seq)
            self._next_seq = self.logged_seq + 1
            if self._gap_reason is not None:
                # The WAL after the log is gone, and with it the replay that would give
                # seqs handed on but not logged (here, or by a leader that died) to the
                # same changes again. The marker comes after any of them: a leader never
                # holds more than MAX_HELD unlogged changes.
                self._next_seq = max(self.status.last_seq, self.logged_seq + MAX_HELD) + 1
                marker = Change(
                    seq=self._next_seq,
                    operation="BROADCAST",
                    schema=None,
                    table=None,
                    record={"reason": self._gap_reason},
                    old_record=None,
                    committed_at=datetime.now(UTC),
                    channel=RESYNC_CHANNEL,
                    event="capture_gap",
                )
                self._pending.changes.append((marker.seq, marker, None))
                self._next_seq += 1
                await self._route(conn)
                await self._write_log(conn, self._detach_unlogged())
                self._gap_reason = None
            await self._stream(conn)
        finally:
            self._close_replication()

    async def _prepare_slot(self, conn: asyncpg.Connection) -> None:
        """Create the slot when missing; give it up when it lags past the limit."""
        if not self.slot:
            self.slot = slot_name(await conn.fetchval("SELECT current_database()"))
        elsewhere = await conn.fetchval(
            "SELECT database FROM pg_catalog.pg_replication_slots"
            " WHERE slot_name = $1 AND database IS DISTINCT FROM current_database()",
            self.slot,
        )
        if elsewhere is not None:
            raise WalUnavailable(
                f"the replication slot {self.slot!r} belongs to database {elsewhere!r}; "
                "set REPLICATION_SLOT to a name of this database's own"
            )
        row = await conn.fetchrow(SLOT_SQL, self.slot)
        lost = row is not None and row["wal_status"] == "lost"
        why = "missing"
        too_far = (
            row is not None
            and row["lag_bytes"] is not None
            and int(row["lag_bytes"]) > self.max_lag_bytes
        )
        if row is not None and not lost and not too_far:
            self.slot_lag_bytes = int(row["lag_bytes"] or 0)
            return
        had_position = await conn.fetchval(
            "SELECT commit_lsn IS NOT NULL FROM realtime_bridge.wal_state"
        ) or self.status.last_seq > int(
            await conn.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
        )  # handed on from the slot, not logged yet
        if row is not None:
            why = (
                "invalidated by Postgres (max_slot_wal_keep_size)"
                if lost
                else f"{int(row['lag_bytes'])} bytes behind, past WAL_MAX_SLOT_LAG"
            )
            logger.error(
                "replication slot %r is %s: dropping it; changes since it was last read are "
                "lost and clients are told to resync",
                self.slot,
                why,
            )
            await conn.execute("SELECT pg_drop_replication_slot($1)", self.slot)
        elif had_position:
            logger.error(
                "replication slot %r disappeared (dropped by an operator?): recreating it; "
                "changes since it was last read are lost and clients are told to resync",
                self.slot,
            )
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", self.slot)
        self.slot_lag_bytes = 0
        logger.info("replication slot %r created", self.slot)
        if had_position:
            self.slot_recreated += 1
            self.status.set(self.status.state, f"slot {self.slot!r} recreated: changes lost")
            # Nothing older than the new slot can be replayed to us: start afresh, and
            # put a marker in the log so that every instance tells its clients to resync.
            await conn.execute("UPDATE realtime_bridge.wal_state SET commit_lsn = NULL, logged = 0")
            self._gap_reason = "the replication slot was lost" if row is None else why

    async def _switch_from_triggers(self, conn: asyncpg.Connection) -> None:
        """Drop the capture triggers (once), then number what they captured."""
        needed = await conn.fetchval(
            """
            SELECT realtime_bridge.capture_mode() <> 'wal' OR EXISTS (
                SELECT 1 FROM realtime_bridge.tracked_tables t
                WHERE EXISTS (SELECT 1 FROM realtime_bridge.capture_triggers(
                    format('%I.%I', t.schema_name, t.table_name)::regclass)))
            """
        )
        if needed:
            await conn.execute("SELECT realtime_bridge.switch_to_wal()")
            logger.info("capture triggers removed: the WAL is the capture from now on")
        # Rows the triggers wrote before the switch are numbered first.
        await conn.execute("SET enable_mergejoin = off; SET enable_hashjoin = off")
        while await self._sequence(conn):
            pass

    async def _stream(self, conn: asyncpg.Connection) -> None:
        import psycopg2
        import psycopg2.extras

        loop = asyncio.get_running_loop()
        self._replication = psycopg2.connect(
            self.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            async_=True,
        )
        await _poll(self._replication)
        self._cursor = self._replication.cursor()
        self._cursor.start_replication(
            slot_name=self.slot,
            decode=False,
            options={
                "proto_version": "1",
                "publication_names": self.publication,
                "messages": "true",
            },
            status_interval=5,
        )
        await _poll(self._replication)
        fd = self._replication.fileno()
        self._stream_error = None
        conn.add_termination_listener(self._on_terminated)
        loop.add_reader(fd, self._on_readable)
        self._connected()
        logger.info(
            "WAL source streaming slot %r (publication %r) as leader at seq %s",
            self.slot,
            self.publication,
            self.status.last_seq,
        )
        try:
            self._on_readable()  # what arrived with the start
            while True:
                await self._wait_for_work()
                if self._stream_error is not None:
                    raise self._stream_error
                self._reap()
                pending = self._pending
                if pending.changes or pending.ack_lsn or pending.switch_pending:
                    await self._route(conn)
                if self._log_due():
                    self._start_write(conn)
                await self._settle(conn)
                self._ack_idle()
        finally:
            conn.remove_termination_listener(self._on_terminated)
            with contextlib.suppress(Exception):
                loop.remove_reader(fd)
            if self._writing is not None:
                # Not logged, so not acknowledged: the next leader replays it.
                self._writing.cancel()
                self._writing = None
                self._written = None

    async def wait_logged(self, seq: int, timeout: float) -> bool:
        """Is everything handed on up to `seq` in the log (within `timeout` s)?

        The leader hands changes on before it logs them; a replay from the log
        (a resume older than the hub's window) waits for the log to reach it.
        """
        deadline = time.monotonic() + timeout
        while self.status.role == "sequencer" and self.logged_seq < seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._log_grew.wait(), min(remaining, 0.5))
        return True

    def _held(self) -> int:
        """Changes read and not yet logged (the batch being written included)."""
        written = len(self._written.changes) if self._written is not None else 0
        return len(self._pending.changes) + len(self._unlogged.changes) + written

    def _log_due(self) -> bool:
        unlogged = self._unlogged
        return (
            self._writing is None
            and bool(unlogged.changes)
            and (
                len(unlogged.changes) >= self.batch_size
                or time.monotonic() - unlogged.since >= self.log_interval
            )
        )

    async def _wait_for_work(self) -> None:
        """Until something arrived, a log write ended, a batch is due or the connection went."""
        if self._lost.is_set():
            raise ConnectionError("database connection closed")
        if self._pending.changes or self._stream_error is not None or self._log_due():
            return
        if self._writing is not None and self._writing.done():
            return
        timeout = 1.0
        if self._unlogged.changes and self._writing is None:
            timeout = max(0.0, self._unlogged.since + self.log_interval - time.monotonic())
        # One future and one timer per wait: this runs once per read from the socket.
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._rouse)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._lost.is_set():
            raise ConnectionError("database connection closed")

    def _rouse(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_terminated(self, _conn: object) -> None:
        self._rouse()  # the base class sets `_lost` first

    def _ack_idle(self) -> None:
        """Nothing of ours in flight: let the slot advance over others' WAL too."""
        if self._cursor is None:
            return
        end = int(self._cursor.wal_end or 0)
        idle = (
            not self._pending.changes
            and not self._unlogged.changes
            and self._writing is None
            and self._txn is None
        )
        if end > self._acked and idle:
            self._acknowledge(end)
        self.slot_lag_bytes = max(int(self._cursor.wal_end or 0) - self._acked, 0)

    def _on_readable(self) -> None:
        """Drain what the socket holds into the pending batch (no awaiting here)."""
        cursor = self._cursor
        if cursor is None:
            return
        try:
            while self._held() < MAX_HELD:
                message = cursor.read_message()
                if message is None:
                    break
                self._take(message.payload)
            else:
                self._pause()
        except Exception as exc:
            self._stream_error = exc
        self._rouse()

    def _pause(self) -> None:
        if not self._paused and self._replication is not None:
            asyncio.get_running_loop().remove_reader(self._replication.fileno())
            self._paused = True

    def _resume(self) -> None:
        if self._paused and self._replication is not None:
            asyncio.get_running_loop().add_reader(self._replication.fileno(), self._on_readable)
            self._paused = False
            self._on_readable()

    def _take(self, payload: bytes) -> None:
        decoded = self.decoder.feed(payload)
        if isinstance(decoded, Begin):
            self._txn = decoded
            self._txn_index = 0
            return
        if isinstance(decoded, Commit):
            # Once everything before it is logged, this transaction may be acknowledged.
            self._pending.ack_lsn = decoded.end_lsn
            self._txn = None
            return
        if isinstance(decoded, RowChange):
            if decoded.relation.schema != "realtime_bridge":
                self._append(decoded)
            return
        if isinstance(decoded, Message) and decoded.transactional:
            if decoded.prefix == SWITCH_PREFIX:
                # The triggers captured everything before this point.
                self._skipping_switch = False
                self._pending.switch_pending = False
            elif decoded.prefix == BROADCAST_PREFIX:
                self._append(decoded)

    def _skipped(self, final_lsn: int, index: int | None) -> bool:
        """Was this change (or, index None, this whole transaction) logged already?"""
        if self._skipping_switch:
            return True
        lsn, logged = self._skip_before
        if final_lsn < lsn:
            return True
        if final_lsn == lsn:
            return index is None or index < logged
        return False

    def _append(self, item: RowChange | Message) -> None:
        txn = self._txn
        if txn is None:
            return  # only non-transactional messages come outside a transaction
        index = self._txn_index
        self._txn_index += 1
        if self._skipped(txn.final_lsn, index):
            return
        self._pending.changes.append((self._next_seq, item, txn))
        self._next_seq += 1
        self._pending.commit_lsn = txn.final_lsn
        self._pending.logged = index + 1

    def _change(self, seq: int, item: RowChange | Message | Change, txn: Begin | None) -> Change:
        if isinstance(item, Change):
            return item
        assert txn is not None
        if isinstance(item, Message):
            return _broadcast_change(item, seq, txn)
        return self._row_change(item, seq, txn)

    def _row_change(self, change: RowChange, seq: int, txn: Begin) -> Change:
        relation = change.relation
        record = self.types.row(relation, change.new) if change.new is not None else None
        old = self.types.row(relation, change.old) if change.old is not None else None
        if record is not None and old is not None and len(record) < len(relation.columns):
            # Unchanged TOASTed values are not sent again: take them from the old row.
            for column in relation.columns:
                if column.name not in record and column.name in old:
                    record[column.name] = old[column.name]
        return Change(
            seq=seq,
            operation=change.operation,
            schema=relation.schema,
            table=relation.name,
            record=record,
            old_record=old,
            committed_at=txn.committed_at,
            xid=txn.xid,
        )

    async def _learn_types(self, conn: asyncpg.Connection, relations: Iterable[Relation]) -> None:
        wanted = sorted({oid for r in relations for oid in self.types.unknown(r)})
        while wanted:
            rows = await conn.fetch(TYPES_SQL, wanted)
            self.statements += 1
            wanted = self.types.learn(
                [(r["oid"], r["typtype"], r["category"], r["elem"], r["base"]) for r in rows]
            )

    async def _route(self, conn: asyncpg.Connection) -> None:
        """Hand on what was read (numbered already), and queue it for the log."""
        pending = self._pending
        self._pending = _Pending(switch_pending=pending.switch_pending)
        unlogged = self._unlogged
        if pending.changes:
            # By identity: hashing a relation hashes all its columns.
            relations = {
                id(item.relation): item.relation
                for _, item, _ in pending.changes
                if isinstance(item, RowChange)
            }
            if not all(self.types.ready(r) for r in relations.values()):
                async with self._conn_lock:
                    await self._learn_types(conn, relations.values())
            changes = [self._change(*entry) for entry in pending.changes]
            if not unlogged.changes:
                unlogged.since = time.monotonic()
            unlogged.changes.extend(changes)
            unlogged.commit_lsn = pending.commit_lsn
            unlogged.logged = pending.logged
            # After a reconnect the replay repeats, with the same seqs, what was handed
            # on. Not to the change stream yet: followers get only what the log holds.
            await self._pass_on([c for c in changes if c.seq > self.status.last_seq])
        unlogged.ack_lsn = max(unlogged.ack_lsn, pending.ack_lsn)
        unlogged.switch_pending = pending.switch_pending
        if self._held() < MAX_HELD:
            self._resume()

    def _detach_unlogged(self) -> _Unlogged:
        batch = self._unlogged
        self._unlogged = _Unlogged(switch_pending=batch.switch_pending)
        return batch

    def _start_write(self, conn: asyncpg.Connection) -> None:
        self._written = batch = self._detach_unlogged()
        self._writing = asyncio.ensure_future(self._write_log(conn, batch))
        self._writing.add_done_callback(lambda _task: self._rouse())

    def _reap(self) -> None:
        """A finished log write: its failure ends the session (the replay covers it)."""
        task = self._writing
        if task is not None and task.done():
            self._writing = None
            self._written = None
            task.result()
            if self._held() < MAX_HELD:
                self._resume()

    async def _write_log(self, conn: asyncpg.Connection, batch: _Unlogged) -> None:
        """Append `batch` to the log in one statement; then acknowledge the WAL it covers."""
        *columns, refs, xids = _log_rows(batch.changes)
        async with self._conn_lock:
            self.statements += 1
            written = await conn.fetchrow(
                APPEND_SQL,
                *columns,
                batch.changes[-1].seq,
                batch.commit_lsn,
                batch.logged,
                batch.switch_pending,
                refs,
                xids,
            )
        if written is not None and written["visible"] is False:
            logger.warning(
                "a writer of seqs up to %s stayed invisible to new snapshots for 5 s; logged "
                "anyway (a snapshot taken meanwhile may miss it)",
                batch.changes[-1].seq,
            )
        self._skip_before = (batch.commit_lsn, batch.logged)
        self._logged_switch_pending = batch.switch_pending
        self.logged_seq = batch.changes[-1].seq
        self._log_grew.set()
        self._log_grew = asyncio.Event()
        if self.stream is not None:
            # Followers get from the stream only what the log holds.
            for start in range(0, len(batch.changes), HAND_ON_SLICE):
                self.stream.publish(batch.changes[start : start + HAND_ON_SLICE])
        if batch.ack_lsn > self._acked and self._cursor is not None:
            self._acknowledge(batch.ack_lsn)

    async def _settle(self, conn: asyncpg.Connection) -> None:
        """Everything handed on is logged: record the switch marker, acknowledge the rest."""
        unlogged = self._unlogged
        if unlogged.changes or self._writing is not None:
            return
        if unlogged.switch_pending != self._logged_switch_pending:
            # The switch marker passed with nothing to log: remember it before acknowledging.
            async with self._conn_lock:
                self.statements += 1
                await conn.execute("UPDATE realtime_bridge.wal_state SET switch_pending = false")
            self._logged_switch_pending = False
        if unlogged.ack_lsn > self._acked and self._cursor is not None:
            self._acknowledge(unlogged.ack_lsn)

    def _acknowledge(self, lsn: int) -> None:
        """Tell Postgres the slot may move up to `lsn` (everything before it is logged)."""
        self._cursor.send_feedback(flush_lsn=lsn)
        self._acked = lsn

    def _close_replication(self) -> None:
        if self._replication is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._replication.fileno())
            with contextlib.suppress(Exception):
                self._replication.close()
        self._replication = None
        self._cursor = None
        self._paused = False
        self._txn = None
        self.decoder = Decoder()

    def _slot_lag_seconds(self) -> float:
        """How long ago the oldest change read but not yet acknowledged committed."""
        oldest: datetime | None = None
        if self._written is not None:
            oldest = self._written.changes[0].committed_at
        elif self._unlogged.changes:
            oldest = self._unlogged.changes[0].committed_at
        elif self._pending.changes:
            _, item, txn = self._pending.changes[0]
            oldest = txn.committed_at if txn is not None else getattr(item, "committed_at", None)
        if oldest is None:
            return 0.0
        return round(max((datetime.now(UTC) - oldest).total_seconds(), 0.0), 3)

    def stats(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "publication": self.publication,
            "slot_lag_bytes": self.slot_lag_bytes,
            "acknowledged_lsn": format_lsn(self._acked) if self._acked else None,
            "slot_recreated": self.slot_recreated,
            "slot_lag_seconds": self._slot_lag_seconds(),
            "statements": self.statements,
            "logged_seq": self.logged_seq,
            "unlogged": len(self._unlogged.changes),
        }


def _broadcast_change(message: Message, seq: int, txn: Begin) -> Change:
    body = orjson.loads(message.content)
    return Change(
        seq=seq,
        operation="BROADCAST",
        schema=None,
        table=None,
        record=body.get("payload"),
        old_record=None,
        committed_at=txn.committed_at,
        channel=body.get("channel"),
        event=body.get("event"),
        # What the publisher's broadcast() returned: how it learns the seq.
        outbox_id=-message.lsn,
    )


def _log_rows(changes: list[Change]) -> tuple[list[Any], ...]:
    """The outbox rows of `changes`: runs of INSERTs or DELETEs of one table share a batch row."""
    seqs: list[int] = []
    ops: list[str] = []
    schemas: list[str | None] = []
    tables: list[str | None] = []
    records: list[Any] = []
    olds: list[Any] = []
    channels: list[str | None] = []
    events: list[str | None] = []
    counts: list[int] = []
    batches: list[bool] = []
    times: list[datetime] = []
    refs: list[int | None] = []
    xids: list[int | None] = []
    run: list[Change] = []

    def close_run() -> None:
        if not run:
            return
        first = run[0]
        seqs.append(first.seq)
        ops.append(first.operation)
        schemas.append(first.schema)
        tables.append(first.table)
        channels.append(first.channel)
        events.append(first.event)
        times.append(first.committed_at)
        refs.append(first.outbox_id if first.operation == "BROADCAST" else None)
        xids.append(first.xid)
        counts.append(len(run))
        # JSON text: asyncpg would take a list inside a jsonb[] for another dimension.
        # INSERT and DELETE rows are always batches (JSON arrays), UPDATEs single
        # rows: the same layout as the capture triggers write, whatever the path.
        if first.operation not in ("INSERT", "DELETE"):
            records.append(_json(first.record))
            olds.append(_json(first.old_record))
            batches.append(False)
        else:
            records.append(None if first.operation == "DELETE" else _json([c.record for c in run]))
            olds.append(None if first.operation == "INSERT" else _json([c.old_record for c in run]))
            batches.append(True)
        run.clear()

    for change in changes:
        if run and not (
            change.operation != "BROADCAST"
            and change.operation in ("INSERT", "DELETE")
            and run[0].operation == change.operation
            and run[0].table == change.table
            and run[0].schema == change.schema
            and run[0].committed_at == change.committed_at
            and run[0].xid == change.xid
            and len(run) < MAX_CHANGES_PER_ROW
        ):
            close_run()
        run.append(change)
    close_run()
    return (
        *(seqs, ops, schemas, tables, records, olds, channels, events, counts, batches, times),
        refs,
        xids,
    )


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def _poll(connection: Any) -> None:
    """Drive an asynchronous psycopg2 connection until its operation completes."""
    import psycopg2.extensions as ext

    loop = asyncio.get_running_loop()
    fd = connection.fileno()
    deadline = time.monotonic() + 15
    while True:
        state = connection.poll()
        if state == ext.POLL_OK:
            return
        if time.monotonic() > deadline:
            raise TimeoutError("replication connection timed out")
        waiter: asyncio.Future[None] = loop.create_future()

        def ready(waiter: asyncio.Future[None] = waiter) -> None:
            if not waiter.done():
                waiter.set_result(None)

        if state == ext.POLL_READ:
            loop.add_reader(fd, ready)
            try:
                await asyncio.wait_for(waiter, 15)
            finally:
                loop.remove_reader(fd)
        elif state == ext.POLL_WRITE:
            loop.add_writer(fd, ready)
            try:
                await asyncio.wait_for(waiter, 15)
            finally:
                loop.remove_writer(fd)
