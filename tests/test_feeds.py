"""The feed runner: streaming, heartbeats, REST fallback while down, reconnect with backoff."""

from __future__ import annotations

import asyncio

from realtime_bridge.feeds import FeedRunner, FeedState, SimulatedFeed
from realtime_bridge.market import Market
from tests.helpers import until


async def test_the_feed_streams_falls_back_to_rest_and_comes_back() -> None:
    market = Market()
    feed = SimulatedFeed(["AAPL", "0001"], rate=50, seed=1)
    runner = FeedRunner(
        feed,
        market,
        ["AAPL", "0001"],
        backoff_initial=0.05,
        backoff_max=0.2,
        heartbeat=0.05,
        rest_interval=0.02,
    )
    task = asyncio.create_task(runner.run())
    try:
        await until(lambda: runner.status.state is FeedState.STREAMING, what="streaming")
        await until(lambda: market.cache.get("0001") is not None, what="a tick")
        await until(lambda: feed.heartbeats >= 2, what="heartbeats")
        feed.outage = True
        feed.drop()
        await until(lambda: runner.status.state is FeedState.REST_FALLBACK, what="fallback")
        feed.set_price("AAPL", 123.0)  # the socket is down: only REST can carry it
        await until(
            lambda: getattr(market.cache.get("AAPL"), "price", None) == 123.0, what="REST price"
        )
        assert runner.status.rest_polls >= 1
        await asyncio.sleep(0.5)
        # Backoff doubles up to its cap while the outage lasts.
        assert runner.status.backoffs[:3] == [0.05, 0.1, 0.2]
        assert max(runner.status.backoffs) == 0.2
        feed.outage = False
        await until(lambda: runner.status.state is FeedState.STREAMING, what="reconnect")
        polls = runner.status.rest_polls
        await asyncio.sleep(0.1)
        assert runner.status.rest_polls == polls  # REST stops once streaming again
        assert runner.status.connects == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_default_backoff_is_3_to_30_seconds() -> None:
    runner = FeedRunner(SimulatedFeed(["A"]), Market(), ["A"])
    assert (runner.backoff_initial, runner.backoff_max) == (3.0, 30.0)
