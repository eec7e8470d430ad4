"""What a Supabase channel reads from the hub: postgres_changes and plugin channels.

Each `postgres_changes` binding of a join becomes one hub subscription per
table it names (a `*` table means every tracked table of the schema that
the token may read), resolved and authorized by `resolve_target` like any
other subscription. Its frames carry Supabase's change shape
(``{ids, data: {schema, table, commit_timestamp, type, columns, record,
old_record, errors}}``). A topic named after a plugin channel
(``realtime:position-updates``) is also subscribed to that channel, and its
events arrive as broadcasts with the plugin's event name and typed payload.

The `data` of a change and the broadcast frames of a plugin event are
encoded once per event and shared by every receiver (`EncodeCache`).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
import orjson
from pydantic import ValidationError

from realtime_bridge.auth import Principal, Unauthorized
from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ClientError, InvalidFilter, UnknownTable
from realtime_bridge.events import Event, Frame
from realtime_bridge.hub import Renderer
from realtime_bridge.protocols.common import Target, resolve_target
from realtime_bridge.protocols.phoenix_messages import PostgresChange
from realtime_bridge.protocols.phoenix_rooms import broadcast_frames
from realtime_bridge.protocols.phoenix_wire import JSON_ENCODING, Vsn, envelope

T = TypeVar("T")

NOTHING: Frame = ()  # a rendered frame that is not sent (the binding wants another operation)


class EncodeCache:
    """Encodings of recent events, so each is made once however many receive it."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[Hashable, ...], tuple[Event, Any]] = OrderedDict()

    def get(self, event: Event, key: tuple[Hashable, ...], make: Callable[[], T]) -> T:
        full = (id(event), *key)
        hit = self._items.get(full)
        # The entry keeps its event alive, so its id cannot be reused meanwhile.
        if hit is not None and hit[0] is event:
            value: T = hit[1]
            return value
        value = make()
        self._items[full] = (event, value)
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


@dataclass(frozen=True)
class TableShape:
    """What a `postgres_changes` message shows of a table.

    `columns`: the `{name, type}` list (pg `typname`). `identity`: the columns
    its replica identity holds, which is what Supabase puts in `old_record`
    (the primary key by default, an index's columns with `USING INDEX`);
    None for `REPLICA IDENTITY FULL`, or a table with no key: the whole old row.
    """

    columns: list[dict[str, str]]
    identity: tuple[str, ...] | None


class ColumnTypes:
    """Each tracked table's `TableShape`, cached per column set."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[frozenset[str], TableShape]] = {}

    async def get(self, bridge: Bridge, table: str) -> TableShape:
        names = frozenset(bridge.tables.get(table, ()))
        cached = self._cache.get(table)
        if cached is not None and cached[0] == names:
            return cached[1]
        assert bridge.pool is not None
        schema, _, name = table.partition(".")
        relation = "format('%I.%I', $1::text, $2::text)::regclass"
        rows = await bridge.pool.fetch(
            f"""
            SELECT a.attname::text AS name, t.typname::text AS type
            FROM pg_catalog.pg_attribute a
            JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = {relation}
              AND a.attnum > 0 AND NOT a.attisdropped
            ORDER BY a.attnum
            """,
            schema,
            name,
        )
        identity = await bridge.pool.fetchrow(
            f"""
            SELECT c.relreplident::text AS kind,
                   (SELECT array_agg(a.attname::text ORDER BY k.n)
                    FROM pg_catalog.pg_index i
                    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                    JOIN pg_catalog.pg_attribute a
                      ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE i.indrelid = c.oid
                      AND CASE c.relreplident WHEN 'd' THEN i.indisprimary
                                              WHEN 'i' THEN i.indisreplident
                                              ELSE false END) AS key
            FROM pg_catalog.pg_class c WHERE c.oid = {relation}
            """,
            schema,
            name,
        )
        key = None
        if identity is not None and identity["kind"] != "f" and identity["key"]:
            key = tuple(identity["key"])
        shape = TableShape([{"name": r["name"], "type": r["type"]} for r in rows], key)
        self._cache[table] = (names, shape)
        return shape


class BindingError(Exception):
    """A binding that cannot be served; `message` is the Supabase-style system message."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class TableSource:
    """One table a binding reads: its authorized target and the columns clients see."""

    target: Target
    schema: str
    table: str
    columns: list[dict[str, str]]
    identity: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Binding:
    id: int
    spec: PostgresChange
    sources: tuple[TableSource, ...]

    @property
    def select(self) -> tuple[str, ...] | None:
        return tuple(self.spec.select) if self.spec.select else None


