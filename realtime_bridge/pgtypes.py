"""Column types: how a column's values compare, the way Postgres compares them.

Filters and row scopes compare a row's value with a value the client (or
its token) wrote as text. Postgres reads that text *as the column's type*
and compares typed values, so this module does the same: a `ColumnType`
turns both sides into a comparison key, and equal keys mean Postgres's `=`
would say true. The hub indexes subscriptions by the same keys, so an
index lookup and a filter test always agree.

* text, varchar, name: exactly (``"0001"`` is not ``"1"``); bpchar without
  trailing blanks; citext case-insensitively. Order is by code point, which
  is Postgres's ``COLLATE "C"``; under another collation `lt`/`gt` on text
  can differ from the database's own ordering.
* int2/int4/int8: as integers, read by Postgres 16's rules (blanks around,
  a sign, ``_`` between digits, ``0x``/``0o``/``0b``); ``"1.0"`` is no integer.
* numeric: as decimals (``1 = 1.0``); float4/float8 as binary floats.
  NaN equals NaN and sorts above every number, as in Postgres.
* boolean: ``t``/``true``/``yes``/``on``/``1`` and their prefixes, like Postgres.
* uuid: as a 128-bit number (case and hyphens do not matter).
* timestamptz, timestamp, date: ISO 8601 text (a timestamptz without an
  offset is read as UTC) and ``infinity``.
* anything else, or a column whose type is not known: exactly as text,
  never by guessing from a string's shape.

A value that is not valid text for its type (``"abc"`` for an integer) has
no key (`key` returns None): it equals nothing, as a cast would fail.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

Key = Hashable


def text_form(value: Any) -> str:
    """A JSON value as the text it stands for (the fallback comparison form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return orjson.dumps(value).decode()


_INTEGER = re.compile(
    r"\s*[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|[0-9](?:_?[0-9])*)\s*",
    re.ASCII,
)
_INT_RANGE = {"int2": 16, "int4": 32, "int8": 64}
_DIGITS = r"[0-9](?:_?[0-9])*"
_NUMERIC = re.compile(
    rf"\s*(?P<nan>nan)?(?(nan)|[+-]?(?:(?P<inf>inf|infinity)|"
    rf"(?P<radix>0[xob][0-9a-f_]+)|(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})"
    rf"(?:e[+-]?{_DIGITS})?))\s*",
    re.ASCII | re.IGNORECASE,
)
_FLOAT = re.compile(
    r"\s*(?:(?P<word>[+-]?(?:inf|infinity|nan))|(?P<hex>[+-]?0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)"
    r"(?:p[+-]?[0-9]+)?)|(?P<dec>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?))\s*",
    re.ASCII | re.IGNORECASE,
)
_UUID = re.compile(r"(\{)?[0-9a-f]{4}(?:-?[0-9a-f]{4}){7}(?(1)\})", re.ASCII | re.IGNORECASE)
_TRUE = {"t", "tr", "tru", "true", "y", "ye", "yes", "on", "1"}
_FALSE = {"f", "fa", "fal", "fals", "false", "n", "no", "of", "off", "0"}
_BLANKS = " \t\n\r\f\v"
_NAN: Key = (1, 0)


_RADIX = {"x": 16, "o": 8, "b": 2}


def _radix_int(text: str) -> int:
    """`[+-]digits`, or `[+-]0x…`/`0o…`/`0b…` (already checked by a pattern)."""
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    base = _RADIX.get(digits[1:2].lower(), 10) if digits[:1] == "0" else 10
    return sign * int(digits[2:] if base != 10 else digits, base)


def _integer(value: Any, bits: int) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        number = _radix_int(value.strip(_BLANKS).replace("_", ""))
    else:
        return None
    limit = 1 << (bits - 1)
    return number if -limit <= number < limit else None


def _numeric(value: Any) -> Key | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value)) if math.isfinite(value) else Decimal(value)
    elif isinstance(value, str):
        match = _NUMERIC.fullmatch(value)
        if match is None:
            return None
        text = value.strip(_BLANKS).replace("_", "")
        if match["radix"]:
            try:
                number = Decimal(_radix_int(text))
            except ValueError:
                return None
        else:
            try:
                number = Decimal(text)
            except InvalidOperation:
                return None
    else:
        return None
    return _NAN if number.is_nan() else (0, number)


