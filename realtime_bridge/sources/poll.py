"""The poll source: changes found by reading the tables themselves.

For a database where the capture triggers cannot be installed (a
``DATABASE_URL`` without trigger privileges), every `interval` seconds this
source reads each table in one read-only REPEATABLE READ transaction and
turns what differs from what it saw before into `Change` records, numbered
from `start_after` in the order it finds them, for the same `deliver`
callback as the outbox source.

How a table is read, by the columns it has:

* a *cursor column* (``updated_at``, else ``created_at``, a timestamp every
  write sets): rows whose cursor is at or after the highest cursor seen
  minus `lookback` seconds, in (cursor, id) order, page by page. ``now()``
  is the writer's *transaction start*, so a transaction that commits late
  carries an old timestamp; re-reading the last `lookback` seconds catches
  it as long as no write transaction lasts longer than that. Rows re-read
  unchanged are recognised and skipped, so nothing is delivered twice.
* no cursor column: ids above the highest seen, page by page, plus the
  newest `lookback_rows` ids again each pass (an id is taken at insert time,
  so a late commit can land below the highest id seen).

INSERT or UPDATE: a row whose id was never seen and is above the highest id
of the first pass is an INSERT; a changed row is an UPDATE carrying the old
row when it is still remembered (the newest `remember` rows per table are).
DELETE: each pass looks up the ids of the newest `delete_window` remembered
rows; one that is gone is a DELETE with its last known row.

Limits (why this is a fallback, not a peer of the outbox): a row inserted
and deleted between two passes, or updated twice, is seen once or not at
all; updates that do not move the cursor column are only noticed inside the
lookback window; deletions are noticed only among the remembered rows;
changes of different tables come in table order within a pass, not commit
order; seqs are this process's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from realtime_bridge.change import Change, Operation, Row
from realtime_bridge.errors import ConfigurationError
from realtime_bridge.sources.base import (
    Deliver,
    ModeStatus,
    SourceState,
    SourceStatus,
)
from realtime_bridge.sources.outbox import init_connection

logger = logging.getLogger(__name__)

CURSOR_COLUMNS = ("updated_at", "created_at")
TIMESTAMP_TYPES = ("timestamp with time zone", "timestamp without time zone")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class PolledTable:
    """How one table is read: its id column and, if it has one, its cursor column."""

    schema: str
    table: str
    id_column: str = "id"
    cursor_column: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def sql_name(self) -> str:
        return f"{_ident(self.schema)}.{_ident(self.table)}"


async def describe_tables(
    conn: asyncpg.Connection, tables: Iterable[str], *, id_column: str = "id"
) -> list[PolledTable]:
    """Find each table's cursor column; a missing table or id column is a configuration error."""
    found = []
    for name in tables:
        schema, _, table = name.rpartition(".")
        schema = schema or "public"
        rows = await conn.fetch(
            """
            SELECT a.attname::text AS name, format_type(a.atttypid, a.atttypmod) AS type
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
            JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped
            """,
            schema,
            table,
        )
        if not rows:
            raise ConfigurationError(f"cannot poll {schema}.{table}: no such table (or no access)")
        types = {r["name"]: r["type"] for r in rows}
        if id_column not in types:
            raise ConfigurationError(f"cannot poll {schema}.{table}: it has no {id_column} column")
        cursor = next((c for c in CURSOR_COLUMNS if types.get(c) in TIMESTAMP_TYPES), None)
        found.append(PolledTable(schema, table, id_column, cursor))
    return found


@dataclass
class _TableState:
    """What one table looked like: the newest rows by id, and how far it was read."""

    rows: OrderedDict[Any, Row] = field(default_factory=OrderedDict)
    max_cursor: Any = None
    max_id: Any = None
    baseline_id: Any = None

    def remember(self, key: Any, row: Row, limit: int) -> None:
        self.rows[key] = row
        self.rows.move_to_end(key)
        while len(self.rows) > limit:
            self.rows.popitem(last=False)

    def apply(self, read: _TablePass, limit: int) -> None:
        for key, row, cursor in read.seen:
            self.remember(key, row, limit)
            if self.max_id is None or _above(key, self.max_id):
                self.max_id = key
            if cursor is not None and (self.max_cursor is None or cursor > self.max_cursor):
                self.max_cursor = cursor
        for key in read.gone:
            self.rows.pop(key, None)
        if read.baseline:
            self.baseline_id = self.max_id


