"""Snapshots: a channel's current rows, and the seq to follow them live from.

A client that starts (or is told `resync_required`) loads the snapshot and
then subscribes with ``since=<its seq>``: every change numbered up to that
seq is in the rows, and every later one arrives on the subscription. Some
changes after the seq may already be in the rows too (they had committed
but were not numbered yet when the snapshot was read). The first page also
carries `snapshot_token`, the Postgres snapshot its rows were read in: given
back with `since`, the subscription skips exactly those changes
(`pgsnapshot`), so each change is in the rows or arrives as an event, once.
Without the token, each event carries the whole new row and a row's events
keep their order, so applying them as "this row is now `data`" (DELETE:
"this row is gone") ends in the same state.

The rows are the plugin's typed payloads (or the raw rows of a table
channel), with the same row scope and filter as a subscription, in id order:
from the database in one REPEATABLE READ transaction per page, or through
PostgREST in hosted Supabase mode. Pages after the first carry a cursor;
follow them all from the *first* page's seq.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

from realtime_bridge.change import Change, Row
from realtime_bridge.errors import BadMessage, PublishError
from realtime_bridge.pgtypes import UNKNOWN, ColumnType
from realtime_bridge.sources.supabase import PostgrestReader, Query, SupabaseSource

if TYPE_CHECKING:
    from realtime_bridge.bridge import Bridge
    from realtime_bridge.protocols.common import Target

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
# Rows read per page at most, whatever the filter keeps (the rest is the next page).
MAX_SCANNED = 50_000


class SnapshotUnavailable(PublishError):
    """This bridge has nothing to read a snapshot from (it has not started)."""


@dataclass(frozen=True)
class Snapshot:
    channel: str
    seq: int
    records: list[Row]
    next_cursor: str | None
    # The first page's Postgres snapshot (`pgsnapshot`); None without the log.
    token: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "seq": self.seq,
            "snapshot_token": self.token,
            "records": self.records,
            "next_cursor": self.next_cursor,
        }


@dataclass(frozen=True)
class _Cursor:
    """Where a page stopped: the table (by position) and the last id read in it."""

    table: int
    after: Any

    def encode(self) -> str:
        raw = orjson.dumps([self.table, self.after])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> _Cursor:
        try:
            value = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            raise BadMessage("cursor is not one this bridge gave out") from None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], int)
            or isinstance(value[0], bool)
            or value[0] < 0
        ):
            raise BadMessage("cursor is not one this bridge gave out")
        return cls(value[0], value[1])


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_name(table: str) -> str:
    schema, _, name = table.rpartition(".")
    return f"{_ident(schema or 'public')}.{_ident(name)}"


PageReader = Callable[[str, "Target", Any, int], Awaitable[list[tuple[Row, Any]]]]


async def take_snapshot(
    bridge: Bridge, target: Target, *, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Snapshot:
    """Up to `limit` current rows of `target` (scope and filter applied), and their seq."""
    plugin = bridge.registry.by_channel.get(target.channel)
    if plugin is None and bridge.registry.room_for(target.channel) is not None:
        raise BadMessage(
            f"{target.channel} is a room: its events are not rows of a table, so it has no "
            "snapshot (read the rows on their own channel, e.g. challenge-updates)"
        )
    tables = sorted(plugin.tables) if plugin is not None else [target.channel]
    start = _Cursor.decode(cursor) if cursor else _Cursor(0, None)
    if start.table >= len(tables):
        raise BadMessage("cursor is not one this bridge gave out")
    for table in tables[start.table :]:
        if "id" not in bridge.tables.get(table, set()):
            raise BadMessage(f"{table} has no id column to page a snapshot by")
    # Without the outbox, the hub's head: every change routed so far was read
    # before the reads below start, so it is in what they find.
    seq = bridge.hub.head
    if isinstance(bridge.source, SupabaseSource):
        if target.viewer is not None:
            # PostgREST is read with the service key here: it would show every row.
            raise SnapshotUnavailable(
                "a snapshot of a row-secured table needs the database (DATABASE_URL)"
            )
        rest = bridge.source.rest

        async def read_rest(table: str, target: Target, after: Any, limit: int) -> list[Any]:
            rows = await rest.get(_rest_query(rest, table, target, after, limit))
            return [(row, row.get("id")) for row in rows]

        return await _pages(bridge, target, tables, start, limit, seq, read_rest)
    if bridge.pool is None:
        raise SnapshotUnavailable("the bridge has no database to read a snapshot from yet")
    try:
        return await _sql_snapshot(bridge, target, tables, start, limit, seq)
    except (asyncpg.DataError, asyncpg.InsufficientPrivilegeError):
        if target.viewer is None:
            raise
        # A policy that raises for this user (a sub that is no uuid reaching
        # auth.uid()), or a role without SELECT: they see no row, as for changes.
        return Snapshot(target.channel, seq, [], None)


async def _sql_snapshot(
    bridge: Bridge, target: Target, tables: list[str], start: _Cursor, limit: int, seq: int
) -> Snapshot:
    assert bridge.pool is not None
    durable = bridge.source is not None and bridge.source.durable
    first_page = start.table == 0 and start.after is None
    token: str | None = None
    if durable and first_page:
        # The WAL leader hands changes on a moment before it logs them: once the
        # log holds what the hub has routed, the first page's seq (the one a client
        # follows from) is the head. Later pages do not wait: paging must outrun writers.
        await bridge.wait_logged(bridge.hub.head)
    owner_type = _owner_type(bridge, target)
    async with (
        bridge.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        if durable:
            # The first statement fixes the transaction's snapshot: every seq
            # up to this one was given to a row committed before it (the WAL
            # leader logs a change only once its writer is visible to new
            # snapshots), and the snapshot itself names every other one it saw.
            row = await conn.fetchrow(
                "SELECT last_seq, pg_current_snapshot()::text AS snapshot"
                " FROM realtime_bridge.sequencer"
            )
            seq = int(row["last_seq"])
            token = row["snapshot"] if first_page else None
        if target.viewer is not None:
            # Row security: the rows are read as the subscriber, so the table's
            # own policies decide, exactly as for its changes.
            await conn.execute(
                """
                SELECT set_config('role', $1, true),
                       set_config('request.jwt.claims', $2, true),
                       set_config('request.jwt.claim.sub',
                                  coalesce($2::text::jsonb ->> 'sub', ''), true),
                       set_config('request.jwt.claim.role', $1, true)
                """,
                target.viewer.role,
                target.viewer.claims,
            )

        async def read_sql(table: str, target: Target, after: Any, limit: int) -> list[Any]:
            rows = await conn.fetch(*_page_query(table, target, after, limit, owner_type))
            return [(row["row"], row["i"]) for row in rows]

        snapshot = await _pages(bridge, target, tables, start, limit, seq, read_sql)
    if durable and seq > bridge.hub.head:
        # Followers (and a sequencer that has not routed its last pass yet)
        # serve `since=seq` best once the hub has reached it.
        await bridge.hub.wait_for_head(seq, timeout=5)
    return dataclasses.replace(snapshot, token=token)


async def _pages(
    bridge: Bridge,
    target: Target,
    tables: list[str],
    start: _Cursor,
    limit: int,
    seq: int,
    read: PageReader,
) -> Snapshot:
    """Read from `start` until `limit` records are kept, the tables end, or enough was read."""
    records: list[Row] = []
    scanned = 0
    now = datetime.now(UTC)
    position = start
    while position.table < len(tables) and len(records) < limit and scanned < MAX_SCANNED:
        table = tables[position.table]
        schema, _, name = table.rpartition(".")
        rows = await read(table, target, position.after, limit)
        scanned += len(rows)
        for row, key in rows:
            position = _Cursor(position.table, key)
            record = _record(bridge, target, schema or "public", name, row, now)
            if record is not None:
                records.append(record)
                if len(records) >= limit:
                    break
        else:
            if len(rows) < limit:
                position = _Cursor(position.table + 1, None)  # this table is done
    more = position.table < len(tables)
    return Snapshot(target.channel, seq, records, position.encode() if more else None)


def _rest_query(rest: PostgrestReader, table: str, target: Target, after: Any, limit: int) -> Query:
    """PostgREST's read of `table`'s next rows by id, in the target's row scope."""
    schema, _, name = table.rpartition(".")
    query = rest.select(name, schema=schema or "public")
    if target.owner is not None and target.owner_column is not None:
        query = query.eq(target.owner_column, target.owner)
    if after is not None:
        query = query.gt("id", after)
    return query.order("id").limit(limit)


