"""Hosted Supabase mode end to end.

"Hosted Supabase" is stood in for by a second bridge (its Supabase-protocol
endpoint `/realtime/v1/websocket`) plus a tiny PostgREST stand-in reading the
same database, both behind one loopback address (a TCP proxy routing by
path) so SUPABASE_URL works unchanged. Cutting the proxy's Realtime side
forces the fallback to polling; restoring it switches back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from realtime_bridge.sources.supabase import SupabaseSource
from realtime_bridge.testing import RunningBridge, run_bridge
from tests.conftest import BridgeFactory, make_settings
from tests.helpers import SNAPSHOT, http, sample, snapshot_pages, until

INSERT = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, $3, 100, 110) RETURNING id"
)
UPDATE = "UPDATE positions SET current_price = $2 WHERE id = $1"
DELETE = "DELETE FROM positions WHERE id = $1"
OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "="}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def postgrest_app(pool: list[asyncpg.Pool], requests: list[str]) -> Starlette:
    """Just enough of PostgREST: select, order, limit, offset and `col=op.value` filters."""

    async def rows(request: Request) -> Response:
        requests.append(str(request.url))
        table = request.path_params["table"]
        columns = {
            r["attname"]: r["type"]
            for r in await pool[0].fetch(
                "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
                "WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
                f"public.{table}",
            )
        }
        if not columns:
            return JSONResponse({"code": "42P01"}, status_code=404)
        params = request.query_params
        select = params.get("select", "*")
        names = [] if select == "*" else select.split(",")
        if any(n not in columns for n in names):
            return JSONResponse({"code": "42703"}, status_code=400)
        where: list[str] = []
        args: list[Any] = []
        for key, value in params.multi_items():
            if key in ("select", "order", "limit", "offset"):
                continue
            op, _, operand = value.partition(".")
            if key not in columns or op not in OPERATORS:
                return JSONResponse({"code": "PGRST100"}, status_code=400)
            args.append(operand)
            where.append(f"{_ident(key)} {OPERATORS[op]} ${len(args)}::text::{columns[key]}")
        order = []
        for part in filter(None, params.get("order", "").split(",")):
            column, *mods = part.split(".")
            order.append(
                " ".join(
                    [_ident(column)]
                    + [
                        {"nullslast": "NULLS LAST", "nullsfirst": "NULLS FIRST"}.get(m, m)
                        for m in mods
                    ]
                )
            )
        sql = (
            f"SELECT {', '.join(map(_ident, names)) if names else '*'} FROM public.{_ident(table)}"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + (f" ORDER BY {', '.join(order)}" if order else "")
            + f" LIMIT {int(params.get('limit', '100000'))} OFFSET {int(params.get('offset', '0'))}"
        )
        found = await pool[0].fetch(f"SELECT to_jsonb(s) AS r FROM ({sql}) s", *args)
        return Response(
            b"[" + b",".join(r["r"].encode() for r in found) + b"]",
            media_type="application/json",
        )

    return Starlette(routes=[Route("/rest/v1/{table}", rows)])


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[int]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
        await asyncio.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await task


class Proxy:
    """One loopback address for both: `/rest/v1/...` to PostgREST, the rest to Realtime."""

    def __init__(self, realtime_port: int, rest_port: int) -> None:
        self.realtime_port = realtime_port
        self.rest_port = rest_port
        self.down = False
        self.port = 0
        self._realtime: set[asyncio.StreamWriter] = set()
        self._all: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for writer in list(self._all):
            writer.transport.abort()

    def cut(self) -> None:
        """Realtime goes away: open sockets are dropped, new ones refused."""
        self.down = True
        for writer in list(self._realtime):
            writer.transport.abort()
        self._realtime.clear()

    def restore(self) -> None:
        self.down = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._all.add(writer)
        try:
            head = await reader.read(65536)
            rest = b" /rest/v1/" in head.split(b"\r\n", 1)[0]
            if not rest and self.down:
                return
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.rest_port if rest else self.realtime_port
            )
            self._all.add(up_writer)
            if not rest:
                self._realtime.update((writer, up_writer))
            up_writer.write(head)
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._all.discard(writer)
            self._realtime.discard(writer)


@contextlib.asynccontextmanager
async def hosted_mode(
    hosted: RunningBridge, dsn: str, **overrides: Any
) -> AsyncIterator[tuple[RunningBridge, Proxy, list[str]]]:
    requests: list[str] = []
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    async with (
        pool,
        serve(postgrest_app([pool], requests)) as rest_port,
        Proxy(hosted.port, rest_port) as proxy,
    ):
        settings = make_settings(
            None,  # type: ignore[arg-type]
            supabase_url=proxy.url,
            supabase_service_key=hosted.service_key,
            supabase_jwt_secret=hosted.bridge.auth.secret,
            **overrides,
        )
        async with run_bridge(settings) as local:
            yield local, proxy, requests


def _keys(events: list[dict[str, Any]]) -> list[tuple[str, int, float | None]]:
    return [
        (
            e["operation"],
            e["record_id"],
            (e["data"] or {}).get("current_price"),
        )
        for e in events
    ]


async def test_hosted_mode_follows_realtime_and_falls_back_to_polling(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str
) -> None:
    hosted = await start_bridge()
    async with hosted_mode(hosted, dsn, realtime_grace_period=1.0, poll_interval=0.2) as (
        local,
        proxy,
        requests,
    ):
        bridge = local.bridge
        assert bridge.pool is None
        source = bridge.source
        assert isinstance(source, SupabaseSource)
        ok, health = bridge.health()
        assert ok, health
        assert (health["source"], health["mode"], health["database"]) == (
            "supabase",
            "realtime",
            "none",
        )
        events: list[dict[str, Any]] = []
        async with local.websocket() as ws:
            reply = await ws.subscribe(channel="position-updates")
            assert reply["type"] == "subscribed", reply

            # 1. realtime
            a = await db.fetchval(INSERT, "u1", "A", 1)
            await db.execute(UPDATE, a, 111)
            b = await db.fetchval(INSERT, "u1", "B", 2)
            await db.execute(DELETE, b)
            events += await ws.changes(4)
            assert _keys(events) == [
                ("INSERT", a, 110.0),
                ("UPDATE", a, 111.0),
                ("INSERT", b, 110.0),
                ("DELETE", b, None),
            ]

            # 2. Realtime is cut: within the grace period nothing is lost either.
            proxy.cut()
            await until(lambda: not source.healthy, 8, what="realtime noticed down")
            c = await db.fetchval(INSERT, "u2", "C", 3)
            await until(lambda: bridge.mode()["mode"] == "polling", 4, what="polling")
            ok, health = bridge.health()
            assert health["mode"] == "polling"
            assert "down" in health["mode_reason"]
            assert health["mode_switches"] == 1
            # The first pass fills the grace period; a row that comes and goes
            # between two passes is never seen by polling (documented).
            polled = await ws.changes(1)
            await db.execute(UPDATE, a, 112)
            d = await db.fetchval(INSERT, "u2", "D", 4)
            polled += await ws.changes(2)
            await db.execute(DELETE, c)
            polled += await ws.changes(1)
            assert _keys(polled)[0] == ("INSERT", c, 110.0)
            assert sorted(_keys(polled)[1:3]) == [("INSERT", d, 110.0), ("UPDATE", a, 112.0)]
            assert _keys(polled)[3] == ("DELETE", c, None)
            assert any("/rest/v1/positions" in r for r in requests)
            events += polled

            # 3. Realtime returns: the gap since the last poll is filled, then realtime again.
            await db.execute(UPDATE, d, 113)
            proxy.restore()
            await until(lambda: bridge.mode()["mode"] == "realtime", 8, what="realtime")
            e = await db.fetchval(INSERT, "u3", "E", 5)
            await db.execute(UPDATE, e, 114)
            await db.execute(DELETE, d)
            back = await ws.changes(4)
            assert sorted(_keys(back)) == sorted(
                [
                    ("UPDATE", d, 113.0),
                    ("INSERT", e, 110.0),
                    ("UPDATE", e, 114.0),
                    ("DELETE", d, None),
                ]
            )
            events += back
            assert await ws.silent(1.0)  # no duplicate from the polls that overlapped

        ok, health = bridge.health()
        assert ok, health
        assert (health["mode"], health["mode_switches"]) == ("realtime", 2)
        assert health["mode_reason"] == "subscribed to Supabase Realtime"
        seqs = [ev["seq"] for ev in events]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == len(seqs)
        stats = bridge.stats()
        assert stats["mode"] == "realtime"
        assert stats["mode_switches"] == 2
        metrics = (await _get(local, "/metrics")).decode()
        assert sample(metrics, "realtime_bridge_mode_switches_total") == 2


async def _get(bridge: RunningBridge, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    auth = f"Authorization: Bearer {bridge.service_key}"
    writer.write(f"GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n\r\n".encode())
    body = await reader.read()
    writer.close()
    return body.split(b"\r\n\r\n", 1)[1]


async def test_hosted_mode_has_no_outbox(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str
) -> None:
    from realtime_bridge.errors import PublishError

    hosted = await start_bridge()
    async with hosted_mode(hosted, dsn) as (local, _proxy, _requests):
        bridge = local.bridge
        # The plugins' tables, known without a database to introspect.
        plugin_tables = {t for p in bridge.registry.by_channel.values() for t in p.tables}
        assert set(bridge.tables) == plugin_tables
        assert {"public.positions", "public.trades", "public.portfolio_snapshots"} <= plugin_tables
        with pytest.raises(PublishError, match="DATABASE_URL"):
            await bridge.publish("position-updates", None, {"id": 1})
        assert await bridge._earliest() == bridge.hub.head + 1
        assert [batch async for batch in bridge._history(0, 10, "position-updates")] == []
        assert orjson.loads(await _get(local, "/health"))["source"] == "supabase"


async def test_hosted_mode_snapshots_through_postgrest(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str
) -> None:
    hosted = await start_bridge()
    mine = [await db.fetchval(INSERT, "u1", f"M{i}", i + 1) for i in range(3)]
    theirs = [await db.fetchval(INSERT, "u2", f"T{i}", i + 1) for i in range(2)]
    async with hosted_mode(hosted, dsn) as (local, _proxy, requests):
        async with http(local) as client:
            seq, records, pages = await snapshot_pages(client, limit=2)
            assert seq == local.bridge.hub.head
            assert [r["id"] for r in records] == sorted(mine + theirs)
            assert pages == 3
            assert records[0]["market_value"] == 110.0  # typed by the plugin
        requests.clear()
        async with httpx.AsyncClient(base_url=local.url) as client:
            user = {"Authorization": f"Bearer {local.user_token('u1')}"}
            body = (await client.get(SNAPSHOT, headers=user)).json()
        assert [r["id"] for r in body["records"]] == mine
        # The row scope is asked of PostgREST, not only applied afterwards.
        assert any("user_id=eq.u1" in url for url in requests), requests
