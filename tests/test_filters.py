"""Filters: both spellings parse to the same thing; bad filters say what is wrong."""

from __future__ import annotations

import pytest

from realtime_bridge.errors import InvalidFilter
from realtime_bridge.filters import MAX_IN_VALUES, parse_filter

# The row's column types, as a channel knows them from the table.
TYPES = {
    "user_id": "text",
    "status": "text",
    "quantity": "numeric",
    "price": "numeric",
    "closed": "timestamptz",
    "flag": "bool",
}
ROW = {
    "user_id": "u1",
    "status": "open",
    "quantity": 10,
    "price": 101.5,
    "closed": None,
    "flag": True,
}


def test_equality_map_is_eq_and_in() -> None:
    assert parse_filter({"user_id": "u1", "status": ["open", "pending"]}, TYPES).matches(ROW)
    assert not parse_filter({"user_id": "u2"}).matches(ROW)
    assert not parse_filter({"status": ["closed", "pending"]}).matches(ROW)


def test_map_with_operator_objects() -> None:
    assert parse_filter({"quantity": {"gte": 10}}, TYPES).matches(ROW)
    assert not parse_filter({"quantity": {"gt": 10}}, TYPES).matches(ROW)
    assert parse_filter({"closed": None}, TYPES).matches(ROW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user_id=eq.u1", True),
        ("user_id=neq.u1", False),
        ("quantity=lt.11", True),
        ("quantity=lte.10", True),
        ("quantity=gt.9.5", True),
        ("quantity=gte.11", False),
        ("price=gt.101.4", True),
        ("status=in.(open,pending)", True),
        ('status=in.("closed","x,y")', False),
        ("closed=is.null", True),
        ("flag=is.true", True),
        ("flag=is.false", False),
        ("user_id=eq.u1,status=in.(open,pending),quantity=gt.5", True),
        ("user_id=eq.u1,quantity=gt.50", False),
    ],
)
def test_supabase_filter_strings(text: str, expected: bool) -> None:
    assert parse_filter(text, TYPES).matches(ROW) is expected


def test_values_compare_in_the_columns_type() -> None:
    assert parse_filter("price=eq.101.50", TYPES).matches(ROW)
    assert parse_filter({"quantity": "010"}, TYPES).matches(ROW)
    # "9" > "10" as text, but not as numbers.
    assert not parse_filter("quantity=lt.9", TYPES).matches(ROW)
    # Text is text, however much it looks like a number.
    assert not parse_filter("user_id=eq.1", TYPES).matches({"user_id": "0001"})
    # Without types every value compares exactly as text: no guessing from its shape.
    assert not parse_filter("quantity=eq.10.0").matches(ROW)
    assert parse_filter("quantity=eq.10").matches(ROW)


def test_missing_column_in_row_does_not_match() -> None:
    assert not parse_filter("other=eq.1").matches(ROW)
    assert not parse_filter("user_id=eq.u1").matches(None)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("user_id", "cannot parse"),
        ("user_id=like.u%", "unknown operator"),
        ("status=in.open", "parenthesised"),
        ("status=in.(a,b", "unbalanced"),
        ("flag=is.maybe", "null, true or false"),
        ("status=in.()", "at least one value"),
        ({"user_id": {"gt": 1, "lt": 2}}, "exactly one operator"),
        ({"user_id": {"like": "x"}}, "unknown operator"),
        ({"user_id": {"a": 1}}, "unknown operator"),
        ({"user_id": [{"a": 1}]}, "scalar"),
        (42, "must be an object"),
    ],
)
def test_invalid_filters_are_rejected_with_a_reason(spec: object, fragment: str) -> None:
    with pytest.raises(InvalidFilter, match=fragment):
        parse_filter(spec)


def test_in_list_length_is_bounded() -> None:
    values = ",".join(str(i) for i in range(MAX_IN_VALUES + 1))
    with pytest.raises(InvalidFilter, match="at most"):
        parse_filter(f"id=in.({values})")


def test_unknown_columns_are_rejected_when_columns_are_known() -> None:
    with pytest.raises(InvalidFilter, match="unknown column 'colour'") as caught:
        parse_filter({"colour": "red"}, columns={"user_id", "status"})
    assert caught.value.frame()["code"] == "invalid_filter"


def test_index_key_prefers_the_owner_column() -> None:
    flt = parse_filter({"status": "open", "user_id": "u1"})
    assert flt.index_key(prefer="user_id") == ("user_id", ("u1",))
    assert flt.index_key() == ("status", ("open",))
    assert parse_filter("quantity=gt.1").index_key() is None
    assert parse_filter("status=in.(open,closed)").index_key() == ("status", ("open", "closed"))
