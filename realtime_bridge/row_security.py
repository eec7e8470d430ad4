"""Row-level security for table changes: who may see a row, asked of Postgres.

A table configured ``rls`` (``ROW_SECURITY=public.notes=rls``, or a plugin's
``row_security = "rls"``) delivers a change to a subscriber only if a
``SELECT`` under that subscriber's role and JWT claims would see the row.
Postgres decides, with the table's own policies (``auth.uid()``,
``auth.jwt()`` and ``current_setting('request.jwt.claims')`` work as on
Supabase), in ``realtime_bridge.visible_rows()``: one statement for a batch
of row images and every distinct viewer interested in them, never one per
subscriber.

The row images are the change's own (the new row for INSERT / UPDATE, the
old one for UPDATE / DELETE), not a re-read of the table: the row may have
changed or gone since. Other tables a policy reads (a membership join) are
read as they are when the check runs, a moment after the commit.

The hub (`hub.Hub`) calls `RowSecurity.check` off its hot path, per
channel; this module knows the database, the hub only the `Visibility`
callable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from realtime_bridge.auth import Principal

logger = logging.getLogger(__name__)

# JSON passed as text: the bridge's pool encodes jsonb parameters itself (`init_connection`).
VISIBLE_ROWS_SQL = """
SELECT viewer, visible
FROM realtime_bridge.visible_rows($1::regclass, $2::text[]::jsonb[], $3::text[]::jsonb[])
"""


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who a row-secured subscription reads as: a database role and the token's claims.

    Two tokens with different claims are two viewers (a policy may read any
    claim); the same claims are one, however many subscriptions share them.
    """

    role: str
    claims: str  # JSON text, as request.jwt.claims holds it

    @classmethod
    def of(cls, principal: Principal) -> Viewer:
        return cls(str(principal.role), orjson.dumps(principal.claims).decode())

    def as_json(self) -> str:
        return '{"role":' + orjson.dumps(self.role).decode() + ',"claims":' + self.claims + "}"


# Errors no retry will cure (a dropped table, the migration not applied).
PERMANENT = (
    asyncpg.UndefinedTableError,
    asyncpg.UndefinedFunctionError,
    asyncpg.InvalidSchemaNameError,
)


def quoted(table: str) -> str:
    """`schema.name` (as the bridge names tables) as a regclass literal: "Mixed.Case" stays."""
    schema, _, name = table.rpartition(".")
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema or "public", name))


class RowSecurityUnavailable(Exception):
    """The policies could not be evaluated now (no database, or it is down): deliver nothing yet."""


class RowSecurity:
    """Evaluates tables' RLS policies for viewers over row images, in Postgres."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool
        self.statements = 0  # statements run (the bench reports them per change)
        self.failures = 0
        self.last_error: str | None = None

    async def check(
        self, table: str, rows: Sequence[Mapping[str, Any]], viewers: Sequence[Viewer]
    ) -> list[set[int]]:
        """For each viewer (in order), the indexes into `rows` it may see.

        Raises `RowSecurityUnavailable` when the database cannot be asked; the
        caller keeps the changes and asks again (fail closed, nothing lost).
        """
        if not rows or not viewers:
            return [set() for _ in viewers]
        # Grouped by role: what holds for a role is worked out once per group.
        order = sorted(range(len(viewers)), key=lambda i: viewers[i].role)
        pool = self._pool()
        if pool is None:
            raise RowSecurityUnavailable("no database to evaluate row-level security against")
        try:
            self.statements += 1
            found = await pool.fetch(
                VISIBLE_ROWS_SQL,
                quoted(table),
                [orjson.dumps(row, default=str).decode() for row in rows],
                [viewers[i].as_json() for i in order],
            )
        except PERMANENT as exc:
            # The table (or the function) is gone: nobody may see these rows. Said
            # loudly; retrying would hold the channel back for ever.
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error(
                "row-level security on %s cannot be evaluated, delivering nothing: %s", table, exc
            )
            return [set() for _ in viewers]
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise RowSecurityUnavailable(
                f"row-level security could not be evaluated: {exc}"
            ) from exc
        self.last_error = None
        visible: list[set[int]] = [set() for _ in viewers]
        for record in found:
            visible[order[record["viewer"] - 1]] = {i - 1 for i in record["visible"]}
        return visible
