"""Every filter operator, negated or not, answers as Postgres's WHERE clause does.

Hypothesis draws a column type, a row value (NULL included), an operator
(`eq` … `in`, `is`, `like`, `ilike`), a negation and operands of awkward
shapes; Postgres evaluates ``[NOT] (value op literal)`` in the column's type
and the row matches exactly when that is TRUE (three-valued logic: unknown
is no). The bridge's `Filter`, built from the same spec, must agree; and
when the hub can index the filter, the index must find every row it
matches. An operand Postgres refuses (not a value of the type, `like` on a
number, `is.true` on text) must be refused as an invalid filter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_bridge.errors import InvalidFilter
from realtime_bridge.filters import NULL_KEY, parse_filter
from realtime_bridge.hub import Channel
from realtime_bridge_client.filters import like_operand

# Case pairs Postgres folds one code point at a time (İ → i, K Kelvin → k,
# final ς stays ς), LIKE's own wildcards and escape, and PostgREST's `*`.
LETTERS = "aAbBzZéÉßẞσΣςİiKk ._%*\\\n"
texts = st.text(alphabet=LETTERS, max_size=6)
moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
offsets = st.integers(-12, 12).map(lambda h: timezone(timedelta(hours=h)))
UUIDS = ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"]

VALUES: dict[str, st.SearchStrategy[str]] = {
    "text": st.one_of(texts, st.sampled_from(["0001", "1", "abc", "ABC", "a_c", "a%c"])),
    "varchar": texts,
    "int8": st.one_of(
        st.integers(-5, 5).map(str), st.sampled_from(["0001", "10", "-0", "1.0", "x"])
    ),
    "numeric": st.one_of(
        st.sampled_from(["1", "1.0", "1.50", "-2", "NaN", "Infinity", "0.1", "abc"]),
        st.decimals(-100, 100, places=2, allow_nan=False).map(str),
    ),
    "bool": st.sampled_from(["t", "f", "true", "FALSE", "yes", "0", "maybe"]),
    "uuid": st.one_of(st.sampled_from(UUIDS), st.uuids().map(str)),
    "timestamptz": st.one_of(
        st.builds(lambda d, tz: d.astimezone(tz).isoformat(), moments, offsets),
        st.sampled_from(["infinity", "2024-01-01", "2024-01-01T00:00:00Z"]),
    ),
}
TEXTUAL = {"text", "varchar"}
COMPARE = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}
IS = ["null", "unknown", "true", "false"]


def operators(kind: str) -> list[str]:
    ops = [*COMPARE, "in", "is"]
    if kind in TEXTUAL:
        ops += ["like", "ilike"]
    return ops


def sql_for(kind: str, op: str, operand: Any) -> tuple[str, list[Any]]:
    """``$1::kind op <operand>`` with its parameters after $1 (the un-negated test)."""
    value = f"$1::text::{kind}"
    if op == "is":
        return f"{value} IS {operand.upper()}", []
    if op in ("like", "ilike"):
        return f"{value} {op.upper()} $2::text", [like_operand(operand)]
    if op == "in":
        items = ", ".join(f"${i + 2}::text::{kind}" for i in range(len(operand)))
        return f"{value} IN ({items})", list(operand)
    collate = ' COLLATE "C"' if kind in TEXTUAL else ""
    return f"{value}{collate} {COMPARE[op]} $2::text::{kind}", [operand]


REFUSED = (
    asyncpg.DataError,
    asyncpg.DatatypeMismatchError,
    asyncpg.UndefinedFunctionError,
    asyncpg.InvalidEscapeSequenceError,
)


async def postgres_says(
    db: asyncpg.Connection, kind: str, value: str | None, sql: str, params: list[Any]
) -> tuple[Any, bool | None, bool] | None:
    """(the row value as the bridge gets it, the SQL answer, whether Postgres refused).

    None: `value` is no value of the type (there is no such row).
    """
    try:
        seen = await db.fetchval(f"SELECT to_jsonb($1::text::{kind})::text", value)
    except asyncpg.DataError:
        return None
    row_value = None if seen is None else orjson.loads(seen)
    try:
        answer = await db.fetchval(f"SELECT ({sql})", value, *params)
        # Ask with a non-NULL value too: a NULL short-circuits some refusals.
        probe = (
            "2024-01-01"
            if kind == "timestamptz"
            else {"bool": "t", "uuid": UUIDS[0]}.get(kind, "1")
        )
        await db.fetchval(f"SELECT ({sql})", probe, *params)
    except REFUSED:
        return row_value, None, True
    return row_value, answer, False


async def check(
    db: asyncpg.Connection, kind: str, value: str | None, op: str, operand: Any, negated: bool
) -> None:
    sql, params = sql_for(kind, op, operand)
    said = await postgres_says(db, kind, value, sql, params)
    if said is None:
        return
    row_value, answer, refused = said
    condition: Any = {op: operand}
    spec = {"c": {"not": condition} if negated else condition}
    if refused:
        with pytest.raises(InvalidFilter):
            parse_filter(spec, {"c": kind})
        return
    if op in ("like", "ilike") and dangling_escape(operand):
        # Postgres refuses such a pattern only once a match reaches its end; the
        # bridge refuses it at subscribe time rather than on some rows.
        with pytest.raises(InvalidFilter, match="escape character"):
            parse_filter(spec, {"c": kind})
        return
    flt = parse_filter(spec, {"c": kind})
    expected = answer is (not negated) if answer is not None else False
    row = {"c": row_value}
    assert flt.matches(row) is expected, (kind, value, row_value, spec, answer)
    # The string form says the same (the Supabase clients send strings).
    text = flt.describe()
    assert parse_filter(text, {"c": kind}).matches(row) is expected, text
    indexed = flt.index_key()
    if indexed is not None:
        channel = Channel("t", {"c": kind}, None)
        key = NULL_KEY if row_value is None else channel.type_of("c").key(row_value)
        if expected:
            assert key in indexed[1], (spec, row_value, indexed)


def dangling_escape(pattern: str) -> bool:
    return (len(pattern) - len(pattern.rstrip("\\"))) % 2 == 1


def operand_for(data: st.DataObject, kind: str, op: str, value: str | None) -> Any:
    same = value if value is not None else "1"
    draw = data.draw
    if op == "is":
        return draw(st.sampled_from(IS))
    if op in ("like", "ilike"):
        # Patterns made from the value (so matches are common) or drawn freely.
        mutate = st.lists(st.sampled_from(["keep", "_", "%", "*", "swap", "drop"]), min_size=6)
        edits = draw(mutate)
        built = []
        for char, edit in zip(same, edits, strict=False):
            if edit == "keep":
                built.append(char)
            elif edit == "swap":
                built.append(char.swapcase() if len(char.swapcase()) == 1 else char)
            elif edit != "drop":
                built.append(edit)
        return draw(st.one_of(st.just("".join(built)), texts))
    literal = st.one_of(st.just(same), VALUES[kind])
    if op == "in":
        items: list[str | None] = draw(st.lists(literal, min_size=1, max_size=3))
        if draw(st.booleans()):
            items.append(None)  # SQL's `x IN (…, NULL)`: unknown, never false
        return items
    return draw(literal)


def run_property(loop: asyncio.AbstractEventLoop, db: asyncpg.Connection, examples: int) -> None:
    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(data=st.data())
    def body(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(list(VALUES)), label="kind")
        value = data.draw(st.one_of(st.none(), VALUES[kind]), label="value")
        op = data.draw(st.sampled_from(operators(kind)), label="op")
        operand = operand_for(data, kind, op, value)
        negated = data.draw(st.booleans(), label="negated")
        run(check(db, kind, value, op, operand, negated))

    body()


async def test_operators_answer_like_postgres(db: asyncpg.Connection) -> None:
    await asyncio.to_thread(run_property, asyncio.get_running_loop(), db, 600)


# Cases Hypothesis may take long to find: each is checked against Postgres too.
TABLE: list[tuple[str, str | None, str, Any]] = [
    ("text", "ΑΣ", "ilike", "ας"),  # Python's lower() would write a final ς
    ("text", "ΑΣ", "ilike", "ασ"),
    ("text", "İstanbul", "ilike", "istanbul"),  # İ folds to one code point, i
    ("text", "\u212a", "ilike", "k"),  # KELVIN SIGN
    ("text", "straße", "ilike", "STRASSE"),  # no full case folding: ß is not ss
    ("text", "ẞ", "ilike", "ß"),
    ("text", "a_c", "like", "a\\_c"),
    ("text", "abc", "like", "a\\_c"),
    ("text", "50%", "like", "*\\%"),
    ("text", "a*c", "like", "a\\*c"),  # PostgREST reads every * as %, escaped or not
    ("text", "line\nbreak", "like", "line_break"),
    ("text", "line\nbreak", "like", "*break"),
    ("text", "ABC", "like", "abc"),
    ("text", "abc", "like", "abc"),
    ("text", None, "like", "*"),
    ("text", "", "like", "*"),
    ("text", "\\", "like", "\\\\"),
    ("varchar", "Abc", "ilike", "a*"),
    ("bool", None, "is", "unknown"),
    ("bool", "f", "is", "true"),
    ("bool", None, "is", "true"),
    ("int8", None, "is", "null"),
    ("int8", "1", "in", ["1", None]),
    ("int8", "2", "in", ["1", None]),
    ("int8", None, "in", ["1"]),
    ("int8", "1", "like", "1"),
    ("text", "x", "is", "true"),
    ("numeric", "NaN", "neq", "NaN"),
    ("uuid", UUIDS[0], "eq", UUIDS[1]),
    # Patterns a backtracking regex takes years over (one subscriber's filter
    # would stop everyone's events); Postgres answers at once, and so must we.
    ("text", "a" * 3000, "like", "*a" * 1000 + "*b"),
    ("text", "a" * 3000, "like", "*a" * 1000 + "*"),
    ("text", "ab" * 1500, "ilike", "*A_" * 900 + "*B"),
    ("text", "abcabd", "like", "*ab_*d"),
    ("text", "abcabd", "like", "a*c*a*"),
    ("text", "ab", "like", "a*b*"),
    ("text", "ab", "like", "*ab*ab*"),
]


async def test_edge_cases_answer_like_postgres(db: asyncpg.Connection) -> None:
    # One database for the whole table (a fresh one per case costs a second each).
    for kind, value, op, operand in TABLE:
        for negated in (False, True):
            await check(db, kind, value, op, operand, negated)
