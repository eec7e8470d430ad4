"""Subscription filters: parsed once at subscribe time, matched per event.

Two spellings arrive from clients and become the same `Filter`:

* the equality map of our own protocol: ``{"user_id": "u1", "status": ["open", "pending"]}``
  (a scalar is ``eq``, a list is ``in``, null is ``is null``; ``{"gte": 10}`` picks an operator);
* Supabase filter strings: ``user_id=eq.u1,status=in.(open,pending)`` with the operators
  eq, neq, lt, lte, gt, gte, in and is; a comma means AND.

Values are written as text and compared *in the column's type* (see
`realtime_bridge.pgtypes`), as Postgres compares ``column op 'text'``: on a
text column ``"0001"`` is not ``"1"``, on a numeric one ``1`` is ``1.0``. A
filter parsed without column types compares exactly as text. The hub
indexes equality filters by the same typed keys.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from realtime_bridge.errors import InvalidFilter
from realtime_bridge.pgtypes import UNKNOWN, ColumnType, Key
from realtime_bridge_client.filters import (
    IS_VALUES,
    MAX_CONDITIONS,
    MAX_FILTER_CHARS,
    MAX_IN_VALUES,
    OPERATORS,
    Op,
    clauses,
)

__all__ = [
    "IS_VALUES",
    "MAX_CONDITIONS",
    "MAX_FILTER_CHARS",
    "MAX_IN_VALUES",
    "OPERATORS",
    "Condition",
    "Filter",
    "Op",
    "column_types",
    "parse_filter",
]

# A channel's columns: names only, or each with its Postgres type (a ColumnType or its typname).
Columns = Collection[str] | Mapping[str, ColumnType | str]


def column_types(columns: Columns | None) -> dict[str, ColumnType]:
    """The types of `columns` (UNKNOWN where only a name is given)."""
    if columns is None:
        return {}
    if isinstance(columns, Mapping):
        return {
            name: kind if isinstance(kind, ColumnType) else ColumnType(kind)
            for name, kind in columns.items()
        }
    return dict.fromkeys(columns, UNKNOWN)


@dataclass(frozen=True, slots=True)
class Condition:
    """One `column op value` test; `keys` are the values as written, `values` as typed."""

    column: str
    op: Op
    keys: tuple[str | None, ...]
    type: ColumnType = UNKNOWN
    values: tuple[Key | None, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        values = tuple(self.type.key(k) for k in self.keys)
        if self.op != "is":
            for raw, value in zip(self.keys, values, strict=True):
                if raw is not None and value is None:
                    raise InvalidFilter(
                        f"{raw!r} is not a valid {self.type.name} for column {self.column!r}",
                        column=self.column,
                    )
        object.__setattr__(self, "values", values)

    def typed(self, kind: ColumnType) -> Condition:
        return self if kind == self.type else replace(self, type=kind)

    def test(self, row: Mapping[str, Any]) -> bool:
        if self.column not in row:
            return False
        raw = row[self.column]
        if self.op == "is":
            if self.keys[0] is None:
                return raw is None
            key = self.type.key(raw)
            return key is not None and key == self.values[0]
        key = self.type.key(raw)
        if key is None:
            return False
        if self.op == "eq":
            return key == self.values[0]
        if self.op == "neq":
            return key != self.values[0]
        if self.op == "in":
            return key in self.values
        return _ordered(key, self.values[0], self.op)


def _ordered(left: Any, right: Any, op: str) -> bool:
    try:
        if op == "lt":
            return bool(left < right)
        if op == "lte":
            return bool(left <= right)
        if op == "gt":
            return bool(left > right)
        return bool(left >= right)
    except TypeError:  # keys of one type always compare; this is a defensive no
        return False


@dataclass(frozen=True, slots=True)
class Filter:
    """An AND of conditions; the empty filter matches everything."""

    conditions: tuple[Condition, ...] = ()

    def matches(self, row: Mapping[str, Any] | None) -> bool:
        if row is None:
            return False
        return all(condition.test(row) for condition in self.conditions)

    def typed(self, types: Mapping[str, ColumnType]) -> Filter:
        """This filter comparing each column in its type (raises `InvalidFilter` for bad values)."""
        conditions = tuple(c.typed(types.get(c.column, UNKNOWN)) for c in self.conditions)
        if conditions == self.conditions:
            return self
        return replace(self, conditions=conditions)

    def index_key(self, prefer: str | None = None) -> tuple[str, tuple[Key, ...]] | None:
        """The column and typed keys the hub can index this filter under, if any.

        Only `eq` and `in` narrow a subscription to known values; `prefer`
        (the channel's owner column) wins when present.
        """
        candidates = [c for c in self.conditions if c.op in ("eq", "in")]
        if not candidates:
            return None
        chosen = next((c for c in candidates if c.column == prefer), candidates[0])
        return chosen.column, tuple(dict.fromkeys(k for k in chosen.values if k is not None))

    def describe(self) -> str:
        """The filter in Supabase's string form (for logs and echoes)."""
        parts = []
        for c in self.conditions:
            if c.op == "in":
                parts.append(f"{c.column}=in.({','.join(k or 'null' for k in c.keys)})")
            else:
                parts.append(f"{c.column}={c.op}.{c.keys[0] if c.keys[0] is not None else 'null'}")
        return ",".join(parts)


def parse_filter(spec: Any, columns: Columns | None = None) -> Filter:
    """Parse a client's filter (map, string or None); raise `InvalidFilter` saying why.

    The grammar is the client package's (`realtime_bridge_client.filters.clauses`,
    one parser for both ends). With `columns`, a column not among them is
    refused, and where they carry types each value is read in its column's type.
    """
    flt = Filter(tuple(Condition(*clause) for clause in clauses(spec, columns)))
    return flt.typed(column_types(columns)) if isinstance(columns, Mapping) else flt
