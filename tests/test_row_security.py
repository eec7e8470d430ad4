"""Row-level security for postgres_changes (ROW_SECURITY=<table>=rls), on a real Postgres.

Every delivery is compared with what Postgres itself shows the same user:
`SET ROLE authenticated`, `request.jwt.claims`, `SELECT ... FROM table`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import BaseModel
from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ConfigurationError
from realtime_bridge.plugins import Plugin
from realtime_bridge.row_security import RowSecurity, Viewer
from realtime_bridge.sources.outbox import init_connection
from realtime_bridge.testing import JsonSocket, RunningBridge
from tests.conftest import BOTH_CAPTURES, BridgeFactory, make_settings
from tests.helpers import until
from tests.test_row_scope import background, sse_events

ALICE = str(uuid.UUID(int=1))
BOB = str(uuid.UUID(int=2))
CAROL = str(uuid.UUID(int=3))
DAVE = "0001"  # no uuid: auth.uid() raises for him, so every policy says no
USERS = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}

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
-- A claim beyond the sub: gold-tier tokens see gold notes.
CREATE POLICY gold ON public.notes FOR SELECT TO authenticated
    USING (body = 'gold' AND auth.jwt() ->> 'tier' = 'gold');
CREATE POLICY unhidden ON public.notes AS RESTRICTIVE FOR SELECT
    USING (body IS DISTINCT FROM 'hidden');
"""


def claims_of(sub: str | None, role: str = "authenticated", **extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"role": role, **extra}
    if sub is not None:
        claims["sub"] = sub
    return claims


async def postgres_shows(
    db: asyncpg.Connection, table: str, claims: dict[str, Any], role: str = "authenticated"
) -> set[str]:
    """The ids `role` with `claims` sees with a plain SELECT under the table's RLS.

    A policy that raises for these claims (a sub that is no uuid) shows nothing.
    """
    try:
        async with db.transaction():
            await db.execute(
                "SELECT set_config('role', $1, true), set_config('request.jwt.claims', $2, true)",
                role,
                orjson.dumps(claims).decode(),
            )
            rows = await db.fetch(f"SELECT id FROM {table}")
    except asyncpg.DataError:
        return set()
    return {r["id"] for r in rows}


async def visible_rows(
    db: asyncpg.Connection, table: str, rows: list[dict[str, Any]], viewers: list[dict[str, Any]]
) -> list[set[int]]:
    found = await db.fetch(
        "SELECT viewer, visible "
        "FROM realtime_bridge.visible_rows($1::regclass, $2::jsonb[], $3::jsonb[])",
        table,
        [orjson.dumps(r).decode() for r in rows],
        [orjson.dumps(v).decode() for v in viewers],
    )
    out: list[set[int]] = [set() for _ in viewers]
    for r in found:
        out[r["viewer"] - 1] = set(r["visible"])
    return out


async def test_visible_rows_agrees_with_a_select_under_the_users_role(
    db: asyncpg.Connection, dsn: str
) -> None:
    await db.execute(SCHEMA)
    await db.execute("INSERT INTO orgs_members VALUES ('acme', $1)", CAROL)
    rows: list[dict[str, Any]] = [
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
    viewers: list[dict[str, Any]] = [
        {"role": "authenticated", "claims": claims_of(ALICE)},
        {"role": "authenticated", "claims": claims_of(BOB)},
        {"role": "authenticated", "claims": claims_of(CAROL)},
        {"role": "anon", "claims": claims_of(None, "anon")},
        {"role": "authenticated", "claims": claims_of("not-a-uuid")},
        {"role": "service_role", "claims": claims_of(None, "service_role")},
    ]
    got = await visible_rows(db, "public.notes", rows, viewers)
    for viewer, indexes in zip(viewers[:4], got[:4], strict=True):
        claims: dict[str, Any] = viewer["claims"]
        expected = await postgres_shows(db, "public.notes", claims, str(viewer["role"]))
        assert {rows[i - 1]["id"] for i in indexes} == expected
    assert [{rows[i - 1]["id"] for i in s} for s in got[:3]] == [{"1"}, {"0001", "2"}, {"2"}]
    assert got[3] == set()  # anon: no policy for it
    assert got[4] == set()  # its policy raises (no uuid): nothing, as the SELECT fails
    assert got[5] == set()  # service_role has no SELECT grant here: nothing either
    # Through the bridge's client (viewers regrouped by role, answers put back in order).
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init_connection) as pool:
        checker = RowSecurity(lambda: pool)
        asked = [Viewer(str(v["role"]), orjson.dumps(v["claims"]).decode()) for v in viewers]
        answers = await checker.check("public.notes", rows, asked)
    assert [{i + 1 for i in a} for a in answers] == got
    assert checker.statements == 1
    # The session is back to its own role and claims afterwards.
    assert await db.fetchval("SELECT current_user = session_user") is True
    assert await db.fetchval("SELECT current_setting('request.jwt.claims', true)") in (None, "")


