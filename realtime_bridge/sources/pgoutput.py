"""The `pgoutput` logical replication protocol, without I/O.

`Decoder.feed(payload)` takes one XLogData payload (what the replication
connection hands over) and returns what it meant: a `Begin`, a `Commit`, a
row `Change` of a published table, or a logical `Message`
(`pg_logical_emit_message`). Relation messages are absorbed: the decoder
keeps each relation's columns (by oid) so that a column added mid-stream
is seen from the next change on, as Postgres sends a new relation message
before it.

Values arrive in Postgres's text format. `Types` turns them into what
`to_jsonb()` would have produced for the same column (numbers, booleans,
JSON, arrays, ISO timestamps; text otherwise), so a row read from the WAL
looks exactly like one captured by the triggers.

Protocol version 1, without streaming of in-progress transactions: a
transaction arrives whole, after its commit, between its Begin and Commit,
and transactions never interleave.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_INT64 = struct.Struct(">q")
_UINT64 = struct.Struct(">Q")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_INT16 = struct.Struct(">h")


def pg_time(microseconds: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=microseconds)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type_oid: int
    key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    replica_identity: str
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    committed_at: datetime
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    committed_at: datetime


@dataclass(frozen=True, slots=True)
class RowChange:
    """One INSERT, UPDATE or DELETE; tuples still in text form (see `Types.row`)."""

    operation: Literal["INSERT", "UPDATE", "DELETE"]
    relation: Relation
    new: tuple[bytes | Unchanged | None, ...] | None
    old: tuple[bytes | Unchanged | None, ...] | None
    #: True when `old` holds only the replica identity's key columns.
    old_is_key: bool = False


@dataclass(frozen=True, slots=True)
class Message:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


class Unchanged:
    """An unchanged TOASTed value: Postgres did not send it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = Unchanged()

Decoded = Begin | Commit | RowChange | Message | Relation | None


class ProtocolError(Exception):
    """The stream held something this decoder does not understand."""


@dataclass
class Decoder:
    """Feeds on pgoutput payloads; remembers the relations it was told about."""

    relations: dict[int, Relation] = field(default_factory=dict)

    def feed(self, payload: bytes) -> Decoded:
        kind = payload[:1]
        if kind == b"B":
            final_lsn, timestamp = (
                _UINT64.unpack_from(payload, 1)[0],
                _INT64.unpack_from(payload, 9)[0],
            )
            xid = _UINT32.unpack_from(payload, 17)[0]
            return Begin(final_lsn, pg_time(timestamp), xid)
        if kind == b"C":
            commit_lsn = _UINT64.unpack_from(payload, 2)[0]
            end_lsn = _UINT64.unpack_from(payload, 10)[0]
            timestamp = _INT64.unpack_from(payload, 18)[0]
            return Commit(commit_lsn, end_lsn, pg_time(timestamp))
        if kind == b"I":
            relation = self._relation(payload, 1)
            new, _ = _tuple(payload, 6)
            return RowChange("INSERT", relation, new, None)
        if kind == b"U":
            relation = self._relation(payload, 1)
            offset = 5
            old = None
            old_is_key = False
            marker = payload[offset : offset + 1]
            if marker in (b"K", b"O"):
                old, offset = _tuple(payload, offset + 1)
                old_is_key = marker == b"K"
                marker = payload[offset : offset + 1]
            if marker != b"N":
                raise ProtocolError(f"update without a new tuple (marker {marker!r})")
            new, _ = _tuple(payload, offset + 1)
            return RowChange("UPDATE", relation, new, old, old_is_key)
        if kind == b"D":
            relation = self._relation(payload, 1)
            marker = payload[5:6]
            old, _ = _tuple(payload, 6)
            return RowChange("DELETE", relation, None, old, marker == b"K")
        if kind == b"R":
            relation = _relation_message(payload)
            self.relations[relation.oid] = relation
            return relation
        if kind == b"M":
            flags = payload[1]
            lsn = _UINT64.unpack_from(payload, 2)[0]
            prefix, offset = _string(payload, 10)
            length = _INT32.unpack_from(payload, offset)[0]
            content = bytes(payload[offset + 4 : offset + 4 + length])
            return Message(bool(flags & 1), lsn, prefix, content)
        if kind in (b"Y", b"O", b"T"):
            return None  # types, origins, truncates: nothing we deliver
        raise ProtocolError(f"unknown pgoutput message {kind!r}")

    def _relation(self, payload: bytes, offset: int) -> Relation:
        oid = _UINT32.unpack_from(payload, offset)[0]
        try:
            return self.relations[oid]
        except KeyError:
            raise ProtocolError(f"change of relation {oid} before its relation message") from None


