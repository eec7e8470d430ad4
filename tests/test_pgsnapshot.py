"""The snapshot token: which transactions a snapshot saw, as Postgres decides it."""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from realtime_bridge.errors import BadMessage
from realtime_bridge.pgsnapshot import PgSnapshot
from realtime_bridge.testing import RunningBridge
from tests.helpers import http

WRAP = 1 << 32


@st.composite
def snapshots_and_xids(draw: st.DrawFn) -> tuple[str, list[int]]:
    # Around an epoch boundary too: 32-bit ids wrap there while 64-bit ones go on.
    base = draw(st.sampled_from([3, 1 << 20, WRAP - 40, 5 * WRAP - 7, (1 << 40) + 11]))
    xmin = base + draw(st.integers(0, 30))
    xmax = xmin + draw(st.integers(0, 30))
    # Postgres never hands out the low ids 0-2 of an epoch (invalid, bootstrap, frozen).
    assume(xmin % WRAP >= 3 and xmax % WRAP >= 3)
    running = draw(st.sets(st.integers(xmin, max(xmin, xmax - 1)), max_size=8))
    running = {x for x in running if x < xmax and x % WRAP >= 3}
    text = f"{xmin}:{xmax}:{','.join(str(x) for x in sorted(running))}"
    xids = draw(
        st.lists(
            st.integers(max(3, xmin - 60), xmax + 60).filter(lambda x: x % WRAP >= 3),
            min_size=1,
            max_size=20,
        )
    )
    return text, xids


async def test_saw_agrees_with_postgres_across_epochs(db: asyncpg.Connection) -> None:
    cases: list[tuple[str, list[int]]] = []

    @settings(
        max_examples=300,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(snapshots_and_xids())
    def collect(case: tuple[str, list[int]]) -> None:
        cases.append(case)

    collect()
    for text, xids in cases:
        snapshot = PgSnapshot.parse(text)
        assert snapshot.text() == text
        expected = await db.fetch(
            "SELECT x, pg_visible_in_snapshot(x::text::xid8, $1::text::pg_snapshot) AS seen"
            " FROM unnest($2::bigint[]) AS x",
            text,
            xids,
        )
        for row in expected:
            # The bridge knows a transaction by its 32-bit id, as the WAL names it.
            assert snapshot.saw(row["x"] % WRAP) is row["seen"], (text, row["x"])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12",
        "12:10:",  # xmin above xmax
        "10:20:25",  # in progress outside [xmin, xmax)
        "10:20:9",
        "a:b:",
        "10:20:11,,12",
        "10:20: 11",
        "10:20:12,11",  # Postgres lists them in order
        "1:30000:" + ",".join(str(i) for i in range(1, 20_002)),  # too many in progress
        f"1:{1 << 63}:",
    ],
)
def test_a_malformed_token_is_refused(text: str) -> None:
    with pytest.raises(BadMessage, match="snapshot_token"):
        PgSnapshot.parse(text)


async def test_a_bad_token_gets_a_specific_error_on_every_path(bridge: RunningBridge) -> None:
    channel = "position-updates"
    async with http(bridge) as client:
        for params in ({"since": "3", "snapshot_token": "nope"}, {"snapshot_token": "1:2:"}):
            for path in (f"/api/channels/{channel}/events", f"/sse/{channel}"):
                response = await client.get(path, params={**params, "wait": "0"})
                assert response.status_code == 400, (path, params, response.text)
                body = response.json()
                assert body["code"] == "bad_message"
                assert "snapshot_token" in body["message"]
        assert (await client.get("/health")).status_code == 200
    async with bridge.websocket() as ws:
        reply = await ws.subscribe(channel=channel, since=1, snapshot_token="1:2:3")
        assert reply["type"] == "error", reply
        assert reply["code"] == "bad_message"
        assert "snapshot_token" in reply["message"]
        reply = await ws.subscribe(channel=channel, snapshot_token="1:2:")
        assert reply["type"] == "error", reply
        assert reply["code"] == "bad_message"
        assert "since" in reply["message"]
        # The socket goes on.
        assert (await ws.subscribe(channel=channel))["type"] == "subscribed"
