"""GET /api/channels/{channel}/snapshot: current rows plus the seq to follow them from."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import httpx
import pytest
import respx

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import PostgrestError
from realtime_bridge.filters import Filter
from realtime_bridge.protocols.common import Target
from realtime_bridge.snapshot import SnapshotUnavailable, take_snapshot
from realtime_bridge.sources.supabase import SupabaseSource
from realtime_bridge.testing import RunningBridge
from tests.conftest import BOTH_CAPTURES, BridgeFactory, make_settings
from tests.helpers import (
    SNAPSHOT,
    bump_tallies,
    churn_positions,
    http,
    insert_position,
    last_seq,
    snapshot_pages,
    wait_routed,
)


async def test_snapshot_then_since_converges_on_the_table_while_writers_run(
    bridge: RunningBridge, dsn: str, db: asyncpg.Connection
) -> None:
    for i in range(30):
        await insert_position(db, "u1" if i % 2 else "u2", f"P{i}")
    stop = asyncio.Event()
    writers = [asyncio.create_task(churn_positions(dsn, stop, seed)) for seed in (1, 2)]
    try:
        await asyncio.sleep(0.3)
        async with http(bridge) as client:
            # Small pages, so that the writers change rows between them.
            seq, records, pages = await snapshot_pages(client, limit=7)
        assert pages >= 5
        async with bridge.websocket() as ws:
            reply = await ws.subscribe(channel="position-updates", since=seq)
            assert reply["type"] == "subscribed", reply
            await asyncio.sleep(0.3)
            stop.set()
            statements = sum(await asyncio.gather(*writers))
            last = await last_seq(db)  # every change numbered, on either capture
            state = {r["id"]: r for r in records}
            seqs: list[int] = []
            while not seqs or seqs[-1] < last:
                (event,) = await ws.changes(1)
                seqs.append(event["seq"])
                if event["operation"] == "DELETE":
                    state.pop(event["old"]["id"], None)
                else:
                    state[event["data"]["id"]] = event["data"]
    finally:
        stop.set()
        for task in writers:
            with contextlib.suppress(Exception):
                await task
    assert statements > 20
    assert seqs == list(range(seq + 1, last + 1))  # every later change, once, in order
    rows = await db.fetch("SELECT id, user_id, current_price FROM positions")
    assert {i: (s["user_id"], s["current_price"]) for i, s in state.items()} == {
        r["id"]: (r["user_id"], float(r["current_price"])) for r in rows
    }
    # Every change up to `seq` is in the snapshot: each row shows the state of
    # its last change at or before `seq`, or of a later one (committed, not
    # yet numbered, when the snapshot was read), never an older one.
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates", since=0)
        history: dict[int, list[tuple[int, Any]]] = {}
        for event in await ws.changes(last):
            row = event["data"] or event["old"]
            version = None if event["data"] is None else event["data"]["current_price"]
            history.setdefault(row["id"], []).append((event["seq"], version))
    snapshot = {r["id"]: r["current_price"] for r in records}
    for row_id, versions in history.items():
        known = [i for i, (at, _) in enumerate(versions) if at <= seq]
        allowed = (
            [v for _, v in versions[known[-1] :]] if known else [None, *(v for _, v in versions)]
        )
        assert snapshot.get(row_id) in allowed, (row_id, seq, versions, snapshot.get(row_id))


async def test_snapshot_records_are_typed_filtered_and_paged(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    for i in range(25):
        await insert_position(db, "u1", "KEEP" if i % 3 == 0 else f"X{i}", current_price=100 + i)
    # Once numbered, the snapshot's seq is the head (before, it may be lower).
    assert await bridge.bridge.hub.wait_for_head(25, timeout=10)
    async with http(bridge) as client:
        seq, records, pages = await snapshot_pages(
            client, filter="symbol=eq.KEEP,current_price=gte.110", limit=2
        )
        assert seq == await db.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
        assert [r["current_price"] for r in records] == [112.0, 115.0, 118.0, 121.0, 124.0]
        assert pages == 3
        # Typed by the plugin, like a db_change frame's `data`.
        assert records[0]["market_value"] == 1120.0
        assert set(records[0]) >= {"id", "user_id", "symbol", "unrealized_pnl_pct"}
        # The raw table channel carries the rows as they are.
        response = await client.get(
            "/api/channels/public.positions/snapshot", params={"filter": "symbol=eq.X1"}
        )
        assert response.status_code == 200
        (raw,) = response.json()["records"]
        assert raw["symbol"] == "X1"
        assert "market_value" not in raw


async def test_snapshot_is_row_scoped_and_refused_where_a_subscription_is(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    mine = {await insert_position(db, "u1", f"M{i}") for i in range(3)}
    for i in range(4):
        await insert_position(db, "u2", f"T{i}")
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        user = {"Authorization": f"Bearer {bridge.user_token('u1')}"}
        body = (await client.get(SNAPSHOT, headers=user)).json()
        assert {r["id"] for r in body["records"]} == mine
        # A filter can only narrow the scope, never widen it.
        other = await client.get(SNAPSHOT, headers=user, params={"filter": "user_id=eq.u2"})
        assert other.json()["records"] == []
        refused = [
            (await client.get(SNAPSHOT), 401, "unauthorized"),
            (
                await client.get(SNAPSHOT, headers={"apikey": bridge.anon_key}),
                401,
                "unauthorized",
            ),
            (
                await client.get(
                    "/api/channels/public.positions/snapshot",
                    headers={"apikey": bridge.anon_key},
                ),
                401,
                "unauthorized",
            ),
        ]
        for response, status, code in refused:
            assert (response.status_code, response.json()["code"]) == (status, code)


@pytest.mark.parametrize(
    ("path", "params", "status", "code", "fragment"),
    [
        (SNAPSHOT, {"cursor": "not-a-cursor"}, 400, "bad_message", "cursor"),
        (SNAPSHOT, {"cursor": "WzksMV0"}, 400, "bad_message", "cursor"),  # [9,1]: no table 9
        (SNAPSHOT, {"cursor": "WzAsImEiXQ"}, 400, "bad_message", "cursor"),  # [0,"a"]: not an id
        (SNAPSHOT, {"limit": "0"}, 400, "bad_message", "limit"),
        (SNAPSHOT, {"limit": "many"}, 400, "bad_message", "limit"),
        (SNAPSHOT, {"filter": "colour=eq.red"}, 400, "invalid_filter", "colour"),
        ("/api/channels/nope/snapshot", {}, 404, "unknown_channel", "nope"),
        ("/api/channels/public.nope/snapshot", {}, 404, "unknown_table", "public.nope"),
    ],
)
async def test_bad_snapshot_requests_get_a_specific_error(
    start_bridge: BridgeFactory,
    path: str,
    params: dict[str, str],
    status: int,
    code: str,
    fragment: str,
) -> None:
    bridge = await start_bridge()
    async with http(bridge) as client:
        response = await client.get(path, params=params)
        assert response.status_code == status, response.text
        body = response.json()
        assert body["code"] == code
        assert fragment in body["message"]
        assert (await client.get(SNAPSHOT)).status_code == 200  # still serving


async def test_a_bridge_that_has_not_started_has_nothing_to_snapshot() -> None:
    bridge = Bridge(make_settings("", database_url=None))
    target = Target("position-updates", Filter(), None, None)
    bridge.tables = {"public.positions": {"id"}}
    with pytest.raises(SnapshotUnavailable, match="no database"):
        await take_snapshot(bridge, target)


@respx.mock(assert_all_mocked=True)
async def test_a_hosted_snapshot_asks_postgrest_for_the_scope_and_reports_its_refusal(
    respx_mock: respx.MockRouter,
) -> None:
    url = "https://proj.supabase.co"
    route = respx_mock.get(f"{url}/rest/v1/positions").mock(
        return_value=httpx.Response(401, json={"code": "42501", "message": "permission denied"})
    )
    bridge = Bridge(make_settings("", database_url=None))
    bridge.tables = {"public.positions": {"id", "user_id"}}
    bridge.source = SupabaseSource(url, "key", ["public.positions"], lambda changes: None)
    target = Target("position-updates", Filter(), "u1", "user_id")
    with pytest.raises(PostgrestError, match="permission denied") as refused:
        await take_snapshot(bridge, target, limit=7)
    assert refused.value.code == "42501"
    params = route.calls.last.request.url.params
    assert (params["user_id"], params["order"], params["limit"]) == ("eq.u1", "id.asc", "7")
    await bridge.source.stop()


TALLIES = "public.snapshot_tallies"


@BOTH_CAPTURES
async def test_the_snapshot_token_hands_over_to_the_subscription_exactly_under_writers(
    start_bridge: BridgeFactory, dsn: str, db: asyncpg.Connection
) -> None:
    # Every UPDATE adds one to its row's version. Rows read while writers run,
    # then the subscription from the snapshot's seq with its token: each row's
    # events must continue its snapshot version with no gap (a change in
    # neither) and no repeat (a change in both), whichever capture numbers them.
    await db.execute(
        "CREATE TABLE snapshot_tallies (id int PRIMARY KEY, version int NOT NULL);"
        "INSERT INTO snapshot_tallies SELECT i, 0 FROM generate_series(1, 40) i;"
        f"SELECT realtime_bridge.track('{TALLIES}');"
    )
    bridge = await start_bridge()
    path = f"/api/channels/{TALLIES}/snapshot"
    next_id = [1000]
    statements = 0
    async with http(bridge) as client, bridge.websocket() as ws:
        for round_ in range(4):
            stop = asyncio.Event()
            writers = [
                asyncio.create_task(
                    bump_tallies(dsn, stop, 10 * round_ + s, "snapshot_tallies", 40, next_id)
                )
                for s in (1, 2, 3)
            ]
            try:
                await asyncio.sleep(0.2)
                body = (await client.get(path, params={"limit": 10_000})).json()
                assert body["next_cursor"] is None, body
                assert body["snapshot_token"], body
                seq, token = body["seq"], body["snapshot_token"]
                versions = {r["id"]: r["version"] for r in body["records"]}
                reply = await ws.subscribe(table=TALLIES, since=seq, snapshot_token=token)
                assert reply["type"] == "subscribed", reply
                await asyncio.sleep(0.3)
            finally:
                stop.set()
                statements += sum(await asyncio.gather(*writers))
            upto = await last_seq(db)
            await wait_routed(client, upto)
            frames: list[dict[str, Any]] = []
            # The last seq may be one this subscription skips: read until silence.
            with contextlib.suppress(TimeoutError):
                while not frames or frames[-1]["seq"] < upto:
                    frames.append(await ws.recv(1.0))
            assert all(f["type"] == "db_change" for f in frames), frames
            assert [f["seq"] for f in frames] == sorted({f["seq"] for f in frames})
            assert all(seq < f["seq"] <= upto for f in frames)
            for frame in frames:
                row = frame["data"]
                if frame["operation"] == "INSERT":
                    assert row["id"] not in versions, ("in the snapshot and inserted", frame)
                    assert row["version"] == 0
                else:
                    assert frame["operation"] == "UPDATE", frame
                    assert row["version"] == versions[row["id"]] + 1, (
                        "not the next version",
                        versions[row["id"]],
                        frame,
                    )
                versions[row["id"]] = row["version"]
            # And nothing missed: the rows plus the events are the table now.
            rows = await db.fetch("SELECT id, version FROM snapshot_tallies")
            assert versions == {r["id"]: r["version"] for r in rows}
            await ws.send({"type": "unsubscribe", "subscription_id": reply["subscription_id"]})
            assert (await ws.recv())["type"] == "unsubscribed"
    assert statements > 100
