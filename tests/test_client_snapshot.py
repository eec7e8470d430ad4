"""`Client.snapshot` against a real bridge: every page, typed, scoped, then `since` from it."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from realtime_bridge import errors
from realtime_bridge.filters import parse_filter
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge_client import (
    ClientClosed,
    DecodeError,
    Event,
    InvalidFilter,
    Refused,
    ResyncRequired,
    Snapshot,
    Subscription,
    TokenExpired,
    Unauthorized,
    UnknownChannel,
    UnknownTable,
    connect,
)
from realtime_bridge_client._client import filter_string, http_url
from tests.conftest import BridgeFactory
from tests.helpers import bump_tallies, churn_positions, insert_position, last_seq


class PositionView(BaseModel):
    """A consumer's own model of the fields of `position-updates` it needs."""

    id: int
    user_id: str
    symbol: str
    current_price: float | None


class Strict(BaseModel):
    """A model no position fits."""

    id: int
    colour: str


async def positions_in_db(db: asyncpg.Connection, user_id: str | None = None) -> dict[int, Any]:
    """The positions table as {id: (user_id, symbol, current_price)}."""
    rows = await db.fetch(
        "SELECT id, user_id, symbol, current_price FROM positions "
        "WHERE $1::text IS NULL OR user_id = $1",
        user_id,
    )
    return {r["id"]: (r["user_id"], r["symbol"], float(r["current_price"])) for r in rows}


def as_state(rows: dict[int, PositionView]) -> dict[int, Any]:
    return {i: (r.user_id, r.symbol, r.current_price) for i, r in rows.items()}


def apply(rows: dict[int, PositionView], event: Event[PositionView]) -> None:
    """An event as "this row is now `data`" (DELETE: "this row is gone")."""
    if event.operation == "DELETE":
        rows.pop(event.record_id, None)
    else:
        assert event.data is not None
        rows[event.data.id] = event.data


async def follow(
    positions: Subscription[PositionView], rows: dict[int, PositionView], last: int
) -> list[int]:
    """Apply events to `rows` until seq `last`; return the seqs seen."""
    seqs: list[int] = []
    async with asyncio.timeout(10):
        while not seqs or seqs[-1] < last:
            event = await anext(positions)
            seqs.append(event.seq)
            apply(rows, event)
    return seqs


def test_filter_string_spells_subscribe_filters_for_http() -> None:
    assert filter_string(None) is None
    assert filter_string("") is None
    assert filter_string({}) is None
    assert filter_string("user_id=eq.u1") == "user_id=eq.u1"  # a string goes as it is
    spec = {
        "user_id": "u1",
        "status": ["open", "a,b", "(x)", " padded ", ""],
        "quantity": {"gte": 10.50},
        "stop_loss": None,
        "take_profit": {"is": "null"},
        "active": True,
        "price": {"neq": 5.0},
    }
    text = filter_string(spec)
    assert text == (
        'user_id=eq.u1,status=in.(open,"a,b","(x)"," padded ",""),quantity=gte.10.5,'
        "stop_loss=is.null,take_profit=is.null,active=eq.true,price=neq.5.0"
    )
    # The bridge reads the string as the same filter the map is.
    assert parse_filter(text) == parse_filter(spec)
    # Strings go as written: ids that look like numbers are not rewritten.
    hostile = {"user_id": "0001", "symbol": ["1.0", "1e3", " 1", "07.00"]}
    assert filter_string(hostile) == 'user_id=eq.0001,symbol=in.(1.0,1e3," 1",07.00)'
    # A null in a list is SQL's NULL (unquoted, as in an array literal); the text "null" is quoted.
    nulls = {"symbol": ["A", None, "null"]}
    assert filter_string(nulls) == 'symbol=in.(A,null,"null")'
    assert parse_filter(filter_string(nulls)) == parse_filter(nulls)
    negated = {"symbol": {"not": {"ilike": "*a,b*"}}, "stop_loss": {"not": None}}
    assert filter_string(negated) == 'symbol=not.ilike."%a,b%",stop_loss=not.is.null'
    assert parse_filter(filter_string(negated)) == parse_filter(negated)
    bad_filters: list[tuple[dict[str, Any], str]] = [
        ({"symbol": 'say "hi"'}, "double quote"),
        ({"my-column": 1}, "my-column"),
        ({"quantity": {"between": [1, 2]}}, "between"),
        ({"symbol": []}, "at least one"),
    ]
    for bad, fragment in bad_filters:
        with pytest.raises(InvalidFilter, match=fragment) as raised:
            filter_string(bad)
        assert raised.value.code == "invalid_filter"
        assert isinstance(raised.value, errors.InvalidFilter)


