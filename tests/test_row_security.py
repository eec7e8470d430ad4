"""Row-level security for postgres_changes (ROW_SECURITY=<table>=rls), on a real Postgres.

Every delivery is compared with what Postgres itself shows the same user:
`SET ROLE authenticated`, `request.jwt.claims`, `SELECT ... FROM table`.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

ALICE = str(uuid.UUID(int=1))
BOB = str(uuid.UUID(int=2))
CAROL = str(uuid.UUID(int=3))

SCHEMA = """
CREATE TABLE public.orgs_members (org text NOT NULL, member uuid NOT NULL);
CREATE TABLE public.notes (
    id text PRIMARY KEY,
    owner uuid,
    org text,
    body text
);
ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON public.notes, public.orgs_members TO anon, authenticated;
CREATE POLICY own ON public.notes FOR SELECT TO authenticated USING (owner = auth.uid());
-- A join through another table: members of the note's org see it too.
CREATE POLICY org ON public.notes FOR SELECT TO authenticated USING (
    EXISTS (SELECT 1 FROM public.orgs_members m
            WHERE m.org = notes.org AND m.member = auth.uid())
);
-- Restrictive: nobody sees a note whose body says so, whatever else allows it.
CREATE POLICY unhidden ON public.notes AS RESTRICTIVE FOR SELECT USING (body IS DISTINCT FROM 'hidden');
"""


def claims_of(sub: str | None, role: str = "authenticated", **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role, **extra}
    if sub is not None:
        claims["sub"] = sub
    return claims


async def postgres_shows(
    db: asyncpg.Connection, table: str, claims: dict[str, Any], role: str = "authenticated"
) -> set[str]:
    """The ids `role` with `claims` sees with a plain SELECT under the table's RLS."""
    async with db.transaction():
        await db.execute(
            "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
            role,
            orjson.dumps(claims).decode(),
        )
        rows = await db.fetch(f"SELECT id FROM {table}")
    return {r["id"] for r in rows}


async def visible_rows(
    db: asyncpg.Connection, table: str, rows: list[dict[str, Any]], viewers: list[dict[str, Any]]
) -> list[set[int]]:
    found = await db.fetch(
        "SELECT viewer, visible FROM realtime_bridge.visible_rows($1::regclass, $2::jsonb[], $3::jsonb[])",
        table,
        [orjson.dumps(r).decode() for r in rows],
        [orjson.dumps(v).decode() for v in viewers],
    )
    out: list[set[int]] = [set() for _ in viewers]
    for r in found:
        out[r["viewer"] - 1] = set(r["visible"])
    return out


async def test_visible_rows_agrees_with_a_select_under_the_users_role(
    db: asyncpg.Connection,
) -> None:
    await db.execute(SCHEMA)
    await db.execute("INSERT INTO orgs_members VALUES ('acme', $1)", CAROL)
    rows = [
        {"id": "1", "owner": ALICE, "org": None, "body": "a"},
        {"id": "0001", "owner": BOB, "org": None, "body": "b"},
        {"id": "2", "owner": BOB, "org": "acme", "body": "c"},
        {"id": "3", "owner": ALICE, "org": "acme", "body": "hidden"},
        {"id": "4", "owner": None, "org": None, "body": None},
    ]
    for r in rows:
        await db.execute(
            "INSERT INTO notes SELECT * FROM jsonb_populate_record(NULL::notes, $1::jsonb)",
            orjson.dumps(r).decode(),
        )
    viewers = [
        {"role": "authenticated", "claims": claims_of(ALICE)},
        {"role": "authenticated", "claims": claims_of(BOB)},
        {"role": "authenticated", "claims": claims_of(CAROL)},
        {"role": "anon", "claims": claims_of(None, "anon")},
        {"role": "authenticated", "claims": claims_of("not-a-uuid")},
        {"role": "service_role", "claims": claims_of(None, "service_role")},
    ]
    got = await visible_rows(db, "public.notes", rows, viewers)
    for viewer, indexes in zip(viewers[:4], got[:4], strict=True):
        expected = await postgres_shows(db, "public.notes", viewer["claims"], viewer["role"])
        assert {rows[i - 1]["id"] for i in indexes} == expected
    assert [{rows[i - 1]["id"] for i in s} for s in got[:3]] == [{"1"}, {"0001", "2"}, {"2"}]
    assert got[3] == set()  # anon: no policy for it
    assert got[4] == set()  # its policy raises (no uuid): nothing, as the SELECT fails
    assert got[5] == set()  # service_role has no SELECT grant here: nothing either
    # The session is back to its own role and claims afterwards.
    assert await db.fetchval("SELECT current_user = session_user") is True
    assert await db.fetchval("SELECT current_setting('request.jwt.claims', true)") in (None, "")
