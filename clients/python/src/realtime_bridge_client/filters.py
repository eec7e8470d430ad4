"""Subscription filters: parsed once at subscribe time, matched per event.

Two spellings arrive from clients and become the same `Filter`:

* the equality map of our own protocol: ``{"user_id": "u1", "status": ["open", "pending"]}``
  (a scalar is ``eq``, a list is ``in``, null is ``is null``; ``{"gte": 10}`` picks an operator);
* Supabase filter strings: ``user_id=eq.u1,status=in.(open,pending)`` with the operators
  eq, neq, lt, lte, gt, gte, in, is (null, true, false, unknown), like and ilike
  (PostgREST patterns: ``*`` or ``%`` any run, ``_`` one character, ``\\`` escapes), each
  of them negated by a ``not.`` prefix (``status=not.in.(a,b)``); a comma means AND.
  In the map, ``{"not": <any of the above>}`` negates: ``{"closed": {"not": None}}``.

A row matches when the filter, read as the SQL ``WHERE`` clause it spells,
is true: a NULL makes every operator but ``is`` unknown, and so does its
negation (``not.eq.x`` does not match NULL; ``not.is.true`` does).

Values are spelled in text as written (numbers in their shortest form); the
bridge compares them in each column's type.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Protocol

import orjson

from realtime_bridge_client.protocol import InvalidFilter

Op = Literal["eq", "neq", "lt", "lte", "gt", "gte", "in", "is", "like", "ilike"]
OPERATORS: frozenset[str] = frozenset(
    {"eq", "neq", "lt", "lte", "gt", "gte", "in", "is", "like", "ilike"}
)
#: What `is` takes (`unknown` is SQL's NULL boolean: `is.unknown` = `is.null`).
IS_VALUES: frozenset[str] = frozenset({"null", "true", "false", "unknown"})
#: The negation prefix: ``not.eq.x`` is ``NOT (column = 'x')``.
NOT = "not"
MAX_IN_VALUES = 100
MAX_CONDITIONS = 16
MAX_FILTER_CHARS = 4000

#: One parsed `[NOT] column op values` test, values in text as written (None: null;
#: a like pattern with `*` already read as `%`); the last item says whether it is negated.
Clause = tuple[str, Op, tuple[str | None, ...], bool]

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


@dataclass(frozen=True, slots=True)
class LikePattern:
    """A compiled LIKE pattern, matched in time linear in the text's length.

    The pattern is cut at its ``%`` runs into segments of fixed length (each a
    literal character or ``_``). The first segment must match at the start,
    the last at the end, and each one between at its leftmost place after the
    previous: leftmost is always right when any run may come between them. A
    regular expression with one ``.*`` per ``%`` would backtrack: ``%a%a…%b``
    against a long text of ``a`` takes years, and it would stop every
    subscriber's events while it ran.
    """

    segments: tuple[re.Pattern[str], ...]
    lengths: tuple[int, ...]
    runs: bool  # whether the pattern has any % at all

    def fullmatch(self, text: str) -> bool:
        if not self.runs:
            return len(text) == self.lengths[0] and self.segments[0].fullmatch(text) is not None
        first, last = self.segments[0], self.segments[-1]
        tail = len(text) - self.lengths[-1]
        if tail < self.lengths[0] or first.match(text, 0, self.lengths[0]) is None:
            return False
        if last.match(text, tail) is None:
            return False
        pos = self.lengths[0]
        for segment, length in zip(self.segments[1:-1], self.lengths[1:-1], strict=True):
            found = segment.search(text, pos, tail) if length else None
            if length and found is None:
                return False
            pos = found.end() if found is not None else pos
        return True


@functools.lru_cache(maxsize=4096)
def like_pattern(pattern: str, *, insensitive: bool = False) -> LikePattern:
    """A LIKE pattern (``%`` any run, ``_`` one character, ``\\`` escapes), compiled.

    Raises `InvalidFilter` for a pattern ending in the escape character, as
    Postgres does. `insensitive` compares as ILIKE: both sides `fold`ed.
    """
    if insensitive:
        pattern = fold(pattern)
    segments: list[list[str]] = [[]]
    escaped = False
    for char in pattern:
        if escaped:
            segments[-1].append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            segments.append([])
        elif char == "_":
            segments[-1].append(".")
        else:
            segments[-1].append(re.escape(char))
    if escaped:
        raise InvalidFilter(f"a like pattern must not end with the escape character: {pattern!r}")
    return LikePattern(
        tuple(re.compile("".join(parts), re.DOTALL) for parts in segments),
        tuple(len(parts) for parts in segments),
        len(segments) > 1,
    )


def fold(text: str) -> str:
    """`text` lowercased one code point at a time, as Postgres's ILIKE and lower() do.

    (Python's `str.lower` applies context rules, a final sigma becomes ς, and
    turns İ into two code points; Postgres maps each code point on its own.)
    """
    if text.isascii():
        return text.lower()
    out = []
    for char in text:
        lowered = char.lower()
        out.append(lowered if len(lowered) == 1 else _SIMPLE_LOWER.get(char, char))
    return "".join(out)


# Code points whose full lowercase mapping is longer than one (simple mapping here).
_SIMPLE_LOWER = {"\u0130": "i"}


def like_operand(value: str) -> str:
    """A PostgREST like operand as the LIKE pattern it stands for (``*`` is ``%``)."""
    return value.replace("*", "%")


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
    """One `[NOT] column op value` test."""

    column: str
    op: Op
    keys: tuple[str | None, ...]
    negated: bool = False

    def test(self, row: Mapping[str, Any]) -> bool:
        """Whether the row passes (the SQL test is true: unknown is no)."""
        if self.column not in row:
            return False
        answer = self.truth(canonical(row[self.column]))
        if answer is None:
            return False
        return answer is not self.negated

    def truth(self, key: str | None) -> bool | None:
        """The un-negated test in SQL's three-valued logic (None: unknown)."""
        if self.op == "is":
            if self.keys[0] in (None, "unknown"):
                return key is None
            return key == self.keys[0]
        if key is None:
            return None
        if self.op == "eq":
            return key == self.keys[0]
        if self.op == "neq":
            return key != self.keys[0]
        if self.op == "in":
            if key in self.keys:
                return True
            return None if None in self.keys else False
        if self.op in ("like", "ilike"):
            pattern = like_pattern(self.keys[0] or "", insensitive=self.op == "ilike")
            return pattern.fullmatch(fold(key) if self.op == "ilike" else key)
        if self.keys[0] is None:
            return None
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
        candidates = [c for c in self.conditions if c.op in ("eq", "in") and not c.negated]
        if not candidates:
            return None
        chosen = next((c for c in candidates if c.column == prefer), candidates[0])
        return chosen.column, tuple(k for k in chosen.keys if k is not None)

    def describe(self) -> str:
        """The filter in Supabase's string form (for logs and echoes)."""
        return describe(self.conditions)