def binding_ids(raws: list[dict[str, Any]]) -> list[int]:
    """A stable positive integer per binding (Supabase hashes the params too); unique per join."""
    ids: list[int] = []
    for raw in raws:
        value = zlib.crc32(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)) & 0x7FFFFFF or 1
        while value in ids:
            value += 1
        ids.append(value)
    return ids


def _params(spec: PostgresChange) -> str:
    filters = f"[{spec.filter}]" if spec.filter else "[]"
    return (
        f"[event: {spec.event}, schema: {spec.schema_}, table: {spec.table or '*'}, "
        f"filters: {filters}]"
    )


def _unable(spec: PostgresChange, why: str) -> BindingError:
    return BindingError(
        "Unable to subscribe to changes with given parameters. Please check Realtime is "
        f"enabled for the given connect parameters: {_params(spec)}: {why}",
        UnknownTable.code,
    )


async def resolve_bindings(
    bridge: Bridge,
    principal: Principal,
    raws: list[dict[str, Any]],
    ids: list[int],
    columns: ColumnTypes,
) -> list[Binding]:
    """Resolve and authorize every binding of a join, or raise the first `BindingError`."""
    bindings = []
    for raw, binding_id in zip(raws, ids, strict=True):
        try:
            spec = PostgresChange.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "binding"
            raise BindingError(
                f"Error parsing `postgres_changes` params: {where}: {first.get('msg')}",
                "bad_message",
            ) from exc
        sources = await _sources(bridge, principal, spec, columns)
        bindings.append(Binding(binding_id, spec, tuple(sources)))
    return bindings


async def _sources(
    bridge: Bridge, principal: Principal, spec: PostgresChange, columns: ColumnTypes
) -> list[TableSource]:
    wildcard = spec.table in (None, "*") or spec.schema_ == "*"
    if wildcard:
        if spec.select:
            raise BindingError(
                "Error parsing `select` params: select cannot be combined with a wildcard "
                "schema or table",
                InvalidFilter.code,
            )
        await bridge.refresh_tables()
        tables = sorted(
            name
            for name in bridge.tables
            if spec.schema_ == "*" or name.partition(".")[0] == spec.schema_
        )
        if spec.table not in (None, "*"):
            tables = [t for t in tables if t.partition(".")[2] == spec.table]
    else:
        tables = [f"{spec.schema_}.{spec.table}"]
    sources = []
    for table in tables:
        try:
            target = await resolve_target(
                bridge, principal, channel=None, table=table, filter_spec=spec.filter
            )
        except UnknownTable as exc:
            raise _unable(spec, exc.message) from exc
        except InvalidFilter as exc:
            raise BindingError(f"Error parsing `filter` params: {exc.message}", exc.code) from exc
        except Unauthorized as exc:
            if wildcard:
                continue  # like row security: a table this token may not read stays silent
            raise BindingError(f"Unauthorized: {exc.message}", exc.code) from exc
        except ClientError as exc:
            raise BindingError(f"{exc.code}: {exc.message}", exc.code) from exc
        try:
            shape = await columns.get(bridge, target.channel)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise _unable(spec, f"could not read the columns of {table}: {exc}") from exc
        table_columns = shape.columns
        if spec.select:
            known = {c["name"] for c in table_columns}
            unknown = [c for c in spec.select if c not in known]
            if unknown:
                raise BindingError(
                    f"Error parsing `select` params: unknown column {unknown[0]!r} in {table}",
                    InvalidFilter.code,
                )
            table_columns = [c for c in table_columns if c["name"] in spec.select]
        schema, _, name = target.channel.partition(".")
        sources.append(TableSource(target, schema, name, table_columns, shape.identity))
    if not sources:
        raise _unable(spec, "no tracked table matches that this token may read")
    return sources


def commit_timestamp(iso: str) -> str:
    """Supabase's `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds)."""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _project(row: dict[str, Any] | None, select: tuple[str, ...] | None) -> dict[str, Any] | None:
    if row is None or select is None:
        return row
    return {k: row[k] for k in select if k in row}


def old_record(event: Event, identity: tuple[str, ...] | None) -> dict[str, Any] | None:
    """What Supabase sends as `old_record`: the old row's replica identity columns.

    (An UPDATE captured from the WAL without an old tuple kept its key: the new
    row's key columns are the old ones.)
    """
    if identity is None:
        return event.old
    row = event.old if event.old is not None else event.data
    if row is None:
        return None
    return {k: row[k] for k in identity if k in row}


