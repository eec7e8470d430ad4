"""The relay: typed events pushed on to hosted Supabase Realtime.

With ``RELAY_TO_SUPABASE=true`` every event of every plugin channel is also
POSTed to Supabase's broadcast REST API, so frontends that subscribe to
Supabase directly (``channel('position-updates').on('broadcast', ...)``)
receive the same typed payloads as the bridge's own clients::

    POST {SUPABASE_URL}/realtime/v1/api/broadcast
    apikey: <service key>        Authorization: Bearer <service key>
    {"messages": [{"topic": "position-updates", "event": "position_update",
                   "private": false, "payload": {<the db_change fields>}}]}

The relay is one more hub subscriber: its outlet is a bounded queue that
never refuses a frame (when full it drops the oldest and counts it), so the
hub's fan-out never waits for Supabase. One task drains the queue in
batches of up to `batch_size` messages, or whatever arrived within
`batch_wait` seconds of the first, and POSTs them in order. 429, 5xx and
transport errors (timeouts included) are retried with exponential backoff
(honouring ``Retry-After``), up to `max_retries` times; other answers and
exhausted retries count the batch as failed and move on. Sent, failed,
dropped and retried messages are counted (`/api/stats` → ``relay``,
`/metrics`).

Delivery is at most once: a batch dropped, failed, or still queued when
the process dies is not sent again. With several instances, only the one
that is `active` (the bridge passes "is the sequencer") relays, so Supabase
receives each event once, not once per instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from realtime_bridge.errors import ConfigurationError
from realtime_bridge.events import Event, Frame
from realtime_bridge.filters import Filter
from realtime_bridge.hub import Hub, Subscription
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.settings import Settings

logger = logging.getLogger(__name__)

BROADCAST_PATH = "/realtime/v1/api/broadcast"
RETRYABLE_STATUS = frozenset({408, 425, 429})


def broadcast_endpoint(supabase_url: str) -> str:
    return supabase_url.rstrip("/") + BROADCAST_PATH


class RelayQueue:
    """The relay's outlet: bounded, never full to the hub; drops the oldest instead."""

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.dropped = 0
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: Frame) -> bool:
        # Always True: a False would switch the subscription to catching up,
        # and the relay would then replay history at Supabase's pace.
        if self._closed or not frame:  # empty: rendered while this instance is inactive
            return True
        if len(self._frames) >= self.limit:
            self._frames.popleft()
            self.dropped += 1
        self._frames.append(frame)
        self._ready.set()
        return True

    async def put(self, frame: Frame) -> None:
        self.offer(frame)

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    def drain(self, most: int) -> list[Frame]:
        return [self._frames.popleft() for _ in range(min(most, len(self._frames)))]

    async def batch(self, most: int, wait: float) -> list[Frame]:
        """Wait for a first frame, then up to `wait` seconds for `most` of them."""
        while not self._frames:
            if self._closed:
                return []
            self._ready.clear()
            await self._ready.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while len(self._frames) < most and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except TimeoutError:
                break
        return self.drain(most)


