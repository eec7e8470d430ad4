"""Subscription filters: parsed once at subscribe time, matched per event.

Two spellings arrive from clients and become the same `Filter`:

* the equality map of our own protocol: ``{"user_id": "u1", "status": ["open", "pending"]}``
  (a scalar is ``eq``, a list is ``in``, null is ``is null``; ``{"gte": 10}`` picks an operator);
* Supabase filter strings: ``user_id=eq.u1,status=in.(open,pending)`` with the operators
  eq, neq, lt, lte, gt, gte, in and is; a comma means AND.

Values are spelled in text as written (numbers in their shortest form); the
bridge compares them in each column's type.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson

from realtime_bridge_client.protocol import InvalidFilter

Op = Literal["eq", "neq", "lt", "lte", "gt", "gte", "in", "is"]
OPERATORS: frozenset[str] = frozenset({"eq", "neq", "lt", "lte", "gt", "gte", "in", "is"})
IS_VALUES: frozenset[str] = frozenset({"null", "true", "false"})
MAX_IN_VALUES = 100
MAX_CONDITIONS = 16
MAX_FILTER_CHARS = 4000

#: One parsed `column op values` test, values in text as written (None: null).
Clause = tuple[str, Op, tuple[str | None, ...]]

_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def canonical(value: Any) -> str | None:
    """The comparison key of a row or filter value (None stays None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return orjson.dumps(value).decode()  # as the bridge reads a JSON number
    # A string stays as written: "0001" is not "1" (the bridge compares it in
    # the column's type, as Postgres does; guessing from its shape leaks rows).
    return str(value)


def _number_key(number: Decimal) -> str:
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _as_number(key: str) -> Decimal | None:
    if _NUMBER.fullmatch(key):
        try:
            return Decimal(key)
        except InvalidOperation:  # pragma: no cover - the regex rules it out
            return None
    return None


@dataclass(frozen=True, slots=True)
class Condition:
    """One `column op value` test."""

    column: str
    op: Op
    keys: tuple[str | None, ...]

    def test(self, row: Mapping[str, Any]) -> bool:
        if self.column not in row:
            return False
        key = canonical(row[self.column])
        if self.op == "eq":
            return key is not None and key == self.keys[0]
        if self.op == "neq":
            return key is not None and key != self.keys[0]
        if self.op == "in":
            return key is not None and key in self.keys
        if self.op == "is":
            return key == self.keys[0]
        if key is None or self.keys[0] is None:
            return False
        return _ordered(key, self.keys[0], self.op)


def _ordered(left: str, right: str, op: str) -> bool:
    a: Any = _as_number(left)
    b: Any = _as_number(right)
    if a is None or b is None:
        a, b = left, right
    if op == "lt":
        return bool(a < b)
    if op == "lte":
        return bool(a <= b)
    if op == "gt":
        return bool(a > b)
    return bool(a >= b)


@dataclass(frozen=True, slots=True)
class Filter:
    """An AND of conditions; the empty filter matches everything."""

    conditions: tuple[Condition, ...] = ()

    def matches(self, row: Mapping[str, Any] | None) -> bool:
        if row is None:
            return False
        return all(condition.test(row) for condition in self.conditions)

    def index_key(self, prefer: str | None = None) -> tuple[str, tuple[str, ...]] | None:
        """The column and keys the hub can index this filter under, if any.

        Only `eq` and `in` narrow a subscription to known values; `prefer`
        (the channel's owner column) wins when present.
        """
        candidates = [c for c in self.conditions if c.op in ("eq", "in")]
        if not candidates:
            return None
        chosen = next((c for c in candidates if c.column == prefer), candidates[0])
        return chosen.column, tuple(k for k in chosen.keys if k is not None)

    def describe(self) -> str:
        """The filter in Supabase's string form (for logs and echoes)."""
        parts = []
        for c in self.conditions:
            if c.op == "in":
                parts.append(f"{c.column}=in.({','.join(k or 'null' for k in c.keys)})")
            else:
                parts.append(f"{c.column}={c.op}.{c.keys[0] if c.keys[0] is not None else 'null'}")
        return ",".join(parts)


def parse_filter(spec: Any, columns: Collection[str] | None = None) -> Filter:
    """Parse a client's filter (map, string or None); raise `InvalidFilter` saying why."""
    conditions = [Condition(*clause) for clause in clauses(spec, columns)]
    return Filter(tuple(conditions))


def clauses(spec: Any, columns: Collection[str] | None = None) -> list[Clause]:
    """The grammar both ends share: a filter (map, string or None) as checked clauses.

    With `columns`, a column not among them is refused. The bridge builds its
    typed conditions from the same clauses.
    """
    if spec is None or spec == "" or spec == {}:
        return []
    if isinstance(spec, str):
        if len(spec) > MAX_FILTER_CHARS:
            raise InvalidFilter(f"a filter is at most {MAX_FILTER_CHARS} characters")
        found = [_parse_clause(clause) for clause in _split_top_level(spec)]
    elif isinstance(spec, Mapping):
        found = [_from_map_entry(column, value) for column, value in spec.items()]
    else:
        raise InvalidFilter(
            'filter must be an object like {"user_id": "u1"} or a string like "user_id=eq.u1"'
        )
    if len(found) > MAX_CONDITIONS:
        raise InvalidFilter(f"a filter may have at most {MAX_CONDITIONS} conditions")
    if columns is not None:
        unknown = sorted({column for column, _, _ in found} - set(columns))
        if unknown:
            raise InvalidFilter(
                f"unknown column {unknown[0]!r}; filterable columns: {', '.join(sorted(columns))}",
                column=unknown[0],
            )
    return found


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


def _parse_clause(clause: str) -> Clause:
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


def _from_map_entry(column: Any, value: Any) -> Clause:
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


def _condition(column: str, op: str, values: Iterable[Any]) -> Clause:
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
        return (column, "is", (None if word == "null" else word,))
    for item in items:
        if isinstance(item, dict | list):
            raise InvalidFilter(f"filter value for {column!r} must be a scalar")
        if item is None and op != "in":
            raise InvalidFilter(f"use is.null to match nulls in {column!r}")
    return (column, op, tuple(canonical(item) for item in items))  # type: ignore[return-value]