def change_data(event: Event, source: TableSource, select: tuple[str, ...] | None) -> str:
    """The `data` object of one change, as JSON."""
    data: dict[str, Any] = {
        "schema": source.schema,
        "table": source.table,
        "commit_timestamp": commit_timestamp(event.timestamp),
        "type": event.operation,
        "columns": source.columns,
        "errors": None,
    }
    if event.operation in ("INSERT", "UPDATE"):
        data["record"] = _project(event.data, select)
    if event.operation in ("UPDATE", "DELETE"):
        data["old_record"] = _project(old_record(event, source.identity), select)
    return orjson.dumps(data).decode()


def changes_renderer(
    vsn: Vsn, topic: str, binding: Binding, source: TableSource, cache: EncodeCache
) -> Renderer:
    """Render hub events of one binding's table as `postgres_changes` messages."""
    head, tail = envelope(vsn, None, None, topic, "postgres_changes")
    head += '{"ids":[' + str(binding.id) + '],"data":'
    tail = "}" + tail
    operation = binding.spec.operation
    select = binding.select

    flt = source.target.filter

    def render(event: Event, _prefix: str) -> Frame:
        if event.operation == "UPDATE" and flt.conditions and not flt.matches(event.view):
            # The row left the filter (the hub routes an UPDATE that matched before
            # or after). Supabase tests only the new row and sends nothing, which
            # leaves the row on the app's screen; a `*` binding gets a DELETE of
            # the old row instead, so a list kept by id drops it.
            if operation is not None:
                return NOTHING
            event = event.departure()
        if operation is not None and event.operation != operation:
            return NOTHING
        body = cache.get(
            event, ("pg", source.table, select), lambda: change_data(event, source, select)
        )
        return (head, body, tail)

    return render


def plugin_broadcast(event: Event, topic: str, replayed: bool) -> dict[Vsn, Frame | None]:
    """A plugin channel's event as a broadcast, for each wire format."""
    payload = event.data if event.data is not None else event.old
    meta: dict[str, Any] = {"id": str(event.seq), "operation": event.operation}
    if replayed:
        meta["replayed"] = True
    return broadcast_frames(topic, event.event, orjson.dumps(payload), JSON_ENCODING, meta)


def plugin_renderer(vsn: Vsn, topic: str, replayed_upto: int, cache: EncodeCache) -> Renderer:
    """Render a plugin channel's events as broadcasts; those up to `replayed_upto` are replays."""

    def render(event: Event, _prefix: str) -> Frame:
        replayed = event.seq <= replayed_upto
        frames = cache.get(
            event, ("plugin", topic, replayed), lambda: plugin_broadcast(event, topic, replayed)
        )
        return frames[vsn] or NOTHING

    return render


async def seq_since(bridge: Bridge, since_ms: int) -> int | None:
    """The seq just before the first logged event at or after `since_ms` (None: nothing since)."""
    assert bridge.pool is not None
    await bridge.wait_logged(bridge.hub.head)  # the WAL leader logs a moment after handing on
    value = await bridge.pool.fetchval(
        """
        SELECT min(seq) FROM realtime_bridge.outbox
        WHERE seq IS NOT NULL AND created_at >= to_timestamp($1::float8 / 1000)
        """,
        float(since_ms),
    )
    return None if value is None else int(value) - 1


class _SeqOutlet:
    """Counts what a subscription would receive, keeping the last seqs only."""

    def __init__(self, limit: int) -> None:
        self.seqs: deque[int] = deque(maxlen=limit)

    @property
    def closed(self) -> bool:
        return False

    def offer(self, frame: Frame) -> bool:
        self.seqs.append(int(frame[0]))
        return True

    async def put(self, frame: Frame) -> None:
        self.offer(frame)


def _seq_frame(event: Event, _prefix: str) -> Frame:
    return (str(event.seq),)


async def replay_start(bridge: Bridge, target: Target, after: int, limit: int | None) -> int:
    """Where a replay of `target` after seq `after` starts so it holds at most the last `limit`."""
    if limit is None:
        return after
    hub = bridge.hub
    outlet = _SeqOutlet(limit)
    sub = target.subscribe(hub, outlet, since=after, render=_seq_frame)
    try:
        await hub.catch_up(sub)
    finally:
        hub.unsubscribe(sub)
    if len(outlet.seqs) < limit:
        return after
    return outlet.seqs[0] - 1
