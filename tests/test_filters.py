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
        ("user_id=match.u", "unknown operator 'match'"),
        ("user_id=not.match.u", "unknown operator 'match'"),
        ("user_id=not.not.eq.u", "unknown operator 'not'"),
        ("user_id=eq", "expected a value after eq."),
        ("user_id=like.u\\", "must not end with the escape character"),
        ("flag=is.maybe", "null, true, false or unknown"),
        ("status=in.open", "parenthesised"),
        ("status=in.(a,b", "unbalanced"),
        ("status=in.()", "at least one value"),
        ({"user_id": {"gt": 1, "lt": 2}}, "exactly one operator"),
        ({"user_id": {"match": "x"}}, "unknown operator"),
        ({"user_id": {"like": 1}}, "needs a pattern string"),
        ({"user_id": {"not": {"not": "x"}}}, "negates twice"),
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


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("quantity=like.1*", "'like' applies to text columns; 'quantity' is numeric"),
        ("quantity=not.ilike.1*", "'ilike' applies to text columns"),
        ("status=is.true", "'is.true' applies to boolean columns; 'status' is text"),
        ("quantity=is.unknown", "'is.unknown' applies to boolean columns"),
    ],
)
def test_operators_postgres_refuses_for_a_type_are_refused(spec: str, fragment: str) -> None:
    with pytest.raises(InvalidFilter, match=fragment) as caught:
        parse_filter(spec, TYPES)
    assert caught.value.frame()["code"] == "invalid_filter"
    assert caught.value.frame()["column"] in spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user_id=not.eq.u1", False),
        ("user_id=not.eq.u2", True),
        ("status=not.in.(closed,pending)", True),
        ("status=like.op*", True),
        ("status=like.OP*", False),
        ("status=ilike.OP*", True),
        ("status=ilike.%PE%", True),
        ("status=like.o_en", True),
        ("status=not.like.*en", False),
        ("closed=not.is.null", False),
        ("flag=not.is.false", True),
        ("flag=is.unknown", False),
        # SQL's three-valued logic: a NULL is neither equal nor unequal to anything.
        ("closed=not.eq.2024-01-01", False),
        ("closed=not.in.(2024-01-01)", False),
    ],
)
def test_negation_like_and_is(text: str, expected: bool) -> None:
    assert parse_filter(text, TYPES).matches(ROW) is expected


def test_map_form_negates_with_not() -> None:
    assert parse_filter({"closed": {"not": None}}, TYPES).describe() == "closed=not.is.null"
    assert parse_filter({"status": {"not": ["a", "b"]}}, TYPES).matches(ROW)
    assert not parse_filter({"status": {"not": "open"}}, TYPES).matches(ROW)
    assert parse_filter({"status": {"not": {"like": "x*"}}}, TYPES).matches(ROW)
    assert parse_filter({"status": {"ilike": "*EN"}}, TYPES) == parse_filter(
        "status=ilike.*EN", TYPES
    )


def test_an_unquoted_null_in_a_list_is_null() -> None:
    # As in a Postgres array literal ('{a,null}'): "null" quoted is the text.
    assert parse_filter("status=in.(open,null)").conditions[0].keys == ("open", None)
    assert parse_filter('status=in.(open,"null")').conditions[0].keys == ("open", "null")
    assert not parse_filter("user_id=in.(null)", TYPES).matches({"user_id": "null"})
    assert parse_filter('user_id=in.("null")', TYPES).matches({"user_id": "null"})


def test_index_keys_of_the_new_operators() -> None:
    from realtime_bridge.filters import NULL_KEY

    assert parse_filter("closed=is.null", TYPES).index_key() == ("closed", (NULL_KEY,))
    assert parse_filter("flag=is.true", TYPES).index_key() == ("flag", (True,))
    assert parse_filter("flag=is.unknown", TYPES).index_key() == ("flag", (NULL_KEY,))
    # A value narrows more than is.null, which many rows share.
    assert parse_filter("closed=is.null,user_id=eq.u1", TYPES).index_key() == ("user_id", ("u1",))
    assert parse_filter("closed=is.null,user_id=eq.u1", TYPES).index_key(prefer="closed") == (
        "closed",
        (NULL_KEY,),
    )
    # A like pattern without wildcards is equality (escapes read).
    assert parse_filter("status=like.a\\_b", TYPES).index_key() == ("status", ("a_b",))
    for unindexed in ("status=like.a_b", "status=like.a*", "status=ilike.open", "status=not.eq.x"):
        assert parse_filter(unindexed, TYPES).index_key() is None, unindexed


def test_the_client_package_matches_the_new_operators_with_sqls_nulls() -> None:
    # The Python client's own filters (text comparison, no column types) agree on
    # the operators and on NULL: what the bridge sends, the client keeps.
    from realtime_bridge_client.filters import parse_filter as client_filter

    row = {"name": "xABCx", "note": None, "flag": None, "qty": 3}
    cases = {
        "name=ilike.*abc*": True,
        "name=like.*abc*": False,
        "name=like.x___x": True,
        "note=not.eq.x": False,
        "note=is.null": True,
        "note=not.is.null": False,
        "flag=not.is.true": True,
        "flag=is.unknown": True,
        "qty=not.in.(1,2)": True,
        "qty=not.in.(1,null)": False,
    }
    for spec, expected in cases.items():
        assert client_filter(spec).matches(row) is expected, spec
        assert parse_filter(spec).matches(row) is expected, spec