# Each step is one statement on public.notes; the test derives what every
# user must receive from what a SELECT shows them before and after it.
HUGE = "x" * 300_000
STEPS: list[tuple[str, str, tuple[Any, ...]]] = [
    ("1", "INSERT INTO notes VALUES ('1', $1, NULL, 'a')", (ALICE,)),
    ("0001", "INSERT INTO notes VALUES ('0001', $1, NULL, 'b')", (BOB,)),
    ("2", "INSERT INTO notes VALUES ('2', $1, 'acme', 'c')", (BOB,)),
    ("big", "INSERT INTO notes VALUES ('big', $1, NULL, $2)", (ALICE, HUGE)),
    ("1", "UPDATE notes SET owner = $1 WHERE id = '1'", (BOB,)),  # Alice loses it, Bob gains it
    ("0001", "UPDATE notes SET body = 'hidden' WHERE id = '0001'", ()),  # hidden from Bob
    ("2", "UPDATE notes SET body = 'c2' WHERE id = '2'", ()),
    ("2", "DELETE FROM notes WHERE id = '2'", ()),  # Bob and Carol, never Alice
    ("0001", "DELETE FROM notes WHERE id = '0001'", ()),  # hidden: nobody learns of it
    ("big", "UPDATE notes SET org = 'acme' WHERE id = 'big'", ()),  # Carol gains it
    ("big", "DELETE FROM notes WHERE id = 'big'", ()),
]


async def expected_changes(db: asyncpg.Connection) -> dict[str, list[tuple[str, str]]]:
    """Run STEPS; per user, the (operation, id) a faithful RLS delivery sends, in order."""
    expected: dict[str, list[tuple[str, str]]] = {name: [] for name in USERS}
    expected["service"] = []
    for row_id, sql, args in STEPS:
        before = {n: await postgres_shows(db, "notes", claims_of(s)) for n, s in USERS.items()}
        await db.execute(sql, *args)
        after = {n: await postgres_shows(db, "notes", claims_of(s)) for n, s in USERS.items()}
        operation = sql.split()[0]
        expected["service"].append((operation, row_id))
        for name in USERS:
            was, now = row_id in before[name], row_id in after[name]
            if operation == "INSERT" and now:
                expected[name].append(("INSERT", row_id))
            elif operation == "DELETE" and was:
                expected[name].append(("DELETE", row_id))
            elif operation == "UPDATE" and (was or now):
                expected[name].append(
                    ("UPDATE" if was and now else "INSERT" if now else "DELETE", row_id)
                )
    return expected


async def secured_bridge(
    start_bridge: BridgeFactory, db: asyncpg.Connection, **overrides: Any
) -> RunningBridge:
    await db.execute(SCHEMA)
    await db.execute("INSERT INTO orgs_members VALUES ('acme', $1)", CAROL)
    await db.execute("SELECT realtime_bridge.track('public.notes')")
    return await start_bridge(row_security={"public.notes": "rls"}, **overrides)


INSERT_POSITION = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, 1, 100, 110)"
)


