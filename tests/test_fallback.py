"""The PostgREST side of hosted Supabase mode (respx), and the switch to polling."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from realtime_bridge.change import Change
from realtime_bridge.errors import PostgrestError
from realtime_bridge.sources.supabase import SupabaseSource

URL = "https://proj.supabase.co"
KEY = "service-key"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


class FakeTable:
    """The rows PostgREST would serve for `positions`, and every request it got."""

    def __init__(self, rows: list[dict[str, Any]], *, cursor: str | None = "updated_at") -> None:
        self.rows = rows
        self.cursor = cursor
        self.requests: list[httpx.Request] = []
        self.fail_next: int | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_next is not None:
            status, self.fail_next = self.fail_next, None
            return httpx.Response(status, json={"message": "boom"})
        params = request.url.params
        select = params.get("select", "*")
        if select != "*" and select not in ("id", self.cursor):
            return httpx.Response(400, json={"code": "42703"})
        rows = list(self.rows)
        for key, value in params.multi_items():
            if key in ("select", "order", "limit", "offset"):
                continue
            op, _, operand = value.partition(".")
            assert op == "gt", value
            if key == "id":
                rows = [r for r in rows if r["id"] > int(operand)]
            else:
                bound = datetime.fromisoformat(operand)
                rows = [r for r in rows if datetime.fromisoformat(r[key]) > bound]
        order = params.get("order", "")
        for part in reversed(order.split(",") if order else []):
            bits = [*part.split("."), "asc"]
            column, direction = bits[0], bits[1]
            rows.sort(key=lambda r: r[column], reverse=direction == "desc")
        offset = int(params.get("offset", "0"))
        rows = rows[offset : offset + int(params.get("limit", "100000"))]
        if select != "*":
            rows = [{select: r[select]} for r in rows]
        return httpx.Response(200, json=rows)


def row(id_: int, price: float, seconds: float) -> dict[str, Any]:
    return {
        "id": id_,
        "user_id": "u1",
        "symbol": f"S{id_}",
        "current_price": price,
        "updated_at": at(seconds),
    }


def make_source(delivered: list[Change], **kwargs: Any) -> SupabaseSource:
    return SupabaseSource(
        URL, KEY, ["public.positions"], delivered.extend, lookback=0, delete_window=3, **kwargs
    )


def ops(changes: list[Change]) -> list[tuple[int, str, int]]:
    return [(c.seq, c.operation, (c.record or c.old_record or {})["id"]) for c in changes]


@respx.mock(assert_all_mocked=True)
async def test_polling_turns_postgrest_reads_into_changes(respx_mock: respx.MockRouter) -> None:
    table = FakeTable([row(1, 10, 1), row(2, 20, 2)])
    respx_mock.get(f"{URL}/rest/v1/positions").mock(side_effect=table)
    delivered: list[Change] = []
    source = make_source(delivered)
    await source._pass()  # the baseline: nothing is delivered
    assert delivered == []
    for request in table.requests:
        assert request.headers["apikey"] == KEY
        assert request.headers["authorization"] == f"Bearer {KEY}"

    table.rows[0] = row(1, 11, 5)  # updated
    table.rows.append(row(3, 30, 6))  # inserted
    table.requests.clear()
    await source._pass()
    changed = table.requests[0].url.params
    assert changed["updated_at"] == f"gt.{at(2)}"  # after the newest cursor seen
    assert changed["order"] == "updated_at.asc,id.asc"
    assert ops(delivered) == [(1, "UPDATE", 1), (2, "INSERT", 3)]
    update = delivered[0]
    assert (update.schema, update.table) == ("public", "positions")
    assert update.record is not None
    assert update.record["current_price"] == 11
    assert update.old_record is not None
    assert update.old_record["current_price"] == 10
    assert update.committed_at == T0 + timedelta(seconds=5)
    assert delivered[1].old_record is None

    # Read again: nothing new, nothing delivered twice.
    await source._pass()
    assert len(delivered) == 2

    # Deletion: an id of the newest `delete_window` that is gone.
    del table.rows[1]
    await source._pass()
    assert ops(delivered)[2:] == [(3, "DELETE", 2)]
    assert delivered[2].old_record is not None
    assert delivered[2].old_record["current_price"] == 20


@respx.mock(assert_all_mocked=True)
async def test_a_failed_read_is_read_again_and_deletes_beyond_the_window_are_not_seen(
    respx_mock: respx.MockRouter,
) -> None:
    table = FakeTable([row(i, i, i) for i in range(1, 6)])
    respx_mock.get(f"{URL}/rest/v1/positions").mock(side_effect=table)
    delivered: list[Change] = []
    source = make_source(delivered)
    await source._pass()
    table.rows.append(row(6, 6, 10))
    table.fail_next = 503
    with pytest.raises(PostgrestError, match="boom"):
        await source._pass()
    assert delivered == []
    await source._pass()
    assert ops(delivered) == [(1, "INSERT", 6)]
    # Ids 4..6 are the window (delete_window=3): deleting id 1 is past it.
    del table.rows[0]
    await source._pass()
    assert len(delivered) == 1
    del table.rows[-1]
    await source._pass()
    assert ops(delivered)[1:] == [(2, "DELETE", 6)]


@respx.mock(assert_all_mocked=True)
async def test_tables_without_updated_at_use_created_at_or_ids(
    respx_mock: respx.MockRouter,
) -> None:
    table = FakeTable([{"id": 1, "v": 1}, {"id": 2, "v": 2}], cursor=None)
    respx_mock.get(f"{URL}/rest/v1/positions").mock(side_effect=table)
    delivered: list[Change] = []
    source = make_source(delivered)
    await source._pass()
    assert source.tables["public.positions"].cursor is None
    table.rows.append({"id": 3, "v": 3})
    table.requests.clear()
    await source._pass()
    assert table.requests[0].url.params["id"] == "gt.2"
    assert ops(delivered) == [(1, "INSERT", 3)]


@respx.mock(assert_all_mocked=True)
async def test_realtime_messages_map_to_changes_and_dedupe_against_polls(
    respx_mock: respx.MockRouter,
) -> None:
    table = FakeTable([row(1, 10, 1)])
    respx_mock.get(f"{URL}/rest/v1/positions").mock(side_effect=table)
    delivered: list[Change] = []
    source = make_source(delivered)
    await source._pass()
    message: dict[str, Any] = {
        "ids": [1],
        "data": {
            "schema": "public",
            "table": "positions",
            "commit_timestamp": "2026-01-01T00:00:07.000Z",
            "type": "UPDATE",
            "columns": [],
            "record": row(1, 12, 7),
            "old_record": {"id": 1},
            "errors": None,
        },
    }
    source._on_message(message)
    source._on_message(message)  # the same version twice: once
    (change,) = delivered
    assert (change.seq, change.operation, change.schema, change.table) == (
        1,
        "UPDATE",
        "public",
        "positions",
    )
    assert change.committed_at == T0 + timedelta(seconds=7)
    assert change.old_record == {"id": 1}
    # A poll reading that same version, or an older one, delivers nothing.
    table.rows[0] = row(1, 12, 7)
    await source._pass()
    table.rows[0] = row(1, 11, 6)
    await source._pass()
    assert len(delivered) == 1
    # A realtime DELETE, then the poll not finding the row: one DELETE.
    source._on_message(
        {
            "ids": [1],
            "data": {**message["data"], "type": "DELETE", "record": None, "old_record": {"id": 1}},
        }
    )
    table.rows.clear()
    await source._pass()
    assert ops(delivered) == [(1, "UPDATE", 1), (2, "DELETE", 1)]
    assert delivered[1].old_record is not None
    assert delivered[1].old_record["current_price"] == 12


@respx.mock(assert_all_mocked=False)
async def test_unreachable_realtime_switches_to_polling_after_the_grace_period(
    respx_mock: respx.MockRouter,
) -> None:
    table = FakeTable([row(1, 10, 1)])
    # Realtime is a closed loopback port; PostgREST answers on the same base URL.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    base = f"http://127.0.0.1:{port}"
    respx_mock.get(f"{base}/rest/v1/positions").mock(side_effect=table)
    delivered: list[Change] = []
    source = SupabaseSource(
        base, KEY, ["public.positions"], delivered.extend, grace=0.3, poll_interval=0.05
    )
    source.start()
    try:
        assert source.to_json()["mode"] == "realtime"
        assert await source.wait_connected(5)  # connected = polling works
        assert source.mode.mode == "polling"
        assert source.mode.switches == 1
        assert "down for over 0.3 s" in source.mode.reason
        table.rows.append(row(2, 20, 3))
        for _ in range(100):
            if delivered:
                break
            await asyncio.sleep(0.02)
        assert ops(delivered) == [(1, "INSERT", 2)]
        assert source.to_json()["mode"] == "polling"
    finally:
        await source.stop()


@respx.mock(assert_all_mocked=True)
async def test_reads_go_through_the_postgrest_client_and_name_the_tables_schema(
    respx_mock: respx.MockRouter,
) -> None:
    table = FakeTable([row(1, 10, 1), row(2, 20, 2)])
    respx_mock.get(f"{URL}/rest/v1/quotes").mock(side_effect=table)
    delivered: list[Change] = []
    source = SupabaseSource(URL, KEY, ["market.quotes"], delivered.extend, page=1, lookback=0)
    await source._pass()
    table.rows.append(row(3, 30, 3))
    table.requests.clear()
    await source._pass()
    assert ops(delivered) == [(1, "INSERT", 3)]
    for request in table.requests:
        # PostgREST reads a non-default schema only when the request names it.
        assert request.headers["accept-profile"] == "market"
        assert request.headers["x-client-info"].startswith("supabase-py/postgrest-py")
    pages = [r.url.params for r in table.requests[:-1]]
    assert [(p["offset"], p["limit"]) for p in pages] == [("0", "1"), ("1", "1")]
    await source.stop()
