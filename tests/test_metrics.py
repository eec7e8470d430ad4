"""`/metrics` scraped from a running bridge after real traffic, parsed by prometheus_client."""

from __future__ import annotations

import asyncio
import gc

import asyncpg

from realtime_bridge.metrics import Buckets
from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory
from tests.helpers import http, insert_position, sample, samples


def histogram(text: str, name: str, **labels: str) -> tuple[float, float, dict[str, float]]:
    """(count, sum, cumulative count by `le`) of one histogram series."""
    found = samples(text)
    want = frozenset(labels.items())
    count = found.get((f"{name}_count", want))
    total = found.get((f"{name}_sum", want))
    assert count is not None, f"{name} {labels} not in:\n{text}"
    assert total is not None
    buckets = {
        dict(key)["le"]: value
        for (sample_name, key), value in found.items()
        if sample_name == f"{name}_bucket" and key - {("le", dict(key)["le"])} == want
    }
    return count, total, buckets


async def traffic(bridge: RunningBridge, db: asyncpg.Connection, changes: int) -> str:
    async with http(bridge) as client, bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        await ws.subscribe(table="public.positions")
        for n in range(changes):
            await insert_position(db, f"u{n % 3}", "A")
        await ws.changes(changes * 2)
        gc.collect()  # one full pass for certain, timed by the bridge's callback
        await asyncio.sleep(0.2)  # a few wake-ups of the loop monitor
        return (await client.get("/metrics")).text


async def test_histograms_have_counts_and_sensible_values(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    text = await traffic(bridge, db, 5)

    for channel in ("position-updates", "public.positions"):
        count, total, buckets = histogram(
            text, "realtime_bridge_delivery_latency_seconds", channel=channel
        )
        assert count == 5
        assert 0 < total / count < 5  # commit → queued: milliseconds on one machine
        assert buckets["+Inf"] == count
        assert list(buckets.values()) == sorted(buckets.values())  # cumulative

    count, total, _ = histogram(text, "realtime_bridge_source_lag_seconds")
    assert 1 <= count <= 5  # once per batch the source handed on
    assert 0 <= total / count < 5

    count, total, _ = histogram(text, "realtime_bridge_loop_stall_seconds")
    assert count >= 2
    assert 0 <= total / count < 1
    stall_max = sample(text, "realtime_bridge_loop_stall_max_seconds")
    assert stall_max is not None
    assert 0 <= stall_max < 5

    count, total, buckets = histogram(text, "realtime_bridge_outbound_queue_depth")
    assert count >= 1  # the writer woke up at least once
    assert buckets["1.0"] >= 1
    assert 1 <= total / count <= 10 * 2 + 4  # never more than everything sent

    count, total, _ = histogram(text, "realtime_bridge_gc_pause_seconds", generation="2")
    assert count >= 1
    assert 0 < total / count < 5
    full = sample(text, "realtime_bridge_gc_collections_total", generation="2")
    assert full is not None
    assert full >= 1
    longest = sample(text, "realtime_bridge_gc_pause_max_seconds", generation="2")
    assert longest is not None
    assert 0 < longest >= total / count


async def test_each_bridge_has_its_own_registry(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    first = await start_bridge()
    second = await start_bridge()
    assert first.bridge.metrics_registry is not second.bridge.metrics_registry
    text = await traffic(first, db, 1)
    async with http(second) as client:
        other = (await client.get("/metrics")).text
    assert sample(text, "realtime_bridge_connections_total") == 1
    assert sample(other, "realtime_bridge_connections_total") == 0
    channel = "position-updates"
    assert histogram(text, "realtime_bridge_delivery_latency_seconds", channel=channel)[0] == 1
    # The second bridge routed the change too, but nobody was subscribed to it there.
    assert sample(other, "realtime_bridge_delivery_latency_seconds_count", channel=channel) is None


async def test_a_change_that_is_no_event_on_a_channel_is_no_delivery_there(
    bridge: RunningBridge, db: asyncpg.Connection
) -> None:
    async with http(bridge) as client, bridge.websocket() as ws:
        await ws.subscribe(channel="bot-updates")
        await ws.subscribe(channel="pnl-updates")
        bot = await db.fetchval(
            "INSERT INTO bots (user_id, ticker, exchange, quantity) "
            "VALUES ('u1', 'X', 'e', 1) RETURNING id"
        )
        for status in ("ACTIVE", "STOPPED"):  # bot updates; the P&L stays as it is
            await db.execute("UPDATE bots SET status = $2 WHERE id = $1", bot, status)
        frames = await ws.changes(4)
        assert [f["event"] for f in frames] == ["bot_created", "pnl_update"] + ["bot_updated"] * 2
        text = (await client.get("/metrics")).text
    name = "realtime_bridge_delivery_latency_seconds"
    assert histogram(text, name, channel="bot-updates")[0] == 3
    assert histogram(text, name, channel="pnl-updates")[0] == 1


def test_buckets_count_each_value_once_under_its_bound() -> None:
    buckets = Buckets((1, 10))
    for value in (0.5, 1, 3, 10, 11):
        buckets.observe(value)
    assert buckets.cumulative() == [("1.0", 2), ("10.0", 4), ("+Inf", 5)]
    assert buckets.count == 5
    assert buckets.sum == 25.5
