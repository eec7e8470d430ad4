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

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from realtime_bridge.errors import InvalidFilter
from realtime_bridge.pgtypes import UNKNOWN, ColumnType, Key, text_form

Op = Literal["eq", "neq", "lt", "lte", "gt", "gte", "in", "is"]
OPERATORS: frozenset[str] = frozenset({"eq", "neq", "lt", "lte", "gt", "gte", "in", "is"})
IS_VALUES: frozenset[str] = frozenset({"null", "true", "false"})
MAX_IN_VALUES = 100
MAX_CONDITIONS = 16
MAX_FILTER_CHARS = 4000

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

    With `columns`, a column not among them is refused, and where they carry
    types each value is read in its column's type.
    """
    if spec is None or spec == "" or spec == {}:
        return Filter()
    if isinstance(spec, str):
        if len(spec) > MAX_FILTER_CHARS:
            raise InvalidFilter(f"a filter is at most {MAX_FILTER_CHARS} characters")
        conditions = [_parse_clause(clause) for clause in _split_top_level(spec)]
    elif isinstance(spec, Mapping):
        conditions = [_from_map_entry(column, value) for column, value in spec.items()]
    else:
        raise InvalidFilter(
            'filter must be an object like {"user_id": "u1"} or a string like "user_id=eq.u1"'
        )
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidFilter(f"a filter may have at most {MAX_CONDITIONS} conditions")
    if columns is not None:
        unknown = sorted({c.column for c in conditions} - set(columns))
        if unknown:
            raise InvalidFilter(
                f"unknown column {unknown[0]!r}; filterable columns: {', '.join(sorted(columns))}",
                column=unknown[0],
            )
    flt = Filter(tuple(conditions))
    return flt.typed(column_types(columns)) if isinstance(columns, Mapping) else flt


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidFilter(f"unbalanced ')' in filter {text!r}")
        if char == "," and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0 or quoted:
        raise InvalidFilter(f"unbalanced parenthesis or quote in filter {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts]


_CLAUSE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=([a-z]+)\.(.*)$", re.DOTALL)


def _parse_clause(clause: str) -> Condition:
    match = _CLAUSE.match(clause)
    if match is None:
        raise InvalidFilter(
            f"cannot parse filter clause {clause!r}; "
            "expected column=operator.value, e.g. user_id=eq.u1"
        )
    column, op, raw = match.groups()
    if op not in OPERATORS:
        raise InvalidFilter(
            f"unknown operator {op!r} in {clause!r}; use one of {', '.join(sorted(OPERATORS))}"
        )
    if op == "in":
        if not (raw.startswith("(") and raw.endswith(")")):
            raise InvalidFilter(
                f"'in' needs a parenthesised list, e.g. {column}=in.(a,b); got {raw!r}"
            )
        items = [_unquote(v) for v in _split_top_level(raw[1:-1])] if raw[1:-1].strip() else []
        return _condition(column, "in", items)
    if op == "is":
        return _condition(column, "is", [raw])
    return _condition(column, op, [_unquote(raw)])


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _from_map_entry(column: Any, value: Any) -> Condition:
    if not isinstance(column, str) or not column:
        raise InvalidFilter("filter keys must be column names")
    if isinstance(value, list):
        return _condition(column, "in", value)
    if value is None:
        return _condition(column, "is", ["null"])
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise InvalidFilter(
                f'filter for {column!r} must name exactly one operator, e.g. {{"gte": 10}}'
            )
        ((op, operand),) = value.items()
        if op not in OPERATORS:
            raise InvalidFilter(
                f"unknown operator {op!r} for {column!r}; use one of {', '.join(sorted(OPERATORS))}"
            )
        operands = operand if op == "in" else [operand]
        if op == "in" and not isinstance(operand, list):
            raise InvalidFilter(f"'in' for {column!r} needs a list")
        if op == "is":
            operands = ["null" if operand is None else str(operand).lower()]
        return _condition(column, op, operands)
    return _condition(column, "eq", [value])


def _condition(column: str, op: str, values: Iterable[Any]) -> Condition:
    items = list(values)
    if op == "in":
        if not items:
            raise InvalidFilter(f"'in' for {column!r} needs at least one value")
        if len(items) > MAX_IN_VALUES:
            raise InvalidFilter(f"'in' for {column!r} allows at most {MAX_IN_VALUES} values")
    if op == "is":
        word = str(items[0]).lower()
        if word not in IS_VALUES:
            raise InvalidFilter(f"'is' for {column!r} takes null, true or false; got {items[0]!r}")
        return Condition(column, "is", (None if word == "null" else word,))
    for item in items:
        if isinstance(item, dict | list):
            raise InvalidFilter(f"filter value for {column!r} must be a scalar")
        if item is None and op != "in":
            raise InvalidFilter(f"use is.null to match nulls in {column!r}")
    keys = tuple(None if item is None else text_form(item) for item in items)
    return Condition(column, op, keys)  # type: ignore[arg-type]
