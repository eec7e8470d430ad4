"""The price cache in Redis, and ticks between bridge instances (REDIS_URL).

Only imported when REDIS_URL is set. Ticks published on one instance are
conflated per symbol (at most one pending per symbol, so this buffer is
bounded too), then written in one pipeline every `FLUSH_S`: `HSET` of the
cache hash and one `PUBLISH` carrying the batch to the other instances.
A new subscriber's symbols that this instance has no price for are read
from the hash. While Redis is unreachable the bridge keeps serving from
memory, says so in `/health`, and retries with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from realtime_bridge.market import Market, Tick

logger = logging.getLogger(__name__)

CACHE_KEY = "realtime_bridge:prices"
TICKS_CHANNEL = "realtime_bridge:ticks"
FLUSH_S = 0.02
RETRY_MAX_S = 30.0


class RedisPrices:
    """Mirrors `market`'s cache to Redis and joins it to the other instances' ticks."""

    def __init__(self, market: Market, url: str) -> None:
        self.market = market
        self.url = url
        self.origin = secrets.token_hex(8)
        self.client: aioredis.Redis = aioredis.from_url(url, socket_timeout=2)
        self.available = False
        self.error: str | None = None
        self._pending: dict[str, Tick] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> list[asyncio.Task[None]]:
        self.market.forward = self._forward
        self.market.lookup = self._lookup
        self._tasks = [
            asyncio.create_task(self._flush_loop(), name="redis-prices-flush"),
            asyncio.create_task(self._listen_loop(), name="redis-prices-listen"),
        ]
        return self._tasks

    async def stop(self) -> None:
        self.market.forward = None
        self.market.lookup = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.aclose()

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "error": self.error, "pending": len(self._pending)}

    # writing ------------------------------------------------------------

    def _forward(self, ticks: list[Tick]) -> None:
        for tick in ticks:
            self._pending[tick.symbol] = tick
        self._wake.set()

    def _down(self, exc: Exception) -> None:
        if self.available or self.error is None:
            logger.warning(
                "Redis at %s is unavailable, serving prices from memory: %s", self.url, exc
            )
        self.available = False
        self.error = f"{type(exc).__name__}: {exc}"

    def _up(self) -> None:
        if not self.available:
            logger.info("Redis price cache connected")
        self.available = True
        self.error = None

    async def _flush_loop(self) -> None:
        delay = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(FLUSH_S)  # gather a batch
            batch, self._pending = self._pending, {}
            if not batch:
                continue
            encoded = {s: orjson.dumps(t.to_json()) for s, t in batch.items()}
            message = orjson.dumps(
                {"origin": self.origin, "ticks": [t.to_json() for t in batch.values()]}
            )
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.hset(CACHE_KEY, mapping=encoded)  # type: ignore[arg-type]
                    pipe.publish(TICKS_CHANNEL, message)
                    await pipe.execute()
                self._up()
                delay = 0.5
            except (RedisError, OSError) as exc:
                self._down(exc)
                # Keep the newest of each symbol for the next try (newer ticks win).
                for symbol, tick in batch.items():
                    self._pending.setdefault(symbol, tick)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                self._wake.set()

    # reading --------------------------------------------------------------

    def _lookup(self, symbols: list[str]) -> None:
        if self.available:
            task = asyncio.create_task(self._fill(symbols))
            self._tasks.append(task)
            task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _fill(self, symbols: list[str]) -> None:
        try:
            values = await self.client.hmget(CACHE_KEY, symbols)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        ticks = [Tick.from_json(orjson.loads(v)) for v in values if v is not None]
        self.market.fill(ticks)

    async def load(self) -> int:
        """Read the whole cache into memory at start (0 when Redis is down)."""
        try:
            values = await self.client.hgetall(CACHE_KEY)
        except (RedisError, OSError) as exc:
            self._down(exc)
            return 0
        self._up()
        ticks = [Tick.from_json(orjson.loads(v)) for v in values.values()]
        self.market.fill(ticks)
        return len(ticks)

    async def _listen_loop(self) -> None:
        delay = 0.5
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(TICKS_CHANNEL)
                self._up()
                delay = 0.5
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    body = orjson.loads(message["data"])
                    if body.get("origin") == self.origin:
                        continue
                    ticks = [Tick.from_json(t) for t in body.get("ticks", ())]
                    self.market.publish(ticks, forward=False)
            except (RedisError, OSError) as exc:
                self._down(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)
