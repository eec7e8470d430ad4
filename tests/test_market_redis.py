"""The Redis price cache and backplane: shared last prices, ticks across instances, fallback."""

from __future__ import annotations

import asyncio
from typing import Any

from realtime_bridge.market import Tick
from tests.helpers import http, until


async def test_ticks_cross_instances_and_late_subscribers_read_the_cache(
    start_bridge: Any, redis_url: str
) -> None:
    one = await start_bridge(redis_url=redis_url)
    two = await start_bridge(redis_url=redis_url)
    async with two.websocket(two.anon_key) as ws:
        await ws.subscribe(channel="price-updates", filters={"symbol": ["XR1"]})
        async with http(one) as client:
            response = await client.post(
                "/api/prices", json={"ticks": [{"symbol": "XR1", "price": 42.5}]}
            )
            assert response.status_code == 202
        [frame] = await ws.changes(1)
        assert frame["data"]["price"] == 42.5  # published on one, delivered by two
    await until(lambda: one.bridge.redis_prices.available, what="redis flush")
    # A third instance that never saw the tick starts with it from the hash.
    three = await start_bridge(redis_url=redis_url)
    cached = three.bridge.market.cache.get("XR1")
    assert cached is not None
    assert cached.price == 42.5
    async with http(three) as client:
        stats = (await client.get("/api/stats")).json()
    assert stats["market"]["redis"]["available"] is True


async def test_redis_down_falls_back_to_memory(start_bridge: Any) -> None:
    bridge = await start_bridge(redis_url="redis://127.0.0.1:1/0")
    assert bridge.bridge.redis_prices.available is False
    async with bridge.websocket(bridge.anon_key) as ws:
        await ws.subscribe(channel="price-updates", filters={"symbol": "MEM"})
        bridge.bridge.market.publish([Tick.of("MEM", 3.0)])
        [frame] = await ws.changes(1)
        assert frame["data"]["price"] == 3.0
    await asyncio.sleep(0.1)
    assert bridge.bridge.market.cache.get("MEM") is not None
    assert bridge.bridge.redis_prices.error is not None
