"""The filter-operator table the official clients are driven through.

Used by tests/test_supabase_js.py and tests/test_supabase_python_client.py:
each filter as a Supabase app writes it, and the same test as the SQL
Postgres evaluates, so what a client receives is compared with Postgres.
"""

from __future__ import annotations

import asyncpg

FILTER_TABLE = """
CREATE TABLE public.filter_compat (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text, note text, qty integer, flag boolean
);
SELECT realtime_bridge.track('public.filter_compat');
"""
FILTER_ROWS: list[tuple[str | None, str | None, int | None, bool | None]] = [
    ("abc", None, 1, True),
    ("xABCx", "n", 2, False),
    ("a_c", None, 3, None),
    ("a%c", "n", None, True),
    ("ÀBC", None, 1, False),
    (None, "n", 2, None),
    ("İstanbul", None, 3, True),
    ("0001", "n", None, False),
    ("1", None, 1, None),
    ("line\nabc", "n", 2, True),
]
FILTER_CASES: dict[str, str] = {
    "name=ilike.*abc*": "name ILIKE '%abc%'",
    "name=like.*abc*": "name LIKE '%abc%'",
    "name=like.a_c": "name LIKE 'a_c'",
    "name=like.a\\_c": "name LIKE 'a\\_c'",
    "name=ilike.istanbul": "name ILIKE 'istanbul'",
    "note=is.null": "note IS NULL",
    "note=not.is.null": "NOT (note IS NULL)",
    "name=not.eq.abc": "NOT (name = 'abc')",
    "name=eq.0001": "name = '0001'",
    "qty=not.in.(1,2)": "NOT (qty IN (1, 2))",
    "qty=in.(3,null)": "qty IN (3, NULL)",
    "flag=not.is.true": "NOT (flag IS TRUE)",
    "flag=is.unknown": "flag IS UNKNOWN",
    "flag=is.false,name=not.like.*x*": "flag IS FALSE AND NOT (name LIKE '%x%')",
}


async def insert_filter_rows(db: asyncpg.Connection) -> list[int]:
    ids: list[int] = []
    for row in FILTER_ROWS:
        ids.append(
            await db.fetchval(
                "INSERT INTO filter_compat (name, note, qty, flag) VALUES ($1, $2, $3, $4) "
                "RETURNING id",
                *row,
            )
        )
    return ids


async def filter_expectations(db: asyncpg.Connection) -> dict[str, list[int]]:
    """For each of FILTER_CASES, the ids Postgres's WHERE clause selects."""
    return {
        spec: [
            r["id"] for r in await db.fetch(f"SELECT id FROM filter_compat WHERE {sql} ORDER BY id")
        ]
        for spec, sql in FILTER_CASES.items()
    }