@dataclass
class PollStats:
    passes: int = 0
    rows_read: int = 0
    changes: int = 0
    last_pass_ms: float | None = None


class PollSource:
    """Reads `tables` every `interval` seconds and delivers what changed, numbered."""

    name = "poll"
    durable = False

    def __init__(
        self,
        dsn: str,
        tables: Sequence[str],
        deliver: Deliver,
        *,
        start_after: int = 0,
        interval: float = 5.0,
        lookback: float = 30.0,
        lookback_rows: int = 1000,
        page: int = 1000,
        remember: int = 100_000,
        delete_window: int = 1000,
        id_column: str = "id",
        reason: str = "polling the tables",
        detail: str | None = None,
        connect: Callable[[str], Awaitable[asyncpg.Connection]] | None = None,
    ) -> None:
        self.dsn = dsn
        self.table_names = list(tables)
        self.deliver = deliver
        self.interval = interval
        self.lookback = timedelta(seconds=lookback)
        self.lookback_rows = lookback_rows
        self.page = page
        self.remember = remember
        self.delete_window = min(delete_window, remember)
        self.id_column = id_column
        self.status = SourceStatus(last_seq=start_after, role="poller")
        self.mode = ModeStatus("polling", reason, detail=detail)
        self.stats = PollStats()
        self.tables: list[PolledTable] = []
        self._state: dict[str, _TableState] = {}
        self._baselined = False
        self._connect = connect or self._default_connect
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def _default_connect(self, dsn: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(dsn, timeout=10)
        await init_connection(conn)
        return conn

    # lifecycle -----------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="poll-source")
        return self._task

    async def wait_connected(self, timeout: float) -> bool:
        """Wait until a pass has succeeded (True) or `timeout` passes (False)."""
        return await self.status.wait_connected(timeout)

    @property
    def healthy(self) -> bool:
        """The last pass succeeded."""
        return self.status.state is SourceState.CONNECTED

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()
        self.status.set(SourceState.STOPPED)

    async def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            try:
                await self.poll()
                backoff = self.interval
                await asyncio.sleep(self.interval)
            except asyncio.CancelledError:
                raise
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                ConnectionError,
                TimeoutError,
            ) as exc:
                message = f"{type(exc).__name__}: {exc}"
                if self.status.state is not SourceState.RECONNECTING:
                    logger.warning("poll source lost its database (%s); retrying", message)
                self.status.set(SourceState.RECONNECTING, message)
                self.status.reconnects += 1
                await self._close()
                await asyncio.sleep(min(backoff, 5.0))
                backoff = min(backoff * 2, 30.0)

    # one pass ------------------------------------------------------------

    async def poll(self) -> list[Change]:
        """Read every table once; deliver and return what changed (nothing on the first pass)."""
        if self._conn is None or self._conn.is_closed():
            if self._conn is not None:
                logger.warning("poll source lost its database connection; reconnecting")
                self.status.reconnects += 1
            self._conn = await self._connect(self.dsn)
            if not self.tables:
                self.tables = await describe_tables(
                    self._conn, self.table_names, id_column=self.id_column
                )
                self._state = {t.qualified: _TableState() for t in self.tables}
        started = time.perf_counter()
        conn = self._conn
        passes: list[_TablePass] = []
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            now: datetime = await conn.fetchval("SELECT now()")
            for table in self.tables:
                passes.append(await self._read(conn, table))
        # What was read is remembered only once every table was read, so a
        # pass that fails half-way is simply read again, nothing skipped.
        for table_pass in passes:
            self._state[table_pass.table.qualified].apply(table_pass, self.remember)
        first = not self._baselined
        self._baselined = True
        self.stats.passes += 1
        self.stats.last_pass_ms = (time.perf_counter() - started) * 1000
        self.status.set(SourceState.CONNECTED)
        if first:
            logger.info(
                "poll source connected: %d table(s) every %.1f s", len(self.tables), self.interval
            )
            return []
        changes = []
        for item in (found for table_pass in passes for found in table_pass.found):
            self.status.last_seq += 1
            changes.append(
                Change(
                    seq=self.status.last_seq,
                    operation=item.operation,
                    schema=item.table.schema,
                    table=item.table.table,
                    record=item.record,
                    old_record=item.old,
                    committed_at=_aware(item.moment) if item.moment is not None else now,
                )
            )
        if changes:
            self.stats.changes += len(changes)
            self.status.last_lag_ms = (
                datetime.now(UTC) - changes[-1].committed_at
            ).total_seconds() * 1000
            self.deliver(changes)
        return changes

    async def _read(self, conn: asyncpg.Connection, table: PolledTable) -> _TablePass:
        """What changed in `table` against what was remembered (the state is not touched)."""
        state = self._state[table.qualified]
        result = _TablePass(table)
        for row, cursor, key in await self._changed_rows(conn, table, state):
            result.seen.append((key, row, cursor))
            known = state.rows.get(key)
            if known == row:
                continue
            if known is not None:
                result.found.append(_Found("UPDATE", table, row, known, cursor))
            elif state.baseline_id is None or _above(key, state.baseline_id):
                result.found.append(_Found("INSERT", table, row, None, cursor))
            else:
                result.found.append(_Found("UPDATE", table, row, None, cursor))
        if not self._baselined:
            result.found.clear()
            result.seen[:0] = await self._newest(conn, table)
            result.baseline = True
            return result
        seen = {key for key, _, _ in result.seen}
        for key, old in await self._deleted(conn, table, state, seen):
            result.gone.append(key)
            result.found.append(_Found("DELETE", table, None, old, None))
        return result

    async def _changed_rows(
        self, conn: asyncpg.Connection, table: PolledTable, state: _TableState
    ) -> list[tuple[Row, Any, Any]]:
        """(row, cursor, id) of every row that may have changed since the last pass, in order."""
        id_col = _ident(table.id_column)
        if table.cursor_column is not None:
            return await self._by_cursor(conn, table, state, id_col, _ident(table.cursor_column))
        select = f"SELECT to_jsonb(t) AS row, NULL AS c, t.{id_col} AS i FROM {table.sql_name} t"
        rows: list[tuple[Row, Any, Any]] = []
        if state.max_id is not None:
            # An id is taken at insert time: a late commit can land below the
            # highest id seen, so the newest `lookback_rows` below it are read again.
            late = await conn.fetch(
                f"SELECT * FROM ({select} WHERE t.{id_col} <= $1 "
                f"ORDER BY t.{id_col} DESC LIMIT $2) AS newest ORDER BY i",
                state.max_id,
                self.lookback_rows,
            )
            rows.extend((r["row"], None, r["i"]) for r in late)
            after = state.max_id
            while True:
                page = await conn.fetch(
                    f"{select} WHERE t.{id_col} > $1 ORDER BY t.{id_col} LIMIT $2",
                    after,
                    self.page,
                )
                rows.extend((r["row"], None, r["i"]) for r in page)
                if len(page) < self.page:
                    break
                after = page[-1]["i"]
        elif not self._baselined:
            newest = await conn.fetch(
                f"SELECT * FROM ({select} ORDER BY t.{id_col} DESC LIMIT $1) AS newest ORDER BY i",
                self.lookback_rows,
            )
            rows.extend((r["row"], None, r["i"]) for r in newest)
        else:
            # Empty at the first pass: everything there is now is new.
            page = await conn.fetch(f"{select} ORDER BY t.{id_col} LIMIT $1", self.page)
            rows.extend((r["row"], None, r["i"]) for r in page)
            while len(page) == self.page:
                page = await conn.fetch(
                    f"{select} WHERE t.{id_col} > $1 ORDER BY t.{id_col} LIMIT $2",
                    page[-1]["i"],
                    self.page,
                )
                rows.extend((r["row"], None, r["i"]) for r in page)
        self.stats.rows_read += len(rows)
        return rows

    async def _by_cursor(
        self,
        conn: asyncpg.Connection,
        table: PolledTable,
        state: _TableState,
        id_col: str,
        cursor_col: str,
    ) -> list[tuple[Row, Any, Any]]:
        select = (
            f"SELECT to_jsonb(t) AS row, t.{cursor_col} AS c, t.{id_col} AS i "
            f"FROM {table.sql_name} t"
        )
        top = state.max_cursor
        if top is None and not self._baselined:
            # First pass: only the lookback window before the newest row, which
            # later passes then recognise instead of delivering it again.
            top = await conn.fetchval(f"SELECT max({cursor_col}) FROM {table.sql_name}")
            if top is None:
                return []
        if top is None:
            # Empty at the first pass: everything there is now is new.
            page = await conn.fetch(
                f"{select} WHERE t.{cursor_col} IS NOT NULL "
                f"ORDER BY t.{cursor_col}, t.{id_col} LIMIT $1",
                self.page,
            )
        else:
            # `now()` is the writer's transaction start: a transaction that
            # commits late carries an old timestamp, so the last `lookback`
            # is read again.
            page = await conn.fetch(
                f"{select} WHERE t.{cursor_col} >= $1 ORDER BY t.{cursor_col}, t.{id_col} LIMIT $2",
                top - self.lookback,
                self.page,
            )
        rows = [(r["row"], r["c"], r["i"]) for r in page]
        while len(page) == self.page:
            page = await conn.fetch(
                f"{select} WHERE (t.{cursor_col}, t.{id_col}) > ($1, $2) "
                f"ORDER BY t.{cursor_col}, t.{id_col} LIMIT $3",
                page[-1]["c"],
                page[-1]["i"],
                self.page,
            )
            rows.extend((r["row"], r["c"], r["i"]) for r in page)
        self.stats.rows_read += len(rows)
        return rows

    async def _newest(
        self, conn: asyncpg.Connection, table: PolledTable
    ) -> list[tuple[Any, Row, Any]]:
        """First pass: the newest rows by id, remembered so that their deletion is noticed."""
        id_col = _ident(table.id_column)
        newest = await conn.fetch(
            f"SELECT to_jsonb(t) AS row, t.{id_col} AS i FROM {table.sql_name} t "
            f"ORDER BY t.{id_col} DESC LIMIT $1",
            self.delete_window,
        )
        return [(r["i"], r["row"], None) for r in reversed(newest)]

    async def _deleted(
        self, conn: asyncpg.Connection, table: PolledTable, state: _TableState, seen: set[Any]
    ) -> list[tuple[Any, Row]]:
        """The last known rows of remembered ids (the newest `delete_window`) that are gone."""
        candidates = [k for k in reversed(state.rows) if k not in seen][: self.delete_window]
        if not candidates:
            return []
        id_col = _ident(table.id_column)
        present = await conn.fetch(
            f"SELECT t.{id_col} AS i FROM {table.sql_name} t WHERE t.{id_col} = ANY($1)",
            candidates,
        )
        kept = {r["i"] for r in present}
        gone = sorted((k for k in candidates if k not in kept), key=_sort_key)
        return [(k, state.rows[k]) for k in gone]


@dataclass
class _TablePass:
    """One table's part of a pass: what to deliver, and what to remember afterwards."""

    table: PolledTable
    found: list[_Found] = field(default_factory=list)
    seen: list[tuple[Any, Row, Any]] = field(default_factory=list)  # (id, row, cursor)
    gone: list[Any] = field(default_factory=list)
    baseline: bool = False


@dataclass(frozen=True, slots=True)
class _Found:
    operation: Operation
    table: PolledTable
    record: Row | None
    old: Row | None
    moment: datetime | None


def _above(key: Any, than: Any) -> bool:
    try:
        return bool(key > than)
    except TypeError:
        return False


def _sort_key(key: Any) -> tuple[str, Any]:
    return (type(key).__name__, key)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