def test_the_http_url_keeps_the_base_urls_prefix() -> None:
    path = "/api/channels/position-updates/snapshot"
    assert (
        http_url("http://h:8000", path, {"limit": "5", "filter": "a=in.(x,y)"})
        == "http://h:8000/api/channels/position-updates/snapshot?limit=5&filter=a%3Din.%28x%2Cy%29"
    )
    assert (
        http_url("https://example.com/bridge/?x=1&apikey=k", path, {})
        == "https://example.com/bridge/api/channels/position-updates/snapshot?x=1"
    )
    assert http_url("wss://h/p/ws/db_subscriptions", path, {}) == f"https://h/p{path}"


async def test_snapshot_records_are_typed_and_every_page_is_followed(
    start_bridge: BridgeFactory, db: asyncpg.Connection, registry: PluginRegistry
) -> None:
    bridge = await start_bridge()
    ids = [
        await insert_position(db, "u1" if i % 3 else "u2", f"S{i}", current_price=100 + i)
        for i in range(23)
    ]
    position_model = registry.by_channel["position-updates"].model
    # Once numbered, a snapshot's seq is the head (before, it may be lower).
    assert await bridge.bridge.hub.wait_for_head(23, timeout=10)
    await last_seq(db)  # and logged (the WAL leader logs a moment after handing on)
    async with connect(bridge.url, api_key=bridge.service_key, registry=registry) as client:
        # 23 rows, 4 a page: six pages, each row exactly once, in id order.
        snap = await client.snapshot("position-updates", limit=4)
        own = await client.snapshot("position-updates", model=PositionView, limit=5)
        mine = await client.snapshot(
            "position-updates", filters={"user_id": "u1", "symbol": {"neq": "S1"}}, limit=2
        )
        same = await client.snapshot("position-updates", filters="user_id=eq.u1,symbol=neq.S1")
        table = await client.snapshot("public.positions", limit=10)
    last = await db.fetchval("SELECT last_seq FROM realtime_bridge.sequencer")
    assert isinstance(snap, Snapshot)
    assert snap.seq == own.seq == last
    assert [r.id for r in snap.records] == ids
    assert all(isinstance(r, position_model) for r in snap.records)
    assert snap.records[0].model_dump()["market_value"] == 1000.0  # computed by the plugin
    assert own.records == [
        PositionView(id=i, user_id="u1" if n % 3 else "u2", symbol=f"S{n}", current_price=100 + n)
        for n, i in enumerate(ids)
    ]
    expected = [i for n, i in enumerate(ids) if n % 3 and n != 1]
    assert [r.id for r in mine.records] == [r.id for r in same.records] == expected
    # A table channel without a model gives the raw rows as dicts.
    assert [r["id"] for r in table.records] == ids
    assert all(isinstance(r, dict) and "market_value" not in r for r in table.records)
    with pytest.raises(AttributeError):
        snap.seq = 0  # type: ignore[misc]


