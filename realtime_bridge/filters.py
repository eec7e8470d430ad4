"""Subscription filters: parsed once at subscribe time, matched per event.

Two spellings arrive from clients and become the same `Filter`:

* the equality map of our own protocol: ``{"user_id": "u1", "status": ["open", "pending"]}``
  (a scalar is ``eq``, a list is ``in``, null is ``is null``; ``{"gte": 10}`` picks an operator);
* Supabase filter strings: ``user_id=eq.u1,status=in.(open,pending)`` with the operators
  eq, neq, lt, lte, gt, gte, in, is (null, true, false, unknown), like and ilike, each
  also negated (``not.eq.x``); a comma means AND.

A row matches when the filter, as the SQL ``WHERE`` clause it spells, is
true (three-valued logic: ``not.eq.x`` does not match NULL, ``not.is.true``
does). `like`/`ilike` take PostgREST patterns (``*`` or ``%``, ``_``, ``\\``)
and apply to text columns; `is.true`/`is.false`/`is.unknown` to boolean ones.

Values are written as text and compared *in the column's type* (see
`realtime_bridge.pgtypes`), as Postgres compares ``column op 'text'``: on a
text column ``"0001"`` is not ``"1"``, on a numeric one ``1`` is ``1.0``. A
filter parsed without column types compares exactly as text. The hub
indexes equality filters by the same typed keys: `eq`, `in`, `is.null`,
`is.unknown`, `is.true`, `is.false`, and `like` without a wildcard on a
case-sensitive text column; negated conditions, ranges, `ilike` and like
patterns with wildcards are tested on every event of the channel.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from realtime_bridge.errors import InvalidFilter
from realtime_bridge.pgtypes import UNKNOWN, ColumnType, Key, text_form
from realtime_bridge_client.filters import (
    IS_VALUES,
    MAX_CONDITIONS,
    MAX_FILTER_CHARS,
    MAX_IN_VALUES,
    OPERATORS,
    LikePattern,
    Op,
    clauses,
    describe,
    fold,
    like_pattern,
)

__all__ = [
    "IS_VALUES",
    "MAX_CONDITIONS",
    "MAX_FILTER_CHARS",
    "MAX_IN_VALUES",
    "NULL_KEY",
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


class _Null:
    """The index key of a NULL (a row value None), which no typed key equals."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_KEY"


#: The hub's index key for rows whose column is NULL (`is.null` subscriptions).
NULL_KEY: Final[Key] = _Null()

# Types whose LIKE is Postgres's text LIKE (citext's is case-insensitive);
# "" is a column of unknown type, compared as text.
_LIKE_TYPES = frozenset({"", "text", "varchar", "name", "bpchar", "citext"})
# Types whose keys are the text itself, so a like pattern without wildcards is `eq`.
_EXACT_TEXT = frozenset({"", "text", "varchar", "name"})
_WILDCARD = re.compile(r"(?<!\\)(?:\\\\)*[%_]")


@dataclass(frozen=True, slots=True)
class Condition:
    """One `[NOT] column op value` test; `keys` are the values as written, `values` as typed."""

    column: str
    op: Op
    keys: tuple[str | None, ...]
    negated: bool = False
    type: ColumnType = UNKNOWN
    values: tuple[Key | None, ...] = field(init=False, repr=False)
    pattern: LikePattern | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = None
        if self.op in ("like", "ilike"):
            if self.type.name not in _LIKE_TYPES:
                raise InvalidFilter(
                    f"'{self.op}' applies to text columns; {self.column!r} is {self.type.name}",
                    column=self.column,
                )
            insensitive = self.op == "ilike" or self.type.name == "citext"
            pattern = like_pattern(self.keys[0] or "", insensitive=insensitive)
            values: tuple[Key | None, ...] = self.keys
        elif self.op == "is":
            word = self.keys[0]
            if word is not None and self.type.known and self.type.name != "bool":
                raise InvalidFilter(
                    f"'is.{word}' applies to boolean columns; {self.column!r} is {self.type.name}",
                    column=self.column,
                )
            values = (None if word in (None, "unknown") else self.type.key(word),)
        else:
            values = tuple(self.type.key(k) for k in self.keys)
            for raw, value in zip(self.keys, values, strict=True):
                if raw is not None and value is None:
                    raise InvalidFilter(
                        f"{raw!r} is not a valid {self.type.name} for column {self.column!r}",
                        column=self.column,
                    )
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "pattern", pattern)

    def typed(self, kind: ColumnType) -> Condition:
        return self if kind == self.type else replace(self, type=kind)

    def test(self, row: Mapping[str, Any]) -> bool:
        """Whether `row` passes: the SQL test is true (unknown, as for a NULL, is no)."""
        if self.column not in row:
            return False
        answer = self.truth(row[self.column])
        if answer is None:
            return False
        return answer is not self.negated

    def truth(self, raw: Any) -> bool | None:
        """The un-negated test on a row value, in SQL's three-valued logic (None: unknown)."""
        if self.op == "is":
            if self.values[0] is None:
                return raw is None
            key = self.type.key(raw)
            return key is not None and key == self.values[0]
        if raw is None:
            return None
        if self.pattern is not None:
            text = text_form(raw)
            if self.op == "ilike" or self.type.name == "citext":
                text = fold(text)
            return self.pattern.fullmatch(text)
        key = self.type.key(raw)
        if key is None:
            return None
        if self.op == "eq":
            return key == self.values[0]
        if self.op == "neq":
            return key != self.values[0]
        if self.op == "in":
            if key in self.values:
                return True
            return None if None in self.values else False
        return _ordered(key, self.values[0], self.op)

    def index_keys(self) -> tuple[Key, ...] | None:
        """The keys of every row value this condition can match, when there are few."""
        if self.negated:
            return None
        if self.op in ("eq", "in"):
            return tuple(dict.fromkeys(k for k in self.values if k is not None))
        if self.op == "is":
            return (NULL_KEY if self.values[0] is None else self.values[0],)
        if self.op == "like" and self.type.name in _EXACT_TEXT:
            literal = self.keys[0] or ""
            if _WILDCARD.search(literal) is None:
                return (re.sub(r"\\(.)", r"\1", literal, flags=re.DOTALL),)
        return None


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

        The conditions that narrow a subscription to known values (`eq`, `in`,
        `is`, a like without wildcards) can be; `prefer` (the channel's owner
        column) wins when present, and a value over an `is`. A NULL row value
        is keyed `NULL_KEY`.
        """
        candidates = [(c, keys) for c in self.conditions if (keys := c.index_keys()) is not None]
        if not candidates:
            return None
        # The owner column first, then values over `is` (NULL, true and false are
        # keys many rows share), then the order written.
        chosen, keys = min(candidates, key=lambda ck: (ck[0].column != prefer, ck[0].op == "is"))
        return chosen.column, keys

    def describe(self) -> str:
        """The filter in Supabase's string form (for logs and echoes)."""
        return describe(self.conditions)


def parse_filter(spec: Any, columns: Columns | None = None) -> Filter:
    """Parse a client's filter (map, string or None); raise `InvalidFilter` saying why.

    The grammar is the client package's (`realtime_bridge_client.filters.clauses`,
    one parser for both ends). With `columns`, a column not among them is
    refused, and where they carry types each value is read in its column's type.
    """
    flt = Filter(tuple(Condition(*clause) for clause in clauses(spec, columns)))
    return flt.typed(column_types(columns)) if isinstance(columns, Mapping) else flt