@dataclass
class RelayStats:
    sent: int = 0
    failed: int = 0
    retries: int = 0
    batches: int = 0
    skipped: int = 0
    last_status: int | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_sent_at: float | None = None

    def error(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()


Sleep = Callable[[float], Awaitable[None]]


class Relay:
    """Forwards the events of `channels` to Supabase's broadcast REST API."""

    def __init__(
        self,
        supabase_url: str,
        service_key: str,
        *,
        batch_size: int = 100,
        batch_wait: float = 0.05,
        queue_max: int = 10_000,
        max_retries: int = 5,
        private_channels: Iterable[str] = (),
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        timeout: float = 10.0,
        flush_timeout: float = 2.0,
        active: Callable[[], bool] | None = None,
        sleep: Sleep = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = broadcast_endpoint(supabase_url)
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.max_retries = max_retries
        self.private_channels = frozenset(private_channels)
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.flush_timeout = flush_timeout
        self.queue = RelayQueue(queue_max)
        self.stats = RelayStats()
        self._active = active
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            timeout=timeout,
            transport=transport,
            headers={
                "apikey": service_key,
                "Authorization": f"Bearer {service_key}",
                "Content-Type": "application/json",
            },
        )
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._in_flight = False
        self._heads: dict[tuple[str, str], str] = {}

    @classmethod
    def from_settings(cls, settings: Settings, registry: PluginRegistry, **options: Any) -> Relay:
        """A relay for every plugin channel, configured by the RELAY_* settings."""
        if not (settings.supabase_url and settings.supabase_service_key):
            raise ConfigurationError(
                "RELAY_TO_SUPABASE=true needs SUPABASE_URL and SUPABASE_SERVICE_KEY"
            )
        private = [p.channel for p in registry if settings.relay_private and not p.public]
        exposed = [p.channel for p in registry if not p.public and p.channel not in private]
        if exposed:
            logger.warning(
                "relaying non-public channel(s) %s as public Supabase broadcasts: anyone with "
                "the project's anon key can read them there (RELAY_PRIVATE=true makes them "
                "private)",
                ", ".join(sorted(exposed)),
            )
        return cls(
            settings.supabase_url,
            settings.supabase_service_key,
            batch_size=settings.relay_batch_size,
            batch_wait=settings.relay_batch_ms / 1000,
            queue_max=settings.relay_queue_max,
            max_retries=settings.relay_max_retries,
            private_channels=private,
            **options,
        )

    # wiring --------------------------------------------------------------

    def start(
        self, hub: Hub, channels: Iterable[str], *, since: int | None = None
    ) -> asyncio.Task[None]:
        """Subscribe to `channels` after seq `since` (default: the head) and start sending."""
        for channel in channels:
            self._subscriptions.append(
                hub.subscribe(channel, Filter(), self.queue, since=since, render=self._render)
            )
        self._task = asyncio.create_task(self._run(hub), name="relay")
        return self._task

    async def stop(self, hub: Hub | None = None) -> None:
        """Stop sending; flush what is queued if Supabase was answering; close the client."""
        if hub is not None:
            for sub in self._subscriptions:
                hub.unsubscribe(sub)
        self._subscriptions.clear()
        stuck = self._in_flight
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.queue.close()
        if len(self.queue) and not stuck:
            # A deploy's SIGTERM should not silently lose the last batch.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_timeout):
                    while len(self.queue):
                        await self._send(self.queue.drain(self.batch_size), retry=False)
        await self._client.aclose()

    # rendering -----------------------------------------------------------

    def _render(self, event: Event, _prefix: str) -> Frame:
        """One broadcast message around the event's shared JSON body, parts unjoined."""
        if self._active is not None and not self._active():
            self.stats.skipped += 1
            return ()
        key = (event.channel, event.event)
        head = self._heads.get(key)
        if head is None:
            private = "true" if event.channel in self.private_channels else "false"
            head = self._heads[key] = (
                '{"topic":'
                + orjson.dumps(event.channel).decode()
                + ',"event":'
                + orjson.dumps(event.event).decode()
                + ',"private":'
                + private
                + ',"payload":{'
            )
        return (head, event.body, "}")

    # sending -------------------------------------------------------------

    async def _run(self, hub: Hub) -> None:
        for sub in list(self._subscriptions):
            await hub.catch_up(sub)
        while True:
            frames = await self.queue.batch(self.batch_size, self.batch_wait)
            if not frames and self.queue.closed:
                return
            await self._send(frames)

    async def _send(self, frames: list[Frame], *, retry: bool = True) -> None:
        messages = [m for m in frames if m]
        if not messages:
            return
        body = ('{"messages":[' + ",".join("".join(m) for m in messages) + "]}").encode()
        count = len(messages)
        attempt = 0
        while True:
            delay: float | None = None
            self._in_flight = True
            try:
                response = await self._client.post(self.endpoint, content=body)
            except httpx.HTTPError as exc:  # network, timeout, undecodable answer
                self.stats.error(f"{type(exc).__name__}: {exc}")
            else:
                self.stats.last_status = response.status_code
                if response.is_success:
                    self.stats.sent += count
                    self.stats.batches += 1
                    self.stats.last_sent_at = time.time()
                    return
                self.stats.error(f"HTTP {response.status_code}: {response.text[:200]}")
                if not _retryable(response.status_code):
                    self._fail(count, "not retryable")
                    return
                delay = _retry_after(response)
            finally:
                self._in_flight = False
            if not retry or attempt >= self.max_retries:
                self._fail(count, f"after {attempt + 1} attempt(s)")
                return
            backoff = min(self.backoff * 2**attempt, self.backoff_max)
            attempt += 1
            self.stats.retries += 1
            await self._sleep(min(max(backoff, delay or 0.0), self.backoff_max))

    def _fail(self, count: int, why: str) -> None:
        self.stats.failed += count
        logger.warning(
            "relay to %s gave up on %d message(s) (%s): %s",
            self.endpoint,
            count,
            why,
            self.stats.last_error,
        )

    # reporting -----------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "endpoint": self.endpoint,
            "channels": sorted(s.channel for s in self._subscriptions),
            "sent": stats.sent,
            "failed": stats.failed,
            "dropped": self.queue.dropped,
            "retries": stats.retries,
            "batches": stats.batches,
            "skipped_inactive": stats.skipped,
            "queued": len(self.queue),
            "last_status": stats.last_status,
            "last_error": stats.last_error,
        }


def _retryable(status: int) -> bool:
    return status in RETRYABLE_STATUS or status >= 500


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: rare here; the exponential backoff applies