# Owner column types compared in SQL as themselves (the rest as text, like `pgtypes`).
_SQL_TYPED = frozenset(
    {"int2", "int4", "int8", "numeric", "float4", "float8", "bool", "uuid"}
    | {"timestamptz", "timestamp", "date"}
)


def _page_query(
    table: str, target: Target, after: Any, limit: int, owner_type: ColumnType = UNKNOWN
) -> list[Any]:
    """The statement and arguments reading `table`'s next rows by id, in the target's scope.

    The owner is compared in the column's type, as the hub compares it: an
    integer column as an integer, a uuid as a uuid, text exactly.
    """
    where = ["true"]
    args: list[Any] = []
    if target.owner is not None and target.owner_column is not None:
        column = f"t.{_ident(target.owner_column)}"
        key = owner_type.key(target.owner)
        if key is None:
            where.append("false")  # not a value of the column's type: nobody's rows
        elif owner_type.name in _SQL_TYPED:
            args.append(owner_type.literal(key))
            where.append(f"{column} = ${len(args)}::text::pg_catalog.{owner_type.name}")
        else:
            args.append(target.owner)
            where.append(f"{column}::text = ${len(args)}")
    if after is not None:
        args.append(after)
        where.append(f"t.id > ${len(args)}")
    args.append(limit)
    sql = (
        f"SELECT to_jsonb(t) AS row, t.id AS i FROM {_sql_name(table)} t "
        f"WHERE {' AND '.join(where)} ORDER BY t.id LIMIT ${len(args)}"
    )
    return [sql, *args]


def _owner_type(bridge: Bridge, target: Target) -> ColumnType:
    channel = bridge.hub.channels.get(target.channel)
    if channel is None or target.owner_column is None:
        return UNKNOWN
    return channel.type_of(target.owner_column)


def _record(
    bridge: Bridge, target: Target, schema: str, table: str, row: Row, now: datetime
) -> Row | None:
    """The row as the channel's payload, if the target's scope and filter keep it."""
    change = Change(0, "INSERT", schema, table, row, None, now)
    event = bridge.registry.event_for(change, target.channel)
    if event is None or event.view is None:
        return None
    if target.owner is not None:
        kind = _owner_type(bridge, target)
        key = kind.key(target.owner)
        if key is None or kind.key(event.view.get(target.owner_column or "")) != key:
            return None
    if not target.filter.matches(event.view):
        return None
    return event.data