class _Spelled(Protocol):
    @property
    def column(self) -> str: ...
    @property
    def op(self) -> Op: ...
    @property
    def keys(self) -> tuple[str | None, ...]: ...
    @property
    def negated(self) -> bool: ...


def describe(conditions: Iterable[_Spelled]) -> str:
    """Conditions in Supabase's string form (for logs and echoes; parses back the same)."""
    parts = []
    for c in conditions:
        op = f"not.{c.op}" if c.negated else c.op
        if c.op == "in":
            parts.append(f"{c.column}={op}.({','.join(_echo(k) for k in c.keys)})")
        elif c.op == "is":
            parts.append(f"{c.column}={op}.{c.keys[0] or 'null'}")
        else:
            parts.append(f"{c.column}={op}.{_echo(c.keys[0])}")
    return ",".join(parts)


def _echo(value: str | None) -> str:
    try:
        return spell(value)
    except InvalidFilter:  # not spellable; a log line still shows it
        return value or ""


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
        unknown = sorted({clause[0] for clause in found} - set(columns))
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


_CLAUSE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(not\.)?([a-z]+)(\.?)(.*)$", re.DOTALL)


def _parse_clause(clause: str) -> Clause:
    match = _CLAUSE.match(clause)
    if match is None:
        raise InvalidFilter(
            f"cannot parse filter clause {clause!r}; "
            "expected column=operator.value, e.g. user_id=eq.u1"
        )
    column, negation, op, dot, raw = match.groups()
    if op not in OPERATORS:
        raise InvalidFilter(
            f"unknown operator {op!r} in {clause!r}; use one of {', '.join(sorted(OPERATORS))}"
            ", each also after not. (not.eq)"
        )
    if not dot:
        raise InvalidFilter(f"cannot parse filter clause {clause!r}; expected a value after {op}.")
    negated = negation is not None
    if op == "in":
        if not (raw.startswith("(") and raw.endswith(")")):
            raise InvalidFilter(
                f"'in' needs a parenthesised list, e.g. {column}=in.(a,b); got {raw!r}"
            )
        inner = raw[1:-1]
        items = [_list_item(v) for v in _split_top_level(inner)] if inner.strip() else []
        return _condition(column, "in", items, negated)
    if op == "is":
        return _condition(column, "is", [raw], negated)
    if op in ("like", "ilike"):
        return _condition(column, op, [like_operand(_unquote(raw))], negated)
    return _condition(column, op, [_unquote(raw)], negated)


