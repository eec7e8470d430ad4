"""Hosted Supabase mode: Realtime `postgres_changes`, with PostgREST polling as fallback.

Used only with SUPABASE_URL + SUPABASE_SERVICE_KEY and no DATABASE_URL (see
`Bridge.start`). There is no outbox here: seqs are assigned by this process
in arrival order, starting after 0, so a client's `since` resume spans this
process's lifetime and the hub's in-memory window only (beyond it clients are
told to resync).

* **realtime** mode: one channel per plugin table, `postgres_changes` for
  every event, mapped to `Change` records.
* **polling** mode: when Realtime has been down for longer than `grace`
  seconds, every table is read through PostgREST each `poll_interval`
  seconds with an `updated_at` (else `created_at`, else id) cursor.
* On every (re)subscription, before reporting `realtime`, one PostgREST pass
  fills the gap of the outage.

Duplicates at the switches are dropped by remembering, per (table, id), the
cursor value and row last delivered: a version that is not newer (same
cursor and same row, or an older cursor) is not delivered again. Deletions
under polling are found by comparing the ids of the newest `delete_window`
rows with the remembered ones: a row deleted outside that window, or never
seen by this process, is not reported while polling (Realtime reports every
deletion).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
from postgrest import APIError, AsyncPostgrestClient, AsyncSelectRequestBuilder
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent

from realtime_bridge.change import Change, Operation, Row
from realtime_bridge.errors import PostgrestError
from realtime_bridge.sources.base import (
    Deliver,
    Mode,
    ModeStatus,
    SourceState,
    SourceStatus,
    wait_for,
)

logger = logging.getLogger(__name__)

CURSOR_CANDIDATES = ("updated_at", "created_at")

Query = AsyncSelectRequestBuilder


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _above(key: Any, than: Any) -> bool:
    try:
        return bool(key > than)
    except TypeError:
        return False


# PostgREST's answer to selecting a column the table lacks (SQLSTATE undefined_column);
# a body that is not PostgREST's JSON leaves the HTTP status as the code instead.
_NO_SUCH_COLUMN = ("42703", "400")


class PostgrestReader:
    """The few PostgREST reads polling and snapshots need, with the service key.

    Queries are built with the maintained `postgrest` client (select, filters,
    order, range/limit; ``apikey`` and ``Authorization`` sent with each request).
    Where it is not used as it comes:

    * its retries (1, 2, 4 s sleeps on a 503) are off: a failed poll pass is
      retried on the poll interval anyway, and a snapshot should answer 503 now;
    * it is given our own httpx client: its default one asks for HTTP/2 and
      takes its timeout through a deprecated argument;
    * its `APIError` keeps PostgREST's error body but not the HTTP status, so a
      missing column is told by PostgREST's code, and errors become `PostgrestError`.
    """

    def __init__(
        self, url: str, key: str, *, client: httpx.AsyncClient | None = None, timeout: float = 10
    ) -> None:
        self.base = f"{url.rstrip('/')}/rest/v1"
        self.client = client or httpx.AsyncClient(timeout=timeout)
        self._own_client = client is None
        self._postgrest = AsyncPostgrestClient(
            self.base,
            headers={"Accept": "application/json", "apikey": key},
            http_client=self.client,
            retry_enabled=False,
        ).auth(key)
        self._schemas = {"public": self._postgrest}

    async def close(self) -> None:
        if self._own_client:
            await self.client.aclose()

    def select(self, table: str, *columns: str, schema: str = "public") -> Query:
        """A read of `table` (in `schema`, sent as PostgREST's Accept-Profile) to refine."""
        client = self._schemas.get(schema)
        if client is None:
            client = self._schemas[schema] = self._postgrest.schema(schema)
        return client.from_(table).select(*columns or ("*",))

    async def get(self, query: Query) -> list[Row]:
        """The rows `query` reads; PostgREST's refusals raise `PostgrestError`."""
        table = str(query.request.path).rpartition("/")[2]
        try:
            response = await query.execute()
        except APIError as exc:
            raise PostgrestError(table, exc.code, exc.message) from exc
        rows = response.data
        if not isinstance(rows, list):
            raise ValueError(f"PostgREST returned {type(rows).__name__} for {table}")
        return cast(list[Row], rows)

    async def has_column(self, table: str, column: str, *, schema: str = "public") -> bool:
        try:
            await self.get(self.select(table, column, schema=schema).limit(1))
        except PostgrestError as exc:
            if exc.code in _NO_SUCH_COLUMN:
                return False
            raise
        return True


@dataclass
class _Table:
    schema: str
    name: str
    cursor: str | None = None
    described: bool = False
    max_cursor: datetime | None = None
    max_id: Any = None
    rows: OrderedDict[Any, tuple[Row, datetime | None]] = field(default_factory=OrderedDict)
    deleted: OrderedDict[Any, None] = field(default_factory=OrderedDict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def select(self, rest: PostgrestReader, *columns: str) -> Query:
        # PostgREST serves a table by name, its schema named by the Accept-Profile header.
        return rest.select(self.name, *columns, schema=self.schema)


class SupabaseSource:
    """Hosted Supabase Realtime, falling back to PostgREST polling while it is down."""

    name = "supabase"
    durable = False

    def __init__(
        self,
        url: str,
        key: str,
        tables: list[str],
        deliver: Deliver,
        *,
        grace: float = 10.0,
        poll_interval: float = 5.0,
        lookback: float = 5.0,
        page: int = 1000,
        delete_window: int = 1000,
        remember: int = 100_000,
        subscribe_timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.deliver = deliver
        self.grace = grace
        self.poll_interval = poll_interval
        self.lookback = timedelta(seconds=lookback)
        self.page = page
        self.delete_window = delete_window
        self.remember = remember
        self.subscribe_timeout = subscribe_timeout
        self.rest = PostgrestReader(self.url, key, client=http)
        self.status = SourceStatus(role="supabase")
        self.mode = ModeStatus()
        self.tables: dict[str, _Table] = {}
        for name in tables:
            schema, _, table = name.rpartition(".")
            item = _Table(schema or "public", table)
            self.tables[item.qualified] = item
        self._down_since: float | None = time.monotonic()
        self._realtime_up = False
        self._last_poll_ok = False
        self._baselined = False
        self._lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: AsyncRealtimeClient | None = None

    # lifecycle -------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._tasks = [
            asyncio.create_task(self._fallback(), name="supabase-fallback"),
            asyncio.create_task(self._realtime(), name="supabase-realtime"),
        ]
        return self._tasks[1]

    async def wait_connected(self, timeout: float) -> bool:
        return await wait_for(self._connected, timeout)

    @property
    def healthy(self) -> bool:
        """Realtime is up, or polling and its last pass succeeded."""
        if self._realtime_up:
            return True
        return self.mode.mode == "polling" and self._last_poll_ok

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_client()
        await self.rest.close()
        self.status.state = SourceState.STOPPED

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _set_mode(self, mode: Mode, reason: str, detail: str | None = None) -> None:
        self.mode.switch(mode, reason, detail)

    # realtime --------------------------------------------------------------

    async def _realtime(self) -> None:
        backoff = 0.2
        while True:
            try:
                await self._connect_and_follow()
            except asyncio.CancelledError:
                await self._close_client()
                raise
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                if self._realtime_up:
                    logger.warning("Supabase Realtime lost (%s); reconnecting", message)
                    self._down_since = time.monotonic()
                self._realtime_up = False
                self.status.state = SourceState.RECONNECTING
                self.status.since = time.time()
                self.status.last_error = message
                self.status.reconnects += 1
                await self._close_client()
                await asyncio.sleep(backoff)
                # Retried at least as often as the grace period (and every 5 s at most).
                backoff = min(backoff * 2, max(0.5, min(5.0, self.grace)))
            else:
                backoff = 0.2

    async def _connect_and_follow(self) -> None:
        if not self._baselined:
            # Remember where the tables are before subscribing; the pass
            # after subscribing then delivers whatever changed in between.
            async with self._lock:
                await self._pass()
        client = AsyncRealtimeClient(
            f"{self.url}/realtime/v1", self.key, auto_reconnect=False, max_retries=1
        )
        self._client = client
        await asyncio.wait_for(client.connect(), self.subscribe_timeout)
        failed: list[str] = []
        joined = 0
        everyone = asyncio.Event()
        lost = asyncio.Event()
        for table in self.tables.values():

            def on_state(
                state: RealtimeSubscribeStates, error: Exception | None, name: str = table.qualified
            ) -> None:
                nonlocal joined
                if state is RealtimeSubscribeStates.SUBSCRIBED:
                    joined += 1
                    if joined >= len(self.tables):
                        everyone.set()
                else:
                    failed.append(f"{name}: {state.value} {error or ''}".strip())
                    everyone.set()
                    lost.set()

            channel = client.channel(f"realtime-bridge:{table.qualified}")
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                table=table.name,
                schema=table.schema,
                callback=lambda payload: self._on_message(payload),
            )
            await channel.subscribe(on_state)
        await asyncio.wait_for(everyone.wait(), self.subscribe_timeout)
        if failed:
            raise ConnectionError(f"could not subscribe: {'; '.join(failed)}")
        # Subscribed first, then read the gap: whatever commits from now on
        # arrives by Realtime, whatever committed before is read here.
        async with self._lock:
            await self._pass()
        self._realtime_up = True
        self._down_since = None
        self.status.state = SourceState.CONNECTED
        self.status.since = time.time()
        self._set_mode("realtime", "subscribed to Supabase Realtime")
        self._connected.set()
        while client.is_connected and not failed:
            # A dropped socket errors every channel (the client then sets `failed`).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), 0.1)
        raise ConnectionError(failed[0] if failed else "Realtime connection closed")

    def _on_message(self, payload: Any) -> None:
        data = payload.get("data", payload) if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            return
        table = self.tables.get(f"{data.get('schema', 'public')}.{data.get('table')}")
        kind = data.get("type", "")
        operation = str(getattr(kind, "value", kind)).upper()  # the client parses it to an enum
        if table is None or operation not in ("INSERT", "UPDATE", "DELETE"):
            return
        moment = _parse_time(data.get("commit_timestamp")) or datetime.now(UTC)
        record = data.get("record") or None
        old = data.get("old_record") or None
        change = self._accept(table, operation, record, old, moment)  # type: ignore[arg-type]
        if change is not None:
            self._emit([change])

    # dedupe and numbering --------------------------------------------------

    def _cursor_of(self, table: _Table, row: Row) -> datetime | None:
        return _parse_time(row.get(table.cursor)) if table.cursor else None

    def _accept(
        self,
        table: _Table,
        operation: Operation,
        record: Row | None,
        old: Row | None,
        moment: datetime,
    ) -> Change | None:
        """The change to deliver for this version of a row, or None if it was delivered."""
        if operation == "DELETE":
            key = (old or {}).get("id")
            if key is not None:
                if key in table.deleted:
                    return None
                table.deleted[key] = None
                while len(table.deleted) > self.remember:
                    table.deleted.popitem(last=False)
                known = table.rows.pop(key, None)
                if known is not None and (not old or set(old) <= {"id"}):
                    old = known[0]
            return self._change(table, "DELETE", None, old, moment)
        assert record is not None
        key = record.get("id")
        cursor = self._cursor_of(table, record)
        if key is not None:
            if key in table.deleted:
                return None
            known = table.rows.get(key)
            if known is not None:
                known_row, known_cursor = known
                if known_row == record:
                    return None
                if cursor is not None and known_cursor is not None and cursor < known_cursor:
                    return None  # an older version than the one delivered
                if old is None:
                    old = known_row
                operation = "UPDATE"
            table.rows[key] = (record, cursor)
            table.rows.move_to_end(key)
            while len(table.rows) > self.remember:
                table.rows.popitem(last=False)
            if table.max_id is None or _above(key, table.max_id):
                table.max_id = key
        if cursor is not None and (table.max_cursor is None or cursor > table.max_cursor):
            table.max_cursor = cursor
        return self._change(table, operation, record, old, moment)

    def _change(
        self,
        table: _Table,
        operation: Operation,
        record: Row | None,
        old: Row | None,
        moment: datetime,
    ) -> Change:
        self.status.last_seq += 1
        return Change(
            seq=self.status.last_seq,
            operation=operation,
            schema=table.schema,
            table=table.name,
            record=record,
            old_record=old,
            committed_at=moment,
        )

    def _emit(self, changes: list[Change]) -> None:
        if not changes:
            return
        self.status.last_lag_ms = (
            datetime.now(UTC) - changes[-1].committed_at
        ).total_seconds() * 1000
        self.deliver(changes)

    # polling ---------------------------------------------------------------

    async def _fallback(self) -> None:
        """Switch to polling once Realtime is down past the grace period; poll meanwhile."""
        while True:
            down = self._down_since
            if (
                down is not None
                and self.mode.mode == "realtime"
                and time.monotonic() - down >= self.grace
            ):
                self._set_mode(
                    "polling",
                    f"Supabase Realtime down for over {self.grace:g} s",
                    self.status.last_error or "not connected",
                )
            if self.mode.mode == "polling" and not self._realtime_up:
                try:
                    async with self._lock:
                        await self._pass()
                    self._last_poll_ok = True
                    self._connected.set()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a failed pass is retried, never ends polling
                    self._last_poll_ok = False
                    logger.warning("PostgREST poll failed: %r", exc)
                    self.status.last_error = f"poll: {type(exc).__name__}: {exc}"
                await asyncio.sleep(self.poll_interval)
            else:
                await asyncio.sleep(min(0.1, self.grace / 4))

    async def _describe(self, table: _Table) -> None:
        for column in CURSOR_CANDIDATES:
            if await self.rest.has_column(table.name, column, schema=table.schema):
                table.cursor = column
                break
        newest = await self.rest.get(
            table.select(self.rest).order("id", desc=True).limit(self.delete_window)
        )
        for row in reversed(newest):
            table.rows[row.get("id")] = (row, self._cursor_of(table, row))
            if table.max_id is None or _above(row.get("id"), table.max_id):
                table.max_id = row.get("id")
        if table.cursor is not None:
            top = await self.rest.get(
                table.select(self.rest, table.cursor)
                .order(table.cursor, desc=True, nullsfirst=False)
                .limit(1)
            )
            if top:
                table.max_cursor = _parse_time(top[0].get(table.cursor))
        table.described = True

    async def _pass(self) -> None:
        """Read every table once through PostgREST and deliver what is new."""
        if not self._baselined:
            for table in self.tables.values():
                if not table.described:
                    await self._describe(table)
            self._baselined = True
            return
        now = datetime.now(UTC)
        for table in self.tables.values():
            rows = await self._changed_rows(table)
            present = await self.rest.get(
                table.select(self.rest, "id").order("id", desc=True).limit(self.delete_window)
            )
            changes: list[Change] = []
            for row in rows:
                cursor = self._cursor_of(table, row)
                key = row.get("id")
                new = key not in table.rows and (table.max_id is None or _above(key, table.max_id))
                change = self._accept(
                    table, "INSERT" if new else "UPDATE", row, None, cursor or now
                )
                if change is not None:
                    changes.append(change)
            changes.extend(self._deletions(table, present, now))
            self._emit(changes)

    def _changed_query(self, table: _Table) -> Query:
        query = table.select(self.rest)
        if table.cursor is None:
            if table.max_id is not None:
                query = query.gt("id", table.max_id)
            return query.order("id")
        if table.max_cursor is not None:
            query = query.gt(table.cursor, (table.max_cursor - self.lookback).isoformat())
        return query.order(table.cursor).order("id")

    async def _changed_rows(self, table: _Table) -> list[Row]:
        rows: list[Row] = []
        offset = 0
        while True:
            # A query builder is spent once executed: each page is built anew.
            page = await self.rest.get(
                self._changed_query(table).range(offset, offset + self.page - 1)
            )
            rows.extend(page)
            if len(page) < self.page:
                return rows
            offset += len(page)

    def _deletions(self, table: _Table, present: list[Row], now: datetime) -> list[Change]:
        ids = {row.get("id") for row in present}
        low = None
        if len(present) >= self.delete_window and present:
            low = min(
                (i for i in ids if i is not None), default=None, key=lambda i: (str(type(i)), i)
            )
        gone = [
            key for key in table.rows if key not in ids and (low is None or not _above(low, key))
        ]
        changes = []
        for key in gone:
            row, _ = table.rows[key]
            change = self._accept(table, "DELETE", None, row, now)
            if change is not None:
                changes.append(change)
        return changes

    def to_json(self) -> dict[str, Any]:
        return {**self.status.to_json(), **self.mode.to_json()}
