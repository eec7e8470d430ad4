"""Bounded outbound queues, one per connection.

The hub offers live frames without waiting; when a queue is full the
subscription falls back to catching up from the replay window, which
`put`s frames and so waits for room. A client that lets its queue sit full
for `stall_timeout` seconds has stopped reading: it is cut off with
`slow_consumer` (and can resume with `since`). Either way one slow reader
never holds up the fan-out to anyone else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from realtime_bridge.events import Frame
from realtime_bridge.protocols.lean import Flag


class Puller(Protocol):
    """Frames made only when the writer is ready for them (conflated prices: `market`)."""

    def __bool__(self) -> bool:
        """True when `pull` has something to give now."""

    def pull(self, limit: int) -> list[str]:
        """Up to `limit` frames, made now."""


class QueueOutlet:
    """A bounded FIFO of frames drained by one writer (socket or SSE stream)."""

    def __init__(
        self,
        limit: int,
        on_overflow: Callable[[str], None] | None = None,
        stall_timeout: float = 30.0,
        on_take: Callable[[int], None] | None = None,
    ) -> None:
        self.limit = limit
        self.stall_timeout = stall_timeout
        self.overflowed: str | None = None
        # A list, not a deque: an empty list holds no storage (a deque's first
        # block of ~600 bytes is allocated up front), and the writer takes
        # everything queued at once far more often than a part of it.
        self._frames: list[Frame] = []
        self._ready = Flag()
        self._space = Flag(True)
        self._closed = False
        self._ending = False
        self._on_overflow = on_overflow
        # Told how many frames wait each time the writer takes some (the depth histogram).
        self._on_take = on_take
        self._pullers: list[Puller] = []
        # A writer driven by callbacks (`on_ready`), told whenever there is work.
        self._wake_writer: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        """Nothing more is accepted (closed, or ending: what is queued still goes out)."""
        return self._closed or self._ending

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: Frame) -> bool:
        if self.closed:
            return True
        if len(self._frames) >= self.limit:
            return False
        self._frames.append(frame)
        self._ready.set()
        if self._wake_writer is not None:
            self._wake_writer()
        return True

    async def put(self, frame: Frame) -> None:
        while not self.closed and len(self._frames) >= self.limit:
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), self.stall_timeout)
            except TimeoutError:
                self.overflow("slow_consumer")
        if self.closed:
            return
        self._frames.append(frame)
        self._ready.set()
        if self._wake_writer is not None:
            self._wake_writer()

    def overflow(self, reason: str) -> None:
        if self.overflowed is not None:
            return
        self.overflowed = reason
        on_overflow = self._on_overflow
        self.close()
        if on_overflow is not None:
            on_overflow(reason)

    def end(self, last: Frame | None = None) -> None:
        """Accept nothing more but `last` (queued even when full); `take` hands out what is
        queued, then [] (the writer stops)."""
        if last is not None and not self.closed:
            self._frames.append(last)
        self._ending = True
        self._ready.set()
        self._space.set()
        if self._wake_writer is not None:
            self._wake_writer()

    def attach(self, puller: Puller) -> None:
        """Let `take` pull frames from `puller` whenever the queue leaves room."""
        self._pullers.append(puller)

    def detach(self, puller: Puller) -> None:
        if puller in self._pullers:
            self._pullers.remove(puller)

    def wake(self) -> None:
        """A puller has something: wake the writer if it waits."""
        self._ready.set()
        if self._wake_writer is not None:
            self._wake_writer()

    def on_ready(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` whenever there is something for the writer (frames, a puller's
        wake-up, the end or the close), instead of waking a waiting `take_frames`."""
        self._wake_writer = callback

    def close(self) -> None:
        self._closed = True
        self._pullers.clear()
        self._frames.clear()
        self._ready.set()
        self._space.set()
        # The callbacks are the owning session's bound methods: dropping them
        # breaks the session ↔ outlet cycle, so a closed connection is freed
        # by reference counting instead of waiting for the cyclic collector.
        self._on_overflow = None
        self._on_take = None
        wake_writer, self._wake_writer = self._wake_writer, None
        if wake_writer is not None:
            wake_writer()  # it learns that nothing more comes

    async def take(self, max_frames: int = 256) -> list[str]:
        """Wait for frames and return up to `max_frames` of them, joined ([] once closed)."""
        return ["".join(frame) for frame in await self.take_frames(max_frames)]

    async def take_frames(self, max_frames: int = 256) -> list[Frame]:
        """Wait for frames and return up to `max_frames` of them, as queued ([] once closed)."""
        while True:
            while not self._frames and not any(self._pullers):
                if self.closed:
                    return []
                self._ready.clear()
                await self._ready.wait()
            taken = self.take_now(max_frames)
            if taken:
                return taken
            # else a rate-capped puller had nothing due yet: wait again

    def take_now(self, max_frames: int = 256) -> list[Frame]:
        """Up to `max_frames` frames ready now, as queued ([]: nothing yet, or closed).

        Closed with frames still queued: they are handed out (a long-poll's answer).
        """
        frames = self._frames
        waiting = len(frames)
        if self._on_take is not None and waiting:
            self._on_take(waiting)
        if waiting <= max_frames:
            taken, self._frames = frames, []
        else:
            taken = frames[:max_frames]
            del frames[:max_frames]
        self._space.set()
        # Pulled last and only now: what waited while the socket was busy is the latest.
        for puller in self._pullers:
            if len(taken) >= max_frames:
                break
            if puller:
                taken.extend((frame,) for frame in puller.pull(max_frames - len(taken)))
        return taken


class CollectOutlet:
    """Collects up to `limit` frames for one HTTP poll response."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[str] = []
        self.full = False
        self._arrived = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self.full

    def offer(self, frame: Frame) -> bool:
        if len(self.items) >= self.limit:
            self.full = True
            return False
        self.items.append("".join(frame))
        self._arrived.set()
        return True

    async def put(self, frame: Frame) -> None:
        self.offer(frame)

    def overflow(self, reason: str) -> None:
        self.full = True

    async def wait(self, timeout: float) -> None:
        if self.items:
            return
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return