def _string(payload: bytes, offset: int) -> tuple[str, int]:
    end = payload.index(b"\x00", offset)
    return payload[offset:end].decode(), end + 1


def _relation_message(payload: bytes) -> Relation:
    oid = _UINT32.unpack_from(payload, 1)[0]
    schema, offset = _string(payload, 5)
    name, offset = _string(payload, offset)
    identity = chr(payload[offset])
    count = _INT16.unpack_from(payload, offset + 1)[0]
    offset += 3
    columns = []
    for _ in range(count):
        flags = payload[offset]
        column, offset = _string(payload, offset + 1)
        type_oid = _UINT32.unpack_from(payload, offset)[0]
        offset += 8  # type oid and type modifier
        columns.append(Column(column, type_oid, bool(flags & 1)))
    return Relation(oid, schema or "pg_catalog", name, identity, tuple(columns))


def _tuple(payload: bytes, offset: int) -> tuple[tuple[bytes | Unchanged | None, ...], int]:
    count = _INT16.unpack_from(payload, offset)[0]
    offset += 2
    values: list[bytes | Unchanged | None] = []
    for _ in range(count):
        kind = payload[offset : offset + 1]
        offset += 1
        if kind == b"n":
            values.append(None)
        elif kind == b"u":
            values.append(UNCHANGED)
        elif kind in (b"t", b"b"):
            length = _INT32.unpack_from(payload, offset)[0]
            values.append(bytes(payload[offset + 4 : offset + 4 + length]))
            offset += 4 + length
        else:
            raise ProtocolError(f"unknown tuple value kind {kind!r}")
    return tuple(values), offset


# Values -------------------------------------------------------------------

Convert = Callable[[str], Any]

_INTEGER_OIDS = frozenset({20, 21, 23, 26, 28})  # int8 int2 int4 oid xid
_NUMBER_OIDS = frozenset({700, 701, 1700})  # float4 float8 numeric
_JSON_OIDS = frozenset({114, 3802})
_TIMESTAMPTZ_OID = 1184
_TIMESTAMP_OID = 1114
_BOOL_OID = 16

# What the catalog tells us of a type: (typtype, typcategory, typelem, typbasetype)
TypeRow = tuple[str, str, int, int]

TYPES_SQL = """
SELECT oid::int AS oid, typtype::text AS typtype, typcategory::text AS category,
       typelem::int AS elem, typbasetype::int AS base
FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[])
"""