def _float(value: Any, single: bool) -> Key | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        number = float(value)
    elif isinstance(value, str):
        match = _FLOAT.fullmatch(value)
        if match is None:
            return None
        text = value.strip(_BLANKS)
        number = float.fromhex(text) if match["hex"] else float(text)
        if match["word"] is None:
            mantissa = re.split("[pP]" if match["hex"] else "[eE]", text)[0]
            nonzero = re.search(
                "[1-9a-fA-F]" if match["hex"] else "[1-9]",
                mantissa[2:] if match["hex"] else mantissa,
            )
            if math.isinf(number) or (number == 0 and nonzero):
                return None  # out of range, as Postgres says
    else:
        return None
    if single and math.isfinite(number):
        try:
            number = struct.unpack("f", struct.pack("f", number))[0]
        except OverflowError:
            return None
    return _NAN if math.isnan(number) else (0, number)


def _boolean(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip(_BLANKS).lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def _uuid(value: Any) -> int | None:
    if isinstance(value, uuid.UUID):
        return value.int
    if isinstance(value, str) and _UUID.fullmatch(value):
        return int(value.strip("{}").replace("-", ""), 16)
    return None


_MOMENTS = {"-infinity": 0, "infinity": 2, "+infinity": 2}


def _moment(kind: str) -> Callable[[Any], Key | None]:
    floor: Any = date.min if kind == "date" else datetime.min
    if kind == "timestamptz":
        floor = datetime.min.replace(tzinfo=UTC)

    def key(value: Any) -> Key | None:
        if isinstance(value, datetime | date):
            moment: Any = value
        elif isinstance(value, str):
            text = value.strip(_BLANKS)
            if text.lower() in _MOMENTS:
                return (_MOMENTS[text.lower()], floor)
            try:
                moment = (date if kind == "date" else datetime).fromisoformat(text)
            except ValueError:
                return None
        else:
            return None
        if kind == "date":
            return (1, moment.date() if isinstance(moment, datetime) else moment)
        if not isinstance(moment, datetime):
            moment = datetime(moment.year, moment.month, moment.day)
        if kind == "timestamp":
            return (1, moment.replace(tzinfo=None))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (1, moment.astimezone(UTC))

    return key


def _text(value: Any) -> str | None:
    return None if value is None else text_form(value)


def _keyer(name: str) -> Callable[[Any], Key | None]:
    if name in _INT_RANGE:
        bits = _INT_RANGE[name]
        return lambda value: _integer(value, bits)
    if name == "numeric":
        return _numeric
    if name in ("float4", "float8"):
        single = name == "float4"
        return lambda value: _float(value, single)
    if name == "bool":
        return _boolean
    if name == "uuid":
        return _uuid
    if name in ("timestamptz", "timestamp", "date"):
        return _moment(name)
    if name == "bpchar":
        return lambda value: None if value is None else text_form(value).rstrip(" ")
    if name == "citext":
        return lambda value: None if value is None else text_form(value).lower()
    return _text


@dataclass(frozen=True, slots=True)
class ColumnType:
    """One column's Postgres type (`typname`, e.g. ``int8``; ``""`` when unknown)."""

    name: str = ""
    _key: Callable[[Any], Key | None] = field(
        init=False, repr=False, compare=False, hash=False, default=_text
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key", _keyer(self.name))

    @property
    def known(self) -> bool:
        return bool(self.name)

    def key(self, value: Any) -> Key | None:
        """The comparison key of a row value or of text written for this column (None: none)."""
        if value is None:
            return None
        return self._key(value)

    def literal(self, key: Key) -> str:
        """Text Postgres reads back as the value whose key is `key` (for SQL casts)."""
        if key == _NAN:
            return "NaN"
        if isinstance(key, tuple):
            rank, value = key
            if rank == 0 and isinstance(value, date):
                return "-infinity"
            if rank == 2:
                return "infinity"
            key = value
        if isinstance(key, bool):
            return "true" if key else "false"
        if isinstance(key, date):
            return key.isoformat()
        if isinstance(key, float):
            return repr(key)
        if self.name == "uuid" and isinstance(key, int):
            return str(uuid.UUID(int=key))
        return str(key)


UNKNOWN = ColumnType()

_PYTHON_TYPES: dict[type, str] = {
    bool: "bool",
    int: "int8",
    float: "float8",
    Decimal: "numeric",
    str: "text",
    datetime: "timestamptz",
    date: "date",
    uuid.UUID: "uuid",
}


def python_column_type(annotation: Any) -> ColumnType:
    """The column type a pydantic field's annotation stands for (UNKNOWN when unsure)."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return python_column_type(args[0])
        return UNKNOWN
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        kinds = {type(v) for v in values}
        return python_column_type(kinds.pop()) if len(kinds) == 1 else UNKNOWN
    if isinstance(annotation, type):
        for kind, name in _PYTHON_TYPES.items():
            if annotation is kind:
                return ColumnType(name)
    return UNKNOWN
