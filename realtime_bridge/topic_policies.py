"""Private channel authorization: RLS policies on `realtime.messages`, evaluated in Postgres.

Supabase decides who may use a private topic (a channel joined with
``config.private = true``) with row-level security on ``realtime.messages``:
a SELECT policy lets a user receive on it, an INSERT policy lets them send.
This module asks Postgres the same questions the same way (Supabase's
``Realtime.Tenants.Authorization``), so policies written for Supabase work
unchanged, ``realtime.topic()`` and ``auth.uid()`` included:

* read: inside a transaction, insert one probe row per extension
  (``broadcast``, ``presence``) for the topic as the bridge's own role;
  then switch to the caller (``set_config('role', ...)`` and
  ``request.jwt.claims`` & co., local to the transaction) and select the
  probes back; a visible probe means "may read". Rolled back.
* write: switch to the caller and insert a row for the topic; an
  ``insufficient_privilege`` error (RLS refused it) means "may not". Rolled back.

The service key passes without a query (Supabase's ``service_role``
bypasses RLS). Without a database (hosted mode with no DATABASE_URL), or
where ``realtime.messages`` does not exist, nobody else is admitted: the
answer is "no", never "everyone". A policy that raises (a uuid cast of a
sub that is no uuid, say) is a "no" too, as on Supabase.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping

import asyncpg
import orjson

from realtime_bridge.auth import Principal

logger = logging.getLogger(__name__)

# Header values that never go into `request.headers` (Supabase passes them all).
SECRET_HEADERS = frozenset({"authorization", "cookie", "apikey", "x-api-key"})

SET_CALLER_SQL = """
SELECT set_config('role', $1, true),
       set_config('realtime.topic', $2, true),
       set_config('request.jwt.claims', $3, true),
       set_config('request.jwt.claim.sub', $4, true),
       set_config('request.jwt.claim.role', $1, true),
       set_config('request.headers', $5, true)
"""

PROBE_SQL = """
INSERT INTO realtime.messages (id, topic, extension)
SELECT probe.id, $2, probe.extension
FROM unnest($1::uuid[], $3::text[]) AS probe (id, extension)
"""


class Extension(enum.StrEnum):
    BROADCAST = "broadcast"
    PRESENCE = "presence"


class PoliciesUnavailable(Exception):
    """The database could not be asked right now (a join fails; the client may retry)."""


class TopicPolicies:
    """Asks Postgres what a principal may do on a private topic."""

    def __init__(self, pool: Callable[[], asyncpg.Pool | None]) -> None:
        self._pool = pool
        self._warned = False

    async def can_read(
        self,
        principal: Principal,
        topic: str,
        extensions: Iterable[Extension],
        headers: Mapping[str, str] | None = None,
    ) -> dict[Extension, bool]:
        """For each extension, whether `principal` may receive it on `topic`."""
        wanted = list(dict.fromkeys(extensions))
        if principal.is_service:
            return dict.fromkeys(wanted, True)
        probes = {extension: uuid.uuid4() for extension in wanted}
        transaction = self._transaction()
        if transaction is None:
            return dict.fromkeys(wanted, False)
        async with transaction as conn:
            try:
                await conn.execute(
                    PROBE_SQL, list(probes.values()), topic, [str(e) for e in probes]
                )
                await self._become(conn, principal, topic, headers)
                rows = await conn.fetch(
                    "SELECT id FROM realtime.messages WHERE id = ANY($1::uuid[])",
                    list(probes.values()),
                )
            except asyncpg.PostgresError as exc:
                return self._refused(exc, wanted)
        visible = {row["id"] for row in rows}
        return {extension: probe in visible for extension, probe in probes.items()}

    async def can_write(
        self,
        principal: Principal,
        topic: str,
        extension: Extension,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Whether `principal` may send `extension` messages on `topic` (the INSERT policy)."""
        if principal.is_service:
            return True
        transaction = self._transaction()
        if transaction is None:
            return False
        async with transaction as conn:
            try:
                await self._become(conn, principal, topic, headers)
                await conn.execute(
                    "INSERT INTO realtime.messages (topic, extension) VALUES ($1, $2)",
                    topic,
                    str(extension),
                )
            except asyncpg.InsufficientPrivilegeError:
                return False
            except asyncpg.PostgresError as exc:
                return self._refused(exc, [extension])[extension]
        return True

    async def admits(
        self,
        principal: Principal,
        sql: str,
        args: Iterable[object],
        topic: str,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        """Whether the one-value query `sql`, run as `principal`, returns true (rooms).

        False, NULL, an error in the query and no database are all "no".
        """
        if principal.is_service:
            return True
        transaction = self._transaction()
        if transaction is None:
            return False
        async with transaction as conn:
            try:
                await self._become(conn, principal, topic, headers)
                return bool(await conn.fetchval(sql, *args))
            except asyncpg.PostgresError as exc:
                logger.info("a room's ownership check on %s failed, refusing: %s", topic, exc)
                return False

    # internals -----------------------------------------------------------------

    def _transaction(self) -> _RolledBack | None:
        pool = self._pool()
        if pool is None:
            if not self._warned:
                self._warned = True
                logger.warning(
                    "no database to evaluate realtime.messages policies: private channels "
                    "admit only the service key (set DATABASE_URL)"
                )
            return None
        return _RolledBack(pool)

    @staticmethod
    async def _become(
        conn: asyncpg.Connection,
        principal: Principal,
        topic: str,
        headers: Mapping[str, str] | None,
    ) -> None:
        safe = {k.lower(): v for k, v in (headers or {}).items() if k.lower() not in SECRET_HEADERS}
        await conn.execute(
            SET_CALLER_SQL,
            str(principal.role),
            topic,
            orjson.dumps(principal.claims).decode(),
            principal.user_id or "",
            orjson.dumps(safe).decode(),
        )

    def _refused(
        self, exc: asyncpg.PostgresError, wanted: list[Extension]
    ) -> dict[Extension, bool]:
        if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
            if not self._warned:
                self._warned = True
                logger.warning(
                    "realtime.messages does not exist: private channels admit only the service "
                    "key (run `realtime-bridge migrate`)"
                )
        else:
            # Supabase's RlsPolicyError: the policy itself failed; the answer is no.
            logger.info("a realtime.messages policy failed, refusing: %s", exc)
        return dict.fromkeys(wanted, False)


class _RolledBack:
    """A pooled connection in a transaction that is always rolled back."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.conn: asyncpg.pool.PoolConnectionProxy | None = None
        self.tx: asyncpg.transaction.Transaction | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            conn = self.conn = await self.pool.acquire()
            self.tx = conn.transaction()
            await self.tx.start()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self._release()
            raise PoliciesUnavailable(f"the database could not be asked: {exc}") from exc
        return conn

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            if self.tx is not None:
                await self.tx.rollback()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            logger.debug("rolling back a policy check failed", exc_info=True)
        finally:
            await self._release()

    async def _release(self) -> None:
        if self.conn is not None:
            await self.pool.release(self.conn)
            self.conn = None