async def test_a_users_token_snapshots_only_that_users_rows(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    mine = [await insert_position(db, "u1", f"M{i}") for i in range(5)]
    for i in range(6):
        await insert_position(db, "u2", f"T{i}")
    async with connect(
        bridge.url, api_key=bridge.anon_key, access_token=bridge.user_token("u1")
    ) as client:
        snap = await client.snapshot("position-updates", model=PositionView, limit=2)
        # A filter narrows the scope, never widens it.
        other = await client.snapshot("position-updates", filters={"user_id": "u2"})
        # The raw table is as private as the plugin that types it.
        table = await client.snapshot("public.positions")
        # A table without a plugin is for the service key only.
        with pytest.raises(Unauthorized) as denied:
            await client.snapshot("public.auto_trade_settings")
    assert [r.id for r in snap.records] == mine
    assert {r.user_id for r in snap.records} == {"u1"}
    assert other.records == []
    assert [r["id"] for r in table.records] == mine
    assert denied.value.code == "unauthorized"


async def test_an_expired_token_is_renewed_for_the_snapshot(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    row = await insert_position(db, "u1", "MINE")
    await insert_position(db, "u2", "THEIRS")
    calls = 0

    async def renew() -> str:
        nonlocal calls
        calls += 1
        return bridge.user_token("u1", ttl=60)

    expired = bridge.user_token("u1", ttl=-10)
    async with connect(
        bridge.url, api_key=bridge.anon_key, access_token=expired, get_access_token=renew
    ) as client:
        snap = await client.snapshot("position-updates")
    assert [r["id"] for r in snap.records] == [row]
    # By the snapshot itself, or already by the socket's handshake; at most once each.
    assert 1 <= calls <= 2

    async with connect(bridge.url, api_key=bridge.anon_key, access_token=expired) as client:
        with pytest.raises(TokenExpired):
            await client.snapshot("position-updates")


async def test_refused_snapshots_raise_the_clients_errors(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    await insert_position(db, "u1", "ONE")
    async with connect(bridge.url, api_key=bridge.service_key) as client:
        with pytest.raises(UnknownChannel) as unknown:
            await client.snapshot("nope")
        assert unknown.value.code == "unknown_channel"
        assert "nope" in unknown.value.message
        assert unknown.value.details == {"channel": "nope"}
        assert isinstance(unknown.value, errors.UnknownChannel)
        assert isinstance(unknown.value, Refused)
        with pytest.raises(UnknownTable) as table:
            await client.snapshot("public.missing")
        assert table.value.code == "unknown_table"
        with pytest.raises(InvalidFilter, match="colour") as bad_filter:
            await client.snapshot("position-updates", filters={"colour": "red"})
        assert bad_filter.value.code == "invalid_filter"
        with pytest.raises(Refused, match="limit") as too_many:
            await client.snapshot("position-updates", limit=1_000_000)
        assert too_many.value.code == "bad_message"
        with pytest.raises(DecodeError, match=r"record 0 of 'position-updates'.*Strict") as misfit:
            await client.snapshot("position-updates", model=Strict)
        assert misfit.value.frame["symbol"] == "ONE"
        with pytest.raises(ValueError, match="limit"):
            await client.snapshot("position-updates", limit=0)

    async with connect(bridge.url, api_key=bridge.anon_key) as anon:
        with pytest.raises(Unauthorized) as denied:
            await anon.snapshot("trade-updates")
        assert denied.value.code == "unauthorized"

    with pytest.raises(ClientClosed):
        await connect(bridge.url, api_key=bridge.service_key).snapshot("trade-updates")


async def test_snapshot_then_subscribe_since_loses_nothing_and_converges(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    first = [await insert_position(db, "u1", f"A{i}", current_price=100 + i) for i in range(8)]
    for i in range(4):
        await insert_position(db, "u2", f"B{i}")
    mine = {"user_id": "u1"}
    async with connect(bridge.url, api_key=bridge.service_key) as client:
        snap = await client.snapshot("position-updates", filters=mine, model=PositionView, limit=3)
        rows = {r.id: r for r in snap.records}
        assert list(rows) == first
        # Written after the snapshot, before the subscription exists.
        between = await insert_position(db, "u1", "BETWEEN")
        await db.execute("UPDATE positions SET current_price = 999 WHERE id = $1", first[0])
        await db.execute("DELETE FROM positions WHERE id = $1", first[1])
        await insert_position(db, "u2", "NOT-MINE")
        async with client.subscribe(
            "position-updates", filters=mine, since=snap.seq, model=PositionView
        ) as positions:
            await insert_position(db, "u1", "AFTER")
            await db.execute("UPDATE positions SET current_price = 1 WHERE id = $1", between)
            last = await last_seq(db)
            seqs = await follow(positions, rows, last)
    assert seqs == sorted(set(seqs))
    assert seqs[0] > snap.seq
    assert as_state(rows) == await positions_in_db(db, "u1")
    assert rows[between].current_price == 1.0
    assert rows[first[0]].current_price == 999.0
    assert first[1] not in rows
    assert {"BETWEEN", "AFTER"} <= {r.symbol for r in rows.values()}


async def test_a_snapshot_paged_while_rows_change_converges_from_its_first_seq(
    start_bridge: BridgeFactory, dsn: str, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    for i in range(40):
        await insert_position(db, "u1" if i % 2 else "u2", f"P{i}")
    stop = asyncio.Event()
    writer = asyncio.create_task(churn_positions(dsn, stop, 3))
    try:
        async with connect(bridge.url, api_key=bridge.service_key) as client:
            await asyncio.sleep(0.2)
            # Two rows a page: the writer changes rows between the pages.
            snap = await client.snapshot("position-updates", model=PositionView, limit=2)
            rows = {r.id: r for r in snap.records}
            async with client.subscribe(
                "position-updates", since=snap.seq, model=PositionView
            ) as positions:
                await asyncio.sleep(0.2)
                stop.set()
                statements = await writer
                last = await last_seq(db)
                seqs = await follow(positions, rows, last)
    finally:
        stop.set()
        await asyncio.gather(writer, return_exceptions=True)
    assert statements > 20
    assert seqs == list(range(snap.seq + 1, last + 1))
    assert as_state(rows) == await positions_in_db(db)


async def test_on_resync_reloads_through_the_subscriptions_snapshot(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    for i in range(3):
        await insert_position(db, "u1", f"OLD{i}")
    await insert_position(db, "u2", "OTHER")
    bridge = await start_bridge(replay_window=1)
    assert await bridge.bridge.hub.wait_for_head(4, timeout=10)
    await db.execute("UPDATE realtime_bridge.outbox SET created_at = now() - interval '3 days'")
    assert await db.fetchval("SELECT realtime_bridge.prune()") == 4

    rows: dict[int, PositionView] = {}
    reloads: list[tuple[ResyncRequired, int]] = []
    reloaded = asyncio.Event()

    async def reload(resync: ResyncRequired) -> None:
        snap = await positions.snapshot(limit=2)  # typed and filtered like the subscription
        rows.clear()
        rows.update({r.id: r for r in snap.records})
        reloads.append((resync, snap.seq))
        reloaded.set()

    async with (
        connect(bridge.url, api_key=bridge.service_key) as client,
        client.subscribe(
            "position-updates",
            filters={"user_id": "u1"},
            since=0,
            model=PositionView,
            on_resync=reload,
        ) as positions,
    ):
        first = asyncio.create_task(positions.__anext__())
        await asyncio.wait_for(reloaded.wait(), 10)
        new = await insert_position(db, "u1", "NEW")
        event = await asyncio.wait_for(first, 10)
        apply(rows, event)
    ((resync, seq),) = reloads
    assert resync.channel == "position-updates"
    assert event.seq > seq
    assert event.record_id == new
    assert as_state(rows) == await positions_in_db(db, "u1")
    assert len(rows) == 4


TALLIES = "public.client_tallies"


async def test_a_snapshot_token_hands_each_change_over_exactly_once_across_resubscribes(
    start_bridge: BridgeFactory, dsn: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every UPDATE adds one to its row's version: each row's events must go on
    # from its snapshot version with no gap (a change in neither) and no repeat
    # (a change in both). A small queue makes the feed stop and resubscribe, with
    # its since and the token, again and again while the writers run.
    await db.execute(
        "CREATE TABLE client_tallies (id int PRIMARY KEY, version int NOT NULL);"
        "INSERT INTO client_tallies SELECT i, 0 FROM generate_series(1, 30) i;"
        f"SELECT realtime_bridge.track('{TALLIES}');"
    )
    subscribes: list[dict[str, Any]] = []
    frame_of = Subscription._subscribe_frame

    def recorded(sub: Subscription[Any], client_id: str | None) -> dict[str, Any]:
        frame = frame_of(sub, client_id)
        subscribes.append(frame)
        return frame

    monkeypatch.setattr(Subscription, "_subscribe_frame", recorded)
    bridge = await start_bridge()
    stop = asyncio.Event()
    next_id = [1000]
    writers = [
        asyncio.create_task(bump_tallies(dsn, stop, seed, "client_tallies", 30, next_id))
        for seed in (1, 2)
    ]
    events: list[Event[Any]] = []
    try:
        async with connect(bridge.url, api_key=bridge.service_key) as client:
            await asyncio.sleep(0.2)
            snap = await client.snapshot(TALLIES, limit=10_000)  # one page: one snapshot
            assert snap.token, snap
            versions = {r["id"]: r["version"] for r in snap.records}
            async with client.subscribe(
                TALLIES, since=snap.seq, snapshot_token=snap.token, max_queue=64
            ) as tallies:
                await asyncio.sleep(0.4)  # the queue fills, the feed stops
                stop.set()
                statements = sum(await asyncio.gather(*writers))
                upto = await last_seq(db)
                # The last seq may be one this subscription skips: read until silence.
                with contextlib.suppress(TimeoutError):
                    while not events or events[-1].seq < upto:
                        events.append(await asyncio.wait_for(anext(tallies), 2))
    finally:
        stop.set()
        await asyncio.gather(*writers, return_exceptions=True)
    assert statements > 50
    assert len(subscribes) > 1, "the feed never resubscribed"
    assert {f["snapshot_token"] for f in subscribes} == {snap.token}
    assert [f["since"] for f in subscribes][:1] == [snap.seq]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    assert all(snap.seq < seq <= upto for seq in seqs)
    for event in events:
        row = event.data
        assert row is not None
        if event.operation == "INSERT":
            assert row["id"] not in versions, ("in the snapshot and inserted", event)
            assert row["version"] == 0
        else:
            assert event.operation == "UPDATE", event
            assert row["version"] == versions[row["id"]] + 1, (versions[row["id"]], event)
        versions[row["id"]] = row["version"]
    # And nothing missed: the records plus the events are the table now.
    rows = await db.fetch("SELECT id, version FROM client_tallies")
    assert versions == {r["id"]: r["version"] for r in rows}
