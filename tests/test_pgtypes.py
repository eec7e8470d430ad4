"""Typed filters agree with Postgres: the same values, the same operator, the same answer.

For each column type Hypothesis draws a row value and filter values of
awkward shapes; Postgres evaluates ``value op literal::type`` and the
bridge's `Condition` evaluates the filter against the row as the bridge
receives it (``to_jsonb`` decoded). A literal Postgres cannot read in the
type must be refused as an invalid filter.
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
from realtime_bridge.filters import parse_filter
from realtime_bridge.hub import Channel
from realtime_bridge.pgtypes import ColumnType

UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
NUMBERISH = st.text(alphabet="0123456789.e+- _x\u0661\uff11", max_size=6)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
offsets = st.integers(-12, 12).map(lambda h: timezone(timedelta(hours=h)))

VALUES: dict[str, st.SearchStrategy[str]] = {
    "text": st.one_of(
        st.sampled_from(["0001", "1", "1.0", " 1", "1 ", "", "a", "B", "é", "\u0661"]),
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
    ),
    "int8": st.one_of(
        st.integers(-(2**63), 2**63 - 1).map(str),
        st.sampled_from(["0001", "1.0", "1e3", " 1", "+1", "-0", "1_000", "0x1F", "0b1", "_1"]),
        NUMBERISH,
    ),
    "int2": st.one_of(st.integers(-40000, 40000).map(str), NUMBERISH),
    "numeric": st.one_of(
        # Row values arrive through JSON as floats: exact to 15 significant digits
        # (documented); beyond that the bridge compares at float precision.
        st.decimals(
            min_value=-(10**11), max_value=10**11, allow_nan=False, allow_infinity=False, places=3
        ).map(str),
        st.sampled_from(["1", "1.0", "1.000", "1e3", "NaN", "Infinity", "-inf", ".5", "5."]),
        NUMBERISH,
    ),
    "float8": st.one_of(
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.sampled_from(["1", "1.0", "1e3", "NaN", "Infinity", "-inf", "-0", ".5", "1e400"]),
        NUMBERISH,
    ),
    "bool": st.sampled_from(
        ["t", "true", "TRUE", " yes", "on", "of", "off", "1", "0", "n", "o", "maybe", ""]
    ),
    "uuid": st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.sampled_from([UUID, UUID.upper(), "{" + UUID + "}", UUID.replace("-", ""), " " + UUID]),
    ),
    "timestamptz": st.one_of(
        st.builds(lambda d, tz: d.astimezone(tz).isoformat(), moments, offsets),
        st.sampled_from(["infinity", "-infinity", "2024-01-01", "2024-01-01 00:00:00+00"]),
    ),
}
OPS = {"eq": "=", "neq": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


async def postgres_says(
    db: asyncpg.Connection, kind: str, value: str, op: str, literals: list[str]
) -> tuple[Any, bool | None] | None:
    """(the row value as the bridge sees it, Postgres's answer); None: no such row value.

    The answer is None when Postgres cannot read a literal in the type.
    """
    collate = ' COLLATE "C"' if kind == "text" else ""
    try:
        seen = await db.fetchval(f"SELECT to_jsonb($1::text::{kind})::text", value)
    except asyncpg.DataError:
        return None
    row_value = orjson.loads(seen)
    if op == "in":
        right = "(" + ", ".join(f"${i + 2}::text::{kind}" for i in range(len(literals))) + ")"
        sql = f"SELECT $1::text::{kind}{collate} IN {right}"
    else:
        sql = f"SELECT $1::text::{kind}{collate} {OPS[op]} $2::text::{kind}"
    try:
        answer = await db.fetchval(sql, value, *literals)
    except asyncpg.DataError:
        return row_value, None
    return row_value, bool(answer)


async def check(
    db: asyncpg.Connection, kind: str, value: str, op: str, literals: list[str]
) -> None:
    said = await postgres_says(db, kind, value, op, literals)
    if said is None:
        return
    row_value, answer = said
    operand: Any = literals if op == "in" else literals[0]
    spec = {"c": {op: operand}}
    if answer is None:
        with pytest.raises(InvalidFilter):
            parse_filter(spec, {"c": kind})
        return
    flt = parse_filter(spec, {"c": kind})
    assert flt.matches({"c": row_value}) is answer, (kind, value, op, literals, row_value)
    if op in ("eq", "in"):
        # The hub's index finds exactly the subscriptions whose filter says yes.
        channel = Channel("t", {"c": kind}, None)
        key = channel.type_of("c").key(row_value)
        column, keys = flt.index_key() or ("", ())
        assert column == "c"
        assert (key in keys) is answer


def run_property(
    loop: asyncio.AbstractEventLoop, db: asyncpg.Connection, kind: str, examples: int
) -> None:
    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        value=VALUES[kind],
        op=st.sampled_from([*OPS, "in"]),
        literals=st.lists(VALUES[kind], min_size=1, max_size=3),
        same=st.booleans(),
    )
    def body(value: str, op: str, literals: list[str], same: bool) -> None:
        if same:
            literals = [value, *literals[1:]]
        if op != "in":
            literals = literals[:1]
        run(check(db, kind, value, op, literals))

    body()


@pytest.mark.parametrize("kind", list(VALUES))
async def test_conditions_answer_like_postgres(db: asyncpg.Connection, kind: str) -> None:
    await asyncio.to_thread(run_property, asyncio.get_running_loop(), db, kind, 150)


def test_unknown_types_compare_exactly_as_text() -> None:
    flt = parse_filter({"c": "1"})
    assert flt.matches({"c": "1"})
    assert not flt.matches({"c": "0001"})
    assert not flt.matches({"c": 1.0})
    assert ColumnType("").key("007") != ColumnType("").key("7")


def test_a_literal_the_type_cannot_read_is_an_invalid_filter() -> None:
    with pytest.raises(InvalidFilter, match="not a valid int8 for column 'id'") as caught:
        parse_filter("id=eq.abc", {"id": "int8"})
    assert caught.value.frame()["code"] == "invalid_filter"
