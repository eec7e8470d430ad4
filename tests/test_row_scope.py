"""Row scope on every way in, checked against Postgres's own `owner = sub`.

A user sees a row when Postgres says the row's owner column equals the
token's subject *in the column's type*: text exactly ("0001" is not "1"),
an integer column as an integer ("07" is 7), a uuid column as a uuid (case
does not matter). Hypothesis draws owner ids of awkward shapes; each
example inserts rows owned by them, subscribes as one of them on every
delivery path and compares what arrives with what Postgres answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import asyncpg
import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory
from tests.helpers import insert_position, until
from tests.test_supabase_protocol import Phx, phx

UUID = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
SHAPES = [
    "0001", "1", "1.0", "1e3", " 1", "1 ", "+1", "-0", "0", "7", "007", "7.0", "07.00",
    "\u0661", "\uff11", UUID, UUID.upper(), "x" * 400, "", "ünïcødé", "u1",
]  # fmt: skip

# table → the Postgres type of its user_id column
TYPED_TABLES = {"public.scope_int": "int8", "public.scope_uuid": "uuid"}
# channel → the table whose rows it carries
CHANNELS = {
    "position-updates": "public.positions",
    "public.positions": "public.positions",
    "public.scope_int": "public.scope_int",
    "public.scope_uuid": "public.scope_uuid",
}
COLUMN_TYPE = {"public.positions": "text", **TYPED_TABLES}

ids = st.one_of(
    st.sampled_from(SHAPES),
    st.text(alphabet="0123456789.e+- _x\u0661", max_size=6),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=8),
)


async def owned(db: asyncpg.Connection, table: str, sub: str) -> set[int]:
    """The ids of `table` rows Postgres says `sub` owns (a sub the type rejects owns none)."""
    try:
        rows = await db.fetch(
            f"SELECT id FROM {table} WHERE user_id = $1::text::{COLUMN_TYPE[table]}", sub
        )
    except asyncpg.DataError:
        return set()
    return {r["id"] for r in rows}


async def insert_owned(db: asyncpg.Connection, owners: list[str]) -> None:
    for owner in owners:
        await insert_position(db, owner, "S")
        for table, kind in TYPED_TABLES.items():
            with contextlib.suppress(asyncpg.DataError):
                await db.execute(f"INSERT INTO {table} (user_id) VALUES ($1::text::{kind})", owner)


async def sse_events(
    http: httpx.AsyncClient, channel: str, token: str, seen: list[dict[str, Any]],
    ready: asyncio.Event,
) -> None:  # fmt: skip
    params = {"apikey": token, "since": "0"}
    async with http.stream("GET", f"/sse/{channel}", params=params) as stream:
        assert stream.status_code == 200, await stream.aread()
        async for line in stream.aiter_lines():
            if line.startswith(": subscribed"):
                ready.set()
            elif line.startswith("data: "):
                seen.append(orjson.loads(line[6:]))


@contextlib.asynccontextmanager
async def background(tasks: list[asyncio.Task[None]]) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def check_every_path(
    bridge: RunningBridge, db: asyncpg.Connection, owners: list[str], sub: str
) -> None:
    token = bridge.user_token(sub)
    top = "SELECT coalesce(max(id), 0) FROM {}"
    before = {t: int(await db.fetchval(top.format(t))) for t in COLUMN_TYPE}
    ws_seen: list[dict[str, Any]] = []
    sse_seen: dict[str, list[dict[str, Any]]] = {c: [] for c in CHANNELS}
    phx_seen: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=bridge.url, timeout=20) as http,
        bridge.websocket(key=token) as ws,
        phx(bridge, key=bridge.anon_key) as supa,
    ):
        for channel in CHANNELS:
            target = {"table" if "." in channel else "channel": channel}
            await ws.send({"type": "subscribe", "since": 0, **target})
        bindings = [
            {"event": "*", "schema": "public", "table": t.partition(".")[2]} for t in COLUMN_TYPE
        ]
        joined = await supa.join("realtime:scope", {"postgres_changes": bindings}, token=token)
        assert joined.payload["status"] == "ok", joined.payload
        assert (await supa.next("system")).payload["status"] == "ok"
        readies = {c: asyncio.Event() for c in CHANNELS}
        tasks = [
            asyncio.create_task(sse_events(http, c, token, sse_seen[c], readies[c]))
            for c in CHANNELS
        ]

        async def read_ws() -> None:
            while True:
                ws_seen.append(await ws.recv(3600))

        async def read_phx(client: Phx) -> None:
            while True:
                msg = await client.recv(3600)
                if msg.event == "postgres_changes":
                    phx_seen.append(msg.payload["data"])

        tasks += [asyncio.create_task(read_ws()), asyncio.create_task(read_phx(supa))]
        async with background(tasks):
            for ready in readies.values():
                await asyncio.wait_for(ready.wait(), 10)
            await until(
                lambda: sum(f["type"] != "db_change" for f in ws_seen) >= len(CHANNELS),
                what="the subscriptions",
            )
            head_before = bridge.bridge.hub.head
            await insert_owned(db, owners)
            # Every inserted row numbered and routed: the log's max(seq) right after the
            # commits may not include them yet (the WAL leader, or the sequencer, is async).
            inserted = 0
            for t in COLUMN_TYPE:
                count = f"SELECT count(*) FROM {t} WHERE id > $1"
                inserted += int(await db.fetchval(count, before[t]))
            assert await bridge.bridge.hub.wait_for_head(head_before + inserted, timeout=10)

            truth = {t: await owned(db, t, sub) for t in COLUMN_TYPE}
            want = {c: truth[t] for c, t in CHANNELS.items()}
            live = {t: {i for i in ids if i > before[t]} for t, ids in truth.items()}

            params = {"apikey": token}
            for channel in CHANNELS:
                poll = await http.get(
                    f"/api/channels/{channel}/events",
                    params={**params, "since": "0", "wait": "0", "limit": "1000"},
                )
                assert poll.status_code == 200, poll.text
                got = [e["data"]["id"] for e in poll.json()["events"]]
                assert sorted(got) == sorted(want[channel]), ("long-poll", channel, sub, got)
                snap = await http.get(f"/api/channels/{channel}/snapshot", params=params)
                assert snap.status_code == 200, snap.text
                got = [r["id"] for r in snap.json()["records"]]
                assert sorted(got) == sorted(want[channel]), ("snapshot", channel, sub, got)

            ws_want = sum(len(v) for v in want.values()) + len(CHANNELS)
            sse_want = {c: len(want[c]) for c in CHANNELS}
            phx_want = sum(len(v) for v in live.values())
            await until(
                lambda: (
                    len(ws_seen) >= ws_want
                    and all(len(sse_seen[c]) >= n for c, n in sse_want.items())
                    and len(phx_seen) >= phx_want
                ),
                timeout=10,
                what="every path to deliver what Postgres says the user owns",
            )
            await asyncio.sleep(0.25)  # anything extra (a leak) arrives meanwhile

    by_channel: dict[str, list[int]] = {c: [] for c in CHANNELS}
    assert [f for f in ws_seen if f["type"] != "db_change"] == [
        {"type": "subscribed", **f} for f in ws_seen if f["type"] == "subscribed"
    ]
    for frame in ws_seen:
        if frame["type"] == "subscribed":
            continue
        by_channel[frame["channel"]].append(frame["data"]["id"])
    for channel in CHANNELS:
        assert sorted(by_channel[channel]) == sorted(want[channel]), ("websocket", channel, sub)
        got = [e["data"]["id"] for e in sse_seen[channel]]
        assert sorted(got) == sorted(want[channel]), ("sse", channel, sub, got)
    for table in COLUMN_TYPE:
        got = [d["record"]["id"] for d in phx_seen if f"public.{d['table']}" == table]
        assert sorted(got) == sorted(live[table]), ("postgres_changes", table, sub, got)


async def test_every_path_scopes_rows_the_way_postgres_compares_them(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    await db.execute(
        "CREATE TABLE public.scope_int (id bigserial PRIMARY KEY, user_id int8);"
        "CREATE TABLE public.scope_uuid (id bigserial PRIMARY KEY, user_id uuid);"
        "SELECT realtime_bridge.track('public.scope_int');"
        "SELECT realtime_bridge.track('public.scope_uuid');"
    )
    bridge = await start_bridge(
        table_access=dict.fromkeys(TYPED_TABLES, "owner"), max_connections_per_user=1000
    )
    loop = asyncio.get_running_loop()

    def run(coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=120)

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(owners=st.lists(ids, min_size=1, max_size=5), extra=ids, choice=st.integers(0, 10))
    def check(owners: list[str], extra: str, choice: int) -> None:
        candidates = [o for o in [*owners, extra] if o]
        if not candidates:
            return
        sub = candidates[choice % len(candidates)]
        # A uuid user's rows are scoped by uuid equality: seed both spellings.
        if sub.lower() == UUID:
            owners = [*owners, UUID, str(uuid.UUID(UUID)).upper()]
        run(check_every_path(bridge, db, owners, sub))

    # The shapes of issue 17 first, then what Hypothesis draws.
    await check_every_path(bridge, db, ["7", "007", "7.0", "07.00"], "7")
    await check_every_path(bridge, db, [UUID, "0001", "1"], UUID.upper())
    await asyncio.to_thread(check)