def _number(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text  # NaN, Infinity: to_jsonb writes them as strings


def _timestamptz(text: str) -> str:
    if len(text) > 10 and text[10] == " ":
        text = f"{text[:10]}T{text[11:]}"
    # An offset of whole hours comes as +HH: to_jsonb() writes +HH:00.
    if len(text) > 3 and text[-3] in "+-" and text[-2:].isdigit():
        return text + ":00"
    return text


def _timestamp(text: str) -> str:
    if len(text) > 10 and text[10] == " ":
        return f"{text[:10]}T{text[11:]}"
    return text


def _text(text: str) -> str:
    return text


def _boolean(text: str) -> bool:
    return text == "t"


class Types:
    """Converters from the text format to `to_jsonb()`'s values, by type oid.

    Built-in types are known at once; others (domains, arrays of them,
    enums, extensions' types) are looked up in the catalog with `learn()`
    before a relation that uses them is decoded.
    """

    def __init__(self) -> None:
        self._converters: dict[int, Convert] = {}
        self._rows: dict[int, TypeRow] = {}
        # Per relation: its columns' names and converters, in order (rebuilt on a
        # new relation message, and after `learn`, which may change a converter).
        self._plans: dict[int, tuple[Relation, tuple[tuple[str, Convert], ...]]] = {}

    def unknown(self, relation: Relation) -> list[int]:
        """The type oids of `relation` not yet converted (ask the catalog for them)."""
        return [c.type_oid for c in relation.columns if self.converter(c.type_oid) is None]

    def ready(self, relation: Relation) -> bool:
        """Whether every column type of `relation` is converted (cheap once it was)."""
        return self._planned(relation) is not None or not self.unknown(relation)

    def _planned(self, relation: Relation) -> tuple[tuple[str, Convert], ...] | None:
        """The plan of this very relation message (a newer one for the oid plans afresh)."""
        planned = self._plans.get(relation.oid)
        return planned[1] if planned is not None and planned[0] is relation else None

    def _plan(self, relation: Relation) -> tuple[tuple[str, Convert], ...]:
        plan = self._planned(relation)
        if plan is None:
            plan = tuple((c.name, self.converter(c.type_oid) or _text) for c in relation.columns)
            self._plans[relation.oid] = (relation, plan)
        return plan

    def learn(self, rows: list[tuple[int, str, str, int, int]]) -> list[int]:
        """Remember catalog rows; returns further oids needed (element and base types)."""
        further = []
        self._plans.clear()
        for oid, typtype, category, elem, base in rows:
            self._rows[oid] = (typtype, category, elem, base)
            for other in (elem, base):
                if other and self.converter(other) is None and other not in self._rows:
                    further.append(other)
        return further

    def converter(self, oid: int) -> Convert | None:
        found = self._converters.get(oid)
        if found is not None:
            return found
        made = self._make(oid)
        if made is not None:
            self._converters[oid] = made
        return made

    def _make(self, oid: int) -> Convert | None:
        if oid in _INTEGER_OIDS:
            return int
        if oid in _NUMBER_OIDS:
            return _number
        if oid in _JSON_OIDS:
            return orjson.loads
        if oid == _BOOL_OID:
            return _boolean
        if oid == _TIMESTAMPTZ_OID:
            return _timestamptz
        if oid == _TIMESTAMP_OID:
            return _timestamp
        row = self._rows.get(oid)
        if row is None:
            return None
        typtype, category, elem, base = row
        if typtype == "d" and base:
            return self.converter(base)
        if category == "A" and elem:
            element = self.converter(elem)
            if element is None:
                return None
            return lambda text: parse_array(text, element)
        return _text

    def row(
        self, relation: Relation, values: tuple[bytes | Unchanged | None, ...]
    ) -> dict[str, Any]:
        """A tuple as `to_jsonb()` would render the row (unchanged TOAST values left out)."""
        out: dict[str, Any] = {}
        for (name, convert), raw in zip(self._plan(relation), values, strict=False):
            if raw is None:
                out[name] = None
            elif raw is not UNCHANGED:
                out[name] = convert(raw.decode())  # type: ignore[union-attr]
        return out


def parse_array(text: str, element: Convert) -> Any:
    """A Postgres array literal (`{1,2,"a b",NULL,{3}}`) as nested lists."""
    if text.startswith("["):  # explicit bounds: [0:1]={...}
        text = text[text.index("=") + 1 :]
    value, _end = _array(text, 0, element)
    return value


def _array(text: str, pos: int, element: Convert) -> tuple[list[Any], int]:
    assert text[pos] == "{"
    pos += 1
    items: list[Any] = []
    if text[pos] == "}":
        return items, pos + 1
    while True:
        char = text[pos]
        if char == "{":
            nested, pos = _array(text, pos, element)
            items.append(nested)
        elif char == '"':
            pos += 1
            chars = []
            while text[pos] != '"':
                if text[pos] == "\\":
                    pos += 1
                chars.append(text[pos])
                pos += 1
            pos += 1
            items.append(element("".join(chars)))
        else:
            end = pos
            while text[end] not in ",}":
                end += 1
            word = text[pos:end]
            items.append(None if word == "NULL" else element(word))
            pos = end
        if text[pos] == ",":
            pos += 1
            continue
        return items, pos + 1