async def until_async(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def count_routed(bridge: RunningBridge, total: int) -> bool:
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as http:
        poll = await http.get(
            "/api/channels/public.notes/events",
            params={"apikey": bridge.service_key, "since": "0", "wait": "0", "limit": "1000"},
        )
    return len(poll.json()["events"]) >= total


def ws_changes(frames: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for frame in frames:
        row = frame["data"] if frame["operation"] != "DELETE" else frame["old"]
        out.append((frame["operation"], row["id"]))
    return out


async def received(ws: JsonSocket, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    """The next `count` db_change frames (fewer if they do not come: the assertion says which)."""
    frames: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while len(frames) < count:
                frame = await ws.recv(timeout)
                assert frame["type"] == "db_change", frame
                frames.append(frame)
    return frames


@BOTH_CAPTURES
async def test_json_websocket_delivers_what_the_policies_show_each_user(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await secured_bridge(start_bridge, db)
    async with contextlib.AsyncExitStack() as stack:
        sockets: dict[str, JsonSocket] = {}
        for name, sub in [*USERS.items(), ("service", None)]:
            key = bridge.service_key if sub is None else bridge.user_token(sub)
            ws = sockets[name] = await stack.enter_async_context(bridge.websocket(key=key))
            reply = await ws.subscribe(table="public.notes")
            assert reply["type"] == "subscribed", reply
        expected = await expected_changes(db)
        assert expected["alice"] == [
            ("INSERT", "1"), ("INSERT", "big"), ("DELETE", "1"), ("UPDATE", "big"),
            ("DELETE", "big"),
        ]  # fmt: skip
        assert expected["bob"].count(("DELETE", "0001")) == 1  # hidden, then gone unseen
        assert expected["dave"] == []
        for name, ws in sockets.items():
            frames = await received(ws, len(expected[name]))
            assert ws_changes(frames) == expected[name], name
            seqs = [f["seq"] for f in frames]
            assert seqs == sorted(seqs), name
        for name, ws in sockets.items():
            assert await ws.silent(0.3), name
        # The changes a user may not see carry nothing of theirs: the departure
        # of row 1 from Alice has its old row only, not Bob's new one.
        # (Checked on a fresh resume from the start, which re-asks the policies.)
        async with bridge.websocket(key=bridge.user_token(ALICE)) as again:
            reply = await again.subscribe(table="public.notes", since=0)
            assert reply["type"] == "subscribed", reply
            frames = await again.changes(len(expected["alice"]), timeout=20)
            assert ws_changes(frames) == expected["alice"]
            departure = frames[2]
            assert departure["operation"] == "DELETE"
            assert departure["data"] is None
            assert departure["old"]["owner"] == ALICE
            assert len(frames[1]["data"]["body"]) == len(HUGE)
            assert frames[3]["old"]["org"] is None
            assert frames[3]["data"]["org"] == "acme"
            assert await again.silent(0.3)


@contextlib.asynccontextmanager
async def realtime_client(bridge: RunningBridge, token: str) -> AsyncIterator[AsyncRealtimeClient]:
    realtime = AsyncRealtimeClient(
        f"{bridge.url}/realtime/v1", bridge.anon_key, auto_reconnect=False
    )
    await realtime.connect()
    try:
        # supabase-py hands the signed-in user's token to realtime with set_auth.
        await realtime.set_auth(token)
        yield realtime
    finally:
        await realtime.close()


def keep(seen: list[dict[str, Any]], payload: Any) -> None:
    seen.append(dict(payload))


def supabase_changes(payloads: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = []
    for payload in payloads:
        data = payload["data"]
        row = data["old_record"] if data["type"] == "DELETE" else data["record"]
        out.append((data["type"], row["id"]))
    return out


async def test_postgres_changes_with_the_python_client_follow_the_policies(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await secured_bridge(start_bridge, db)
    tokens = {name: bridge.user_token(sub) for name, sub in USERS.items()}
    tokens["service"] = bridge.service_key
    received: dict[str, list[dict[str, Any]]] = {name: [] for name in tokens}
    async with contextlib.AsyncExitStack() as stack:
        for name, token in tokens.items():
            client = await stack.enter_async_context(realtime_client(bridge, token))
            channel = client.channel(f"notes-{name}")
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent.All,
                schema="public",
                table="notes",
                callback=functools.partial(keep, received[name]),
            )
            system: list[Any] = []
            channel.on_system(system.append)
            await channel.subscribe()
            await until(functools.partial(bool, system), 10, what=f"{name} subscribed")
            assert system[0].message == "Subscribed to PostgreSQL", system
        expected = await expected_changes(db)
        await until(
            lambda: all(len(received[n]) >= len(expected[n]) for n in tokens),
            20,
            what="every client to receive what Postgres shows it",
        )
        await asyncio.sleep(0.3)  # anything extra (a leak) arrives meanwhile
    for name in tokens:
        assert supabase_changes(received[name]) == expected[name], name
    # Bob's view of row 1 arriving (Alice gave it to him) is an INSERT without Alice's row.
    arrival = next(
        p["data"]
        for p in received["bob"]
        if p["data"]["type"] == "INSERT" and p["data"]["record"]["id"] == "1"
    )
    assert "old_record" not in arrival
    assert arrival["record"]["owner"] == BOB


async def test_a_new_token_is_a_new_question_to_the_policies(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await secured_bridge(start_bridge, db)
    async with bridge.websocket(key=bridge.user_token(ALICE)) as ws:
        assert (await ws.subscribe(table="public.notes"))["type"] == "subscribed"
        await db.execute("INSERT INTO notes VALUES ('g1', $1, NULL, 'gold')", BOB)
        assert await ws.silent(0.5)  # not hers, and her token has no tier
        gold = bridge.user_token(ALICE, tier="gold")
        await ws.send({"type": "access_token", "token": gold})
        assert (await ws.recv())["status"] == "ok"
        await db.execute("INSERT INTO notes VALUES ('g2', $1, NULL, 'gold')", BOB)
        await db.execute("INSERT INTO notes VALUES ('g3', $1, NULL, 'plain')", BOB)
        frames = await received(ws, 1)
        assert ws_changes(frames) == [("INSERT", "g2")]
        assert await ws.silent(0.3)
        shows = await postgres_shows(db, "notes", claims_of(ALICE, tier="gold"))
        assert shows == {"g1", "g2"}  # g1 was decided with the token it was sent under
        # Another user's token does not inherit the subscription.
        await ws.send({"type": "access_token", "token": bridge.user_token(BOB)})
        ended = await ws.recv()
        assert ended["type"] == "error"
        assert ended["code"] == "unauthorized"


async def test_a_check_that_cannot_run_holds_back_only_its_own_subscribers(
    start_bridge: BridgeFactory, db: asyncpg.Connection, dsn: str
) -> None:
    # A window of 4 changes: the outage outlasts it, so the held-back subscriber
    # is handed to catch-up and served from the durable log, with the same check.
    bridge = await secured_bridge(start_bridge, db, replay_window=4)
    locker = await asyncpg.connect(dsn)
    try:
        async with (
            bridge.websocket(key=bridge.user_token(ALICE)) as alice,
            bridge.websocket() as ops,
        ):
            assert (await alice.subscribe(table="public.notes"))["type"] == "subscribed"
            assert (await ops.subscribe(table="public.notes"))["type"] == "subscribed"
            assert (await ops.subscribe(channel="position-updates"))["type"] == "subscribed"
            # The org policy reads orgs_members: while it is locked the check waits.
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE orgs_members IN ACCESS EXCLUSIVE MODE")
            waiting = (
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%visible_rows(%' "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            pids: list[int] = []

            async def check_waits() -> bool:
                pids[:] = [r["pid"] for r in await db.fetch(waiting)]
                return bool(pids)

            await db.execute("INSERT INTO notes VALUES ('1', $1, NULL, 'a')", ALICE)
            # The check of the first change waits on the lock before the rest are
            # written, so they pass the window (4) behind it: catch-up must serve them.
            await until_async(check_waits, 10, what="the first check waiting on the lock")
            await db.execute(INSERT_POSITION, "u1", "AAPL")
            for row_id, owner in [("2", BOB), ("3", ALICE), ("4", BOB), ("5", ALICE)]:
                await db.execute("INSERT INTO notes VALUES ($1, $2, NULL, 'b')", row_id, owner)
            # Other channels, and unsecured readers of the same one, do not wait.
            frames = await received(ops, 6)
            assert sorted(f["channel"] for f in frames) == [
                "position-updates",
                *["public.notes"] * 5,
            ]
            assert await alice.silent(0.5)
            # The database drops the check's connection: it fails, is retried, and
            # still nothing reaches Alice (fail closed).
            await until_async(check_waits, 10, what="the check waiting on the lock")
            # Read before terminating: the bridge runs in this event loop and may count the
            # failure while the terminate's reply is still on its way back to us.
            failures = bridge.bridge.hub.stats.secured_failures
            await db.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
            await until(
                lambda: bridge.bridge.hub.stats.secured_failures > failures,
                10,
                what="the failed check to be counted",
            )
            await until_async(check_waits, 10, what="the check to be asked again")
            assert await alice.silent(0.3)
            await tx.rollback()
            # Once it can run, her changes arrive, in order, once.
            frames = await received(alice, 3)
            assert ws_changes(frames) == [("INSERT", "1"), ("INSERT", "3"), ("INSERT", "5")]
            assert [f["seq"] for f in frames] == sorted(f["seq"] for f in frames)
            assert bridge.bridge.hub.stats.replayed >= 1  # some came through catch-up
            assert await alice.silent(0.3)
    finally:
        await locker.close()


async def test_long_poll_and_snapshot_show_each_user_what_the_policies_do(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    # A replay window of 2: the long-polls below read the durable log, checked per batch.
    bridge = await secured_bridge(start_bridge, db, replay_window=2)
    expected = await expected_changes(db)
    await db.execute(
        "INSERT INTO notes VALUES ('5', $1, 'acme', 'e'), ('6', $2, NULL, 'f')", ALICE, BOB
    )
    total = len(STEPS) + 2
    # Every change routed: the WAL leader numbers them a moment after the commits.
    await until_async(lambda: count_routed(bridge, total), 10, what="every change to be routed")
    expected = {
        name: [*changes, *(("INSERT", i) for i in ("5", "6") if i in shows)]
        for name, changes in expected.items()
        for shows in [
            {"5", "6"}
            if name == "service"
            else await postgres_shows(db, "notes", claims_of(USERS[name]))
        ]
    }
    async with httpx.AsyncClient(base_url=bridge.url, timeout=20) as http:
        for name, sub in [*USERS.items(), ("service", None)]:
            token = bridge.service_key if sub is None else bridge.user_token(sub)
            poll = await http.get(
                "/api/channels/public.notes/events",
                params={"apikey": token, "since": "0", "wait": "0", "limit": "1000"},
            )
            assert poll.status_code == 200, poll.text
            got = [
                (e["operation"], (e["data"] if e["operation"] != "DELETE" else e["old"])["id"])
                for e in poll.json()["events"]
            ]
            assert got == expected[name], name
            snap = await http.get("/api/channels/public.notes/snapshot", params={"apikey": token})
            assert snap.status_code == 200, snap.text
            rows = {r["id"] for r in snap.json()["records"]}
            if sub is None:
                assert rows == {"1", "5", "6"}
            else:
                assert rows == await postgres_shows(db, "notes", claims_of(sub)), name


async def test_the_python_client_re_asks_with_a_refreshed_token(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await secured_bridge(start_bridge, db)
    seen: list[dict[str, Any]] = []
    async with realtime_client(bridge, bridge.user_token(ALICE)) as alice:
        channel = alice.channel("notes")
        channel.on_postgres_changes(
            RealtimePostgresChangesListenEvent.All,
            schema="public",
            table="notes",
            callback=functools.partial(keep, seen),
        )
        system: list[Any] = []
        channel.on_system(system.append)
        await channel.subscribe()
        await until(functools.partial(bool, system), 10, what="subscribed")
        await db.execute("INSERT INTO notes VALUES ('g1', $1, NULL, 'gold')", BOB)
        await db.execute("INSERT INTO notes VALUES ('a1', $1, NULL, 'mine')", ALICE)
        await until(lambda: len(seen) >= 1, 10, what="her own note")
        await alice.set_auth(bridge.user_token(ALICE, tier="gold"))
        await asyncio.sleep(0.3)  # the access_token push has no reply
        await db.execute("INSERT INTO notes VALUES ('g2', $1, NULL, 'gold')", BOB)
        await until(lambda: len(seen) >= 2, 10, what="the gold note")
        await asyncio.sleep(0.3)
    assert supabase_changes(seen) == [("INSERT", "a1"), ("INSERT", "g2")]


def test_a_plugin_says_owner_or_rls_and_nothing_else() -> None:
    class Note(BaseModel):
        id: int

    assert Plugin(channel="notes", event="note", model=Note, row_security="rls").row_security
    with pytest.raises(ConfigurationError, match="row_security must be 'owner' or 'rls'"):
        Plugin(channel="notes", event="note", model=Note, row_security="policies")


async def test_a_plugin_channel_of_a_listed_table_follows_its_policies_as_they_change(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(row_security={"public.positions": "rls"})
    assert bridge.bridge.policy("position-updates").row_security
    assert bridge.bridge.policy("public.positions").row_security
    assert not bridge.bridge.policy("trade-updates").row_security
    async with bridge.websocket(key=bridge.user_token("u1")) as ws:
        reply = await ws.subscribe(channel="position-updates")
        assert reply["type"] == "subscribed", reply
        # No SELECT grant for authenticated on the demo table: a SELECT would fail, so nothing.
        await db.execute(INSERT_POSITION, "u1", "AAPL")
        assert await ws.silent(0.5)
        # Policies are read on every check: a grant and a policy apply from the next change.
        await db.execute(
            "GRANT SELECT ON positions TO authenticated;"
            "ALTER TABLE positions ENABLE ROW LEVEL SECURITY;"
            "CREATE POLICY mine ON positions FOR SELECT TO authenticated"
            " USING (user_id = auth.jwt() ->> 'sub')"
        )
        await db.execute(INSERT_POSITION, "u2", "MSFT")
        await db.execute(INSERT_POSITION, "u1", "TSLA")
        (frame,) = await received(ws, 1)
        assert frame["channel"] == "position-updates"
        assert frame["event"] == "position_update"
        assert frame["data"]["symbol"] == "TSLA"
        assert frame["data"]["user_id"] == "u1"
        assert await ws.silent(0.3)


async def test_a_table_name_that_needs_quoting_is_asked_about_itself(
    db: asyncpg.Connection, dsn: str
) -> None:
    await db.execute(
        'CREATE TABLE public."Odd ""Notes""" (id text PRIMARY KEY, owner uuid);'
        "CREATE TABLE public.odd (id text PRIMARY KEY, owner uuid);"
        'ALTER TABLE public."Odd ""Notes""" ENABLE ROW LEVEL SECURITY;'
        'GRANT SELECT ON public."Odd ""Notes""", public.odd TO authenticated;'
        'CREATE POLICY own ON public."Odd ""Notes""" FOR SELECT USING (owner = auth.uid());'
    )
    rows = [{"id": "1", "owner": ALICE}, {"id": "2", "owner": BOB}]
    viewer = Viewer("authenticated", orjson.dumps(claims_of(ALICE)).decode())
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init_connection) as pool:
        checker = RowSecurity(lambda: pool)
        assert await checker.check('public.Odd "Notes"', rows, [viewer]) == [{0}]
        # public.odd has no RLS: every row, which a case-folded name would have asked about.
        assert await checker.check("public.odd", rows, [viewer]) == [{0, 1}]


async def test_a_quiet_secured_channel_stays_live_through_other_channels_traffic(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await secured_bridge(start_bridge, db, replay_window=4)
    async with bridge.websocket(key=bridge.user_token(ALICE)) as ws:
        assert (await ws.subscribe(table="public.notes"))["type"] == "subscribed"
        head = bridge.bridge.hub.head
        for i in range(12):  # three windows' worth of changes on another table
            await db.execute(INSERT_POSITION, "u1", f"S{i}")
        assert await bridge.bridge.hub.wait_for_head(head + 12, timeout=10)
        await db.execute("INSERT INTO notes VALUES ('1', $1, NULL, 'a')", ALICE)
        frames = await received(ws, 1)
        assert ws_changes(frames) == [("INSERT", "1")]
    # Served live by the gate, not sent back through catch-up (a read of the log).
    assert bridge.bridge.hub.stats.replayed == 0


async def test_hosted_mode_refuses_row_security_it_cannot_evaluate() -> None:
    settings = make_settings(
        "",
        database_url=None,
        supabase_url="https://project.supabase.co",
        supabase_service_key="service-key",
        supabase_jwt_secret="secret",
        row_security={"public.notes": "rls"},
    )
    bridge = Bridge(settings)
    with pytest.raises(
        ConfigurationError, match=r"ROW_SECURITY=rls needs the database.*public\.notes"
    ):
        await bridge.start()


async def test_sse_streams_what_the_policies_show_live_and_from_since(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await secured_bridge(start_bridge, db)
    await db.execute(
        "INSERT INTO notes VALUES ('1', $1, NULL, 'a'), ('2', $2, NULL, 'b')", ALICE, BOB
    )
    seen: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}
    readies = {name: asyncio.Event() for name in seen}
    async with httpx.AsyncClient(base_url=bridge.url, timeout=30) as http:
        tasks = [
            asyncio.create_task(
                sse_events(http, "public.notes", bridge.user_token(USERS[n]), seen[n], readies[n])
            )
            for n in seen
        ]
        async with background(tasks):
            for ready in readies.values():
                await asyncio.wait_for(ready.wait(), 10)
            await db.execute("UPDATE notes SET owner = $1 WHERE id = '2'", ALICE)  # Bob's → Alice's
            await db.execute("DELETE FROM notes WHERE id = '1'")
            await until(
                lambda: len(seen["alice"]) >= 3 and len(seen["bob"]) >= 2,
                15,
                what="the streams",
            )
            await asyncio.sleep(0.3)
    changes = {
        n: [(e["operation"], (e["data"] or e["old"])["id"]) for e in events]
        for n, events in seen.items()
    }
    assert changes["alice"] == [("INSERT", "1"), ("INSERT", "2"), ("DELETE", "1")]
    assert changes["bob"] == [("INSERT", "2"), ("DELETE", "2")]
