"""price-updates: validation, conflation, rate caps, the cache, and the wire (WS, SSE, POST)."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from realtime_bridge.market import Market, PriceWatch, Tick, parse_ticks
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.protocols.prices import symbols_of
from realtime_bridge.testing import RunningBridge
from tests.helpers import http


def tick(symbol: str, price: float, **fields: Any) -> Tick:
    return Tick.of(symbol, price, **fields)


def decoded(frames: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(frame) for frame in frames]


# validation ------------------------------------------------------------------


def test_symbols_are_exact_strings_never_numbers() -> None:
    ticks = parse_ticks([{"symbol": "0001", "price": 1}, {"symbol": "1", "price": 2}])
    assert [t.symbol for t in ticks] == ["0001", "1"]
    with pytest.raises(ValidationError):
        parse_ticks([{"symbol": 1, "price": 2}])


@pytest.mark.parametrize(
    "bad",
    [
        {"symbol": "AAPL"},
        {"symbol": "AAPL", "price": "101.5"},
        {"symbol": "AAPL", "price": float("nan")},
        {"symbol": "AAPL", "price": float("inf")},
        {"symbol": "AAPL", "price": True},
        {"symbol": "", "price": 1},
        {"symbol": "A" * 33, "price": 1},
        {"symbol": "AA PL", "price": 1},
        {"symbol": "<script>", "price": 1},
        {"symbol": "AAPL", "price": 1, "volume": -5},
        {"symbol": "AAPL", "price": 1, "unexpected": 1},
        ["AAPL", 1],
    ],
)
def test_malformed_ticks_are_refused(bad: Any) -> None:
    with pytest.raises(ValidationError):
        parse_ticks([bad])


def test_symbol_filters() -> None:
    assert symbols_of({"symbol": ["AAPL", "MSFT"]}, 10) == {"AAPL", "MSFT"}
    assert symbols_of({"symbol": "0001"}, 10) == {"0001"}
    assert symbols_of("symbol=in.(AAPL,BRK.B)", 10) == {"AAPL", "BRK.B"}
    assert symbols_of("symbol=eq.BTC/USDT", 10) == {"BTC/USDT"}
    assert symbols_of('{"symbol": ["X"]}', 10) == {"X"}
    bad: Any
    for bad in (None, {}, {"symbol": []}, {"symbol": [1]}, {"ticker": "A"}, "price=eq.1", 5):
        with pytest.raises(Exception, match=r"symbol|filter") as info:
            symbols_of(bad, 10)
        assert getattr(info.value, "code", None) == "invalid_filter"
    with pytest.raises(Exception, match="at most 2"):
        symbols_of({"symbol": ["A", "B", "C"]}, 2)


# conflation --------------------------------------------------------------------


async def test_a_slow_reader_gets_the_latest_price_of_each_symbol_not_a_queue() -> None:
    market = Market()
    outlet = QueueOutlet(16)
    watch = market.watch({"AAPL", "MSFT"}, prefix='{"type":"db_change",', wake=outlet.wake)
    outlet.attach(watch)
    for i in range(10_000):
        market.publish([tick("AAPL", 100 + i), tick("MSFT", 200 + i), tick("GOOG", 1)])
    frames = decoded(await outlet.take())
    assert [(f["data"]["symbol"], f["data"]["price"]) for f in frames] == [
        ("AAPL", 10_099),
        ("MSFT", 10_199),
    ]
    assert [f["seq"] for f in frames] == [1, 2]
    assert watch.conflated == 2 * 10_000 - 2
    assert len(watch.pending) == 0


async def test_conflation_memory_is_bounded_by_the_symbols_watched() -> None:
    market = Market()
    outlet = QueueOutlet(16)
    symbols = [f"S{i}" for i in range(50)]
    watches = [market.watch(symbols, prefix="{", wake=outlet.wake) for _ in range(20)]
    tracemalloc.start()
    market.publish([tick(s, 1.0) for s in symbols])
    before = tracemalloc.get_traced_memory()[0]
    for round_ in range(200):
        market.publish([tick(s, 1.0 + round_) for s in symbols])
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert all(len(w.pending) == 50 for w in watches)
    # 200 rounds of 50 ticks for 20 readers that never read: no growth beyond noise.
    assert after - before < 200_000


async def test_a_new_watch_gets_the_cached_price_at_once() -> None:
    market = Market()
    market.publish([tick("AAPL", 101.0), tick("1", 5.0)])
    outlet = QueueOutlet(16)
    watch = market.watch({"AAPL", "0001", "1"}, prefix="{", wake=outlet.wake)
    outlet.attach(watch)
    frames = decoded(await outlet.take())
    got = {f["data"]["symbol"]: f["data"]["price"] for f in frames}
    assert got == {"AAPL": 101.0, "1": 5.0}  # "0001" has no price yet, and is not "1"


def test_an_older_tick_never_replaces_a_newer_one() -> None:
    market = Market()
    assert market.publish([tick("AAPL", 101.0, timestamp=2000.0)]) == 1
    assert market.publish([tick("AAPL", 99.0, timestamp=1000.0)]) == 0
    cached = market.cache.get("AAPL")
    assert cached is not None
    assert cached.price == 101.0
    assert market.stats.stale_ticks == 1


async def test_max_rate_caps_updates_per_symbol() -> None:
    market = Market()
    outlet = QueueOutlet(64)
    watch = market.watch({"AAPL"}, prefix="{", wake=outlet.wake, max_rate=10)
    outlet.attach(watch)
    received: list[dict[str, Any]] = []

    async def read() -> None:
        while True:
            frames = await outlet.take()
            if not frames:
                return
            received.extend(decoded(frames))

    reader = asyncio.create_task(read())
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0
    price = 0.0
    while loop.time() < end:
        price += 1
        market.publish([tick("AAPL", price)])
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.15)
    outlet.close()
    await reader
    # About 10 in one second (the first at once), never a burst, and the last is the latest.
    assert 8 <= len(received) <= 12, len(received)
    assert received[-1]["data"]["price"] == price
    assert watch.conflated > 500  # the rest were replaced while waiting, not queued
    assert isinstance(watch, PriceWatch)


def test_unwatch_forgets_the_watch() -> None:
    market = Market()
    watch = market.watch({"AAPL"}, prefix="{", wake=lambda: None)
    market.unwatch(watch)
    assert market.watchers == {}
    market.publish([tick("AAPL", 1.0)])
    assert watch.pending == {}


# the wire -----------------------------------------------------------------------


async def post(bridge: RunningBridge, body: Any, **kwargs: Any) -> httpx.Response:
    async with http(bridge) as client:
        return await client.post("/api/prices", json=body, **kwargs)


async def test_websocket_subscribers_get_their_symbols_only(bridge: RunningBridge) -> None:
    async with bridge.websocket(bridge.anon_key) as ws:
        reply = await ws.subscribe(channel="price-updates", filters={"symbol": ["AAPL", "0001"]})
        assert reply["type"] == "subscribed", reply
        assert reply["symbols"] == ["0001", "AAPL"]
        response = await post(
            bridge,
            {
                "ticks": [
                    {"symbol": "1", "price": 9.0},
                    {"symbol": "MSFT", "price": 300.0},
                    {"symbol": "0001", "price": 7.5, "exchange": "HKEX"},
                    {"symbol": "AAPL", "price": 190.25, "bid": 190.2, "ask": 190.3},
                ]
            },
        )
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 4, "received": 4}
        frames = await ws.changes(2)
        got = {f["data"]["symbol"]: f for f in frames}
        assert set(got) == {"0001", "AAPL"}
        assert got["0001"]["data"]["exchange"] == "HKEX"
        assert got["AAPL"]["data"]["bid"] == 190.2
        assert got["AAPL"]["channel"] == "price-updates"
        assert got["AAPL"]["event"] == "price_update"
        assert got["AAPL"]["subscription_id"] == reply["subscription_id"]
        assert sorted(f["seq"] for f in frames) == [1, 2]
        assert await ws.silent(0.2)


async def test_a_late_subscriber_gets_current_prices_and_resumes_numbering(
    bridge: RunningBridge,
) -> None:
    nvda = [{"symbol": "NVDA", "price": 1.0}, {"symbol": "NVDA", "price": 2}]
    await post(bridge, {"ticks": nvda})
    async with bridge.websocket(bridge.anon_key) as ws:
        reply = await ws.subscribe(channel="price-updates", filters={"symbol": "NVDA"}, since=41)
        assert reply["seq"] == 41
        [frame] = await ws.changes(1)
        assert frame["data"]["price"] == 2.0
        assert frame["seq"] == 42
        await ws.send({"type": "unsubscribe", "subscription_id": reply["subscription_id"]})
        assert (await ws.recv())["type"] == "unsubscribed"
        await post(bridge, {"ticks": [{"symbol": "NVDA", "price": 3.0}]})
        assert await ws.silent(0.2)


async def test_bad_subscriptions_are_refused_with_codes(bridge: RunningBridge) -> None:
    async with bridge.websocket(bridge.anon_key) as ws:
        no_filter = await ws.subscribe(channel="price-updates")
        assert no_filter["code"] == "invalid_filter"
        numbers = await ws.subscribe(channel="price-updates", filters={"symbol": [1]})
        assert numbers["code"] == "invalid_filter"
        rate = await ws.subscribe(channel="price-updates", filters={"symbol": "A"}, max_rate=-1)
        assert rate["code"] == "bad_message"


async def test_post_prices_refuses_bad_requests_clearly(start_bridge: Any) -> None:
    bridge: RunningBridge = await start_bridge(price_max_batch=100)
    async with httpx.AsyncClient(base_url=bridge.url) as anon:
        response = await anon.post(
            "/api/prices",
            json={"ticks": [{"symbol": "A", "price": 1}]},
            headers={"apikey": bridge.anon_key},
        )
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"
    cases: list[tuple[Any, int, str]] = [
        ([{"symbol": "A", "price": 1}], 400, "bad_message"),
        ({"ticks": "A"}, 400, "bad_message"),
        ({"ticks": [{"symbol": "A", "price": 1}] * 101}, 413, "too_large"),
        (
            {"ticks": [{"symbol": "A", "price": 1}, {"symbol": "B", "price": "x"}]},
            422,
            "invalid_payload",
        ),
    ]
    for body, status, code in cases:
        response = await post(bridge, body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["code"] == code
    mixed = [{"symbol": "A", "price": 1}, {"symbol": 5, "price": 1}]
    response = await post(bridge, {"ticks": mixed})
    error = response.json()
    assert error["errors"][0]["index"] == 1
    assert error["errors"][0]["field"] == "symbol"
    assert "nothing was published" in error["message"]
    assert bridge.bridge.market.cache.get("A") is None  # all or nothing
    async with http(bridge) as client:
        response = await client.post(
            "/api/prices", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400


async def test_a_huge_batch_is_accepted_and_conflated(bridge: RunningBridge) -> None:
    ticks = [{"symbol": f"S{i % 500}", "price": float(i)} for i in range(10_000)]
    async with bridge.websocket(bridge.anon_key) as ws:
        await ws.subscribe(channel="price-updates", filters={"symbol": ["S0", "S499"]})
        response = await post(bridge, {"ticks": ticks})
        assert response.status_code == 202
        frames = await ws.changes(2)
        got = {f["data"]["symbol"]: f["data"]["price"] for f in frames}
        # Whatever was conflated on the way, the last frame of each symbol is its last price.
        while True:
            try:
                more = await ws.recv(0.2)
            except TimeoutError:
                break
            got[more["data"]["symbol"]] = more["data"]["price"]
        assert got == {"S0": 9500.0, "S499": 9999.0}


async def test_sse_streams_prices(bridge: RunningBridge) -> None:
    await post(bridge, {"ticks": [{"symbol": "TSLA", "price": 250.0}]})
    async with (
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
        client.stream(
            "GET",
            "/sse/price-updates",
            params={"symbols": "TSLA,GOOG", "apikey": bridge.anon_key},
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        events: list[dict[str, Any]] = []
        started = time.monotonic()

        async def next_data() -> dict[str, Any]:
            async for line in lines:
                if line.startswith("data: "):
                    parsed: dict[str, Any] = orjson.loads(line[6:])
                    return parsed
            raise AssertionError("stream ended")

        events.append(await asyncio.wait_for(next_data(), 5))
        await post(bridge, {"ticks": [{"symbol": "GOOG", "price": 170.0}]})
        events.append(await asyncio.wait_for(next_data(), 5))
        assert [(e["data"]["symbol"], e["data"]["price"]) for e in events] == [
            ("TSLA", 250.0),
            ("GOOG", 170.0),
        ]
        assert time.monotonic() - started < 5
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        response = await client.get("/sse/price-updates", params={"apikey": bridge.anon_key})
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_filter"


async def test_publish_prices_in_process_and_over_http(bridge: RunningBridge) -> None:
    from realtime_bridge import PublishError, publish_prices
    from realtime_bridge.errors import PayloadInvalid

    assert await publish_prices([{"symbol": "PP1", "price": 1.5}]) == 1
    cached = bridge.bridge.market.cache.get("PP1")
    assert cached is not None
    assert cached.price == 1.5
    kept = await publish_prices(
        [{"symbol": "PP2", "price": 2.0}], bridge_url=bridge.url, api_key=bridge.service_key
    )
    assert kept == 1
    with pytest.raises(PayloadInvalid):
        await publish_prices([{"symbol": 7, "price": 1}])
    with pytest.raises(PayloadInvalid):
        await publish_prices(
            [{"symbol": "X", "price": "1"}], bridge_url=bridge.url, api_key=bridge.service_key
        )
    with pytest.raises(PublishError):
        await publish_prices([{"symbol": "X", "price": 1}], bridge_url=bridge.url, api_key="bad")


async def test_get_prices_reads_the_last_tick_of_each_symbol(bridge: RunningBridge) -> None:
    bridge.bridge.market.publish([tick("AAPL", 190.0), tick("AAPL", 191.5, bid=191.4)])
    async with httpx.AsyncClient(base_url=bridge.url) as client:
        response = await client.get(
            "/api/prices", params={"symbols": "AAPL,NOPE", "apikey": bridge.anon_key}
        )
        assert response.status_code == 200
        body = response.json()
        assert [(p["symbol"], p["price"], p["bid"]) for p in body["prices"]] == [
            ("AAPL", 191.5, 191.4)
        ]
        assert body["missing"] == ["NOPE"]
        response = await client.get(
            "/api/prices", params={"filter": "symbol=in.(AAPL)", "apikey": bridge.anon_key}
        )
        assert response.json()["prices"][0]["price"] == 191.5
        response = await client.get("/api/prices", params={"apikey": bridge.anon_key})
        assert (response.status_code, response.json()["code"]) == (400, "invalid_filter")
        response = await client.get("/api/prices", params={"symbols": "AAPL"})
        assert response.status_code == 401