def _list_item(value: str) -> str | None:
    """An in-list item; an unquoted ``null`` is NULL, as in a Postgres array literal."""
    return None if value.strip().lower() == "null" else _unquote(value)


def spell(value: str | None) -> str:
    """A value as a filter string writes it: quoted where the grammar needs it."""
    if value is None:
        return "null"
    if '"' in value:
        raise InvalidFilter(f"a filter string cannot carry a double quote: {value!r}")
    if (
        not value
        or value.strip() != value
        or _QUOTE_WORTHY.search(value)
        or value.lower() == "null"
    ):
        return f'"{value}"'
    return value


_QUOTE_WORTHY = re.compile(r"[,()]")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _from_map_entry(column: Any, value: Any, negated: bool = False) -> Clause:
    if not isinstance(column, str) or not column:
        raise InvalidFilter("filter keys must be column names")
    if isinstance(value, list):
        return _condition(column, "in", value, negated)
    if value is None:
        return _condition(column, "is", ["null"], negated)
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise InvalidFilter(
                f'filter for {column!r} must name exactly one operator, e.g. {{"gte": 10}}'
            )
        ((op, operand),) = value.items()
        if op == NOT:
            if negated:
                raise InvalidFilter(f"filter for {column!r} negates twice; drop both 'not's")
            return _from_map_entry(column, operand, negated=True)
        if op not in OPERATORS:
            raise InvalidFilter(
                f"unknown operator {op!r} for {column!r}; use one of "
                f"{', '.join(sorted(OPERATORS))} or not"
            )
        operands = operand if op == "in" else [operand]
        if op == "in" and not isinstance(operand, list):
            raise InvalidFilter(f"'in' for {column!r} needs a list")
        if op == "is":
            operands = ["null" if operand is None else str(operand).lower()]
        if op in ("like", "ilike"):
            if not isinstance(operand, str):
                raise InvalidFilter(f"'{op}' for {column!r} needs a pattern string")
            operands = [like_operand(operand)]
        return _condition(column, op, operands, negated)
    return _condition(column, "eq", [value], negated)


def _condition(column: str, op: str, values: Iterable[Any], negated: bool = False) -> Clause:
    items = list(values)
    if op == "in":
        if not items:
            raise InvalidFilter(f"'in' for {column!r} needs at least one value")
        if len(items) > MAX_IN_VALUES:
            raise InvalidFilter(f"'in' for {column!r} allows at most {MAX_IN_VALUES} values")
    if op == "is":
        word = str(items[0]).lower()
        if word not in IS_VALUES:
            raise InvalidFilter(
                f"'is' for {column!r} takes null, true, false or unknown; got {items[0]!r}"
            )
        # `is unknown` tests for NULL as `is null` does, on boolean columns only.
        return (column, "is", (None if word == "null" else word,), negated)
    for item in items:
        if isinstance(item, dict | list):
            raise InvalidFilter(f"filter value for {column!r} must be a scalar")
        if item is None and op != "in":
            raise InvalidFilter(f"use is.null to match nulls in {column!r}")
    if op in ("like", "ilike"):
        like_pattern(str(items[0]))  # refuses a pattern Postgres would refuse
    keys = tuple(canonical(item) for item in items)
    return (column, op, keys, negated)  # type: ignore[return-value]
