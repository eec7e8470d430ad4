"""Upstream market data: the feed adapter interface, its runner, and a simulated feed.

An adapter speaks one vendor's protocol (a market-data WebSocket plus a REST
quote endpoint); `FeedRunner` does everything around it, the same for every
vendor:

    CONNECTING ──connect+subscribe ok──▶ STREAMING ──socket error / missed heartbeat──┐
        ▲                                                                               │
        └──── wait 3 s, 6 s, 12 s ... 30 s (exponential) ◀── REST_FALLBACK ◀────────────┘

While the socket is down the runner polls the adapter's REST quotes every
`rest_interval` seconds, so prices keep coming (slower); once the socket is
back the polling stops. Every tick goes to `Market.publish`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from realtime_bridge.market import Market, Tick

logger = logging.getLogger(__name__)


class FeedDisconnected(Exception):
    """The upstream socket is gone (adapters raise it, or OSError)."""


class FeedAdapter(Protocol):
    """One market-data vendor."""

    name: str

    async def connect(self) -> None:
        """Open the streaming socket (raise on failure)."""

    async def subscribe(self, symbols: Sequence[str]) -> None:
        """Ask the socket for these instruments."""

    def stream(self) -> AsyncIterator[list[Tick]]:
        """Batches of ticks from the socket until it drops (then raise)."""

    async def heartbeat(self) -> None:
        """Ping the socket; raise when it does not answer."""

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        """The current quotes over REST (the fallback while the socket is down)."""

    async def close(self) -> None:
        """Close the socket (idempotent)."""


class FeedState(enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    REST_FALLBACK = "rest_fallback"
    STOPPED = "stopped"


@dataclass
class FeedStatus:
    state: FeedState = FeedState.CONNECTING
    connects: int = 0
    disconnects: int = 0
    rest_polls: int = 0
    ticks: int = 0
    last_error: str | None = None
    next_retry_s: float | None = None
    backoffs: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "rest_polls": self.rest_polls,
            "ticks": self.ticks,
            "last_error": self.last_error,
            "next_retry_s": self.next_retry_s,
        }


class FeedRunner:
    """Keeps one adapter streaming into the market: reconnects, heartbeats, REST fallback."""

    def __init__(
        self,
        adapter: FeedAdapter,
        market: Market,
        symbols: Sequence[str],
        *,
        backoff_initial: float = 3.0,
        backoff_max: float = 30.0,
        heartbeat: float = 25.0,
        heartbeat_timeout: float = 10.0,
        rest_interval: float = 5.0,
    ) -> None:
        self.adapter = adapter
        self.market = market
        self.symbols = list(symbols)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.heartbeat_every = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.rest_interval = rest_interval
        self.status = FeedStatus()

    async def run(self) -> None:
        delay = self.backoff_initial
        rest: asyncio.Task[None] | None = None
        try:
            while True:
                self.status.state = FeedState.CONNECTING
                try:
                    await self.adapter.connect()
                    await self.adapter.subscribe(self.symbols)
                except (FeedDisconnected, OSError, TimeoutError) as exc:
                    self._failed(exc)
                else:
                    if rest is not None:
                        rest.cancel()
                        rest = None
                    self.status.connects += 1
                    self.status.state = FeedState.STREAMING
                    self.status.next_retry_s = None
                    delay = self.backoff_initial
                    try:
                        await self._stream()
                    except (FeedDisconnected, OSError, TimeoutError) as exc:
                        self._failed(exc)
                    finally:
                        await self.adapter.close()
                    self.status.disconnects += 1
                if rest is None:
                    rest = asyncio.create_task(self._poll_rest(), name="feed-rest-fallback")
                self.status.state = FeedState.REST_FALLBACK
                self.status.next_retry_s = delay
                self.status.backoffs.append(delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
        finally:
            self.status.state = FeedState.STOPPED
            if rest is not None:
                rest.cancel()
            await self.adapter.close()

    def _failed(self, exc: BaseException) -> None:
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        logger.warning("market feed %s: %s", self.adapter.name, self.status.last_error)

    async def _stream(self) -> None:
        beat = asyncio.create_task(self._heartbeats(), name="feed-heartbeat")
        reader = asyncio.create_task(self._read(), name="feed-reader")
        try:
            done, _ = await asyncio.wait({beat, reader}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
            raise FeedDisconnected("the feed ended")
        finally:
            beat.cancel()
            reader.cancel()

    async def _read(self) -> None:
        async for batch in self.adapter.stream():
            self.status.ticks += len(batch)
            self.market.publish(batch)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            async with asyncio.timeout(self.heartbeat_timeout):
                await self.adapter.heartbeat()

    async def _poll_rest(self) -> None:
        while True:
            try:
                ticks = await self.adapter.quotes(self.symbols)
                self.status.rest_polls += 1
                self.status.ticks += len(ticks)
                self.market.publish(ticks)
            except (OSError, TimeoutError, FeedDisconnected) as exc:
                logger.warning("market feed %s REST fallback: %s", self.adapter.name, exc)
            await asyncio.sleep(self.rest_interval)


class SimulatedFeed:
    """A random-walk market for the demo and tests, with a switchable outage.

    `set_price` moves a symbol at once (tests); `drop()` kills the socket;
    `outage = True` makes connecting fail until it is set back.
    """

    name = "simulated"

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        rate: float = 5.0,
        start: float = 100.0,
        seed: int | None = None,
        walk: float = 0.001,
    ) -> None:
        self.rng = random.Random(seed)
        self.prices = dict.fromkeys(symbols, start)
        self.rate = rate
        self.walk = walk
        self.subscribed: list[str] = []
        self.outage = False
        self.connected = False
        self.heartbeats = 0
        self._queue: asyncio.Queue[list[Tick] | None] = asyncio.Queue(maxsize=1000)

    async def connect(self) -> None:
        if self.outage:
            raise FeedDisconnected("simulated outage")
        self.connected = True
        self._queue = asyncio.Queue(maxsize=1000)

    async def subscribe(self, symbols: Sequence[str]) -> None:
        self.subscribed = list(symbols)
        for symbol in symbols:
            self.prices.setdefault(symbol, 100.0)

    async def stream(self) -> AsyncIterator[list[Tick]]:
        interval = 1.0 / self.rate
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.connected:
                raise FeedDisconnected("simulated socket dropped")
            try:
                async with asyncio.timeout(max(next_at - loop.time(), 0)):
                    injected = await self._queue.get()
            except TimeoutError:
                next_at += interval
                yield [self._step(s) for s in self.subscribed]
                continue
            if injected is None:
                raise FeedDisconnected("simulated socket dropped")
            yield injected

    def _step(self, symbol: str) -> Tick:
        price = self.prices[symbol] * (1 + self.rng.gauss(0, self.walk))
        self.prices[symbol] = round(max(price, 0.01), 4)
        return Tick.of(symbol, self.prices[symbol], exchange="SIM", timestamp=time.time())

    def set_price(self, symbol: str, price: float) -> None:
        """Move `symbol` to `price` now (through the socket, or the next REST poll)."""
        self.prices[symbol] = price
        if self.connected:
            tick = Tick.of(symbol, price, exchange="SIM", timestamp=time.time())
            self._queue.put_nowait([tick])

    def drop(self) -> None:
        """Kill the socket (the runner falls back to REST and reconnects)."""
        if self.connected:
            self.connected = False
            self._queue.put_nowait(None)

    async def heartbeat(self) -> None:
        if not self.connected:
            raise FeedDisconnected("no pong")
        self.heartbeats += 1

    async def quotes(self, symbols: Sequence[str]) -> list[Tick]:
        now = time.time()
        return [
            Tick.of(s, self.prices[s], exchange="SIM-REST", timestamp=now)
            for s in symbols
            if s in self.prices
        ]

    async def close(self) -> None:
        self.connected = False
