"""Shutting down: every client is told to reconnect, then the process exits.

A deploy sends SIGTERM. The server stops accepting connections and calls
`Shutdown.request()`; every long-lived endpoint (a WebSocket session, an
SSE stream, a long-poll) is `hold()`-ing one and awaits `wait()`. Woken, it
stops its subscriptions (so their positions are final), queues a notice
carrying the position to resume from behind whatever it had already
queued, lets that drain, and ends. The server waits for `drained()` up to
SHUTDOWN_TIMEOUT and then cuts whoever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterator

#: The WebSocket close code for "the service is restarting; reconnect" (RFC 6455 registry).
CLOSE_SERVICE_RESTART = 1012
#: The error code a client sees in the notice.
SERVICE_RESTART = "service_restart"


def retry_after_ms() -> int:
    """How long a client should wait before reconnecting.

    Spread over two seconds so that thousands of clients told at once do not
    all arrive at the new instance in the same instant.
    """
    return 1000 + random.randrange(2000)


class Shutdown:
    """Whether the process is stopping, and how many client connections are still being served."""

    def __init__(self) -> None:
        self._requested = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._active = 0
        # Told synchronously on request: a held connection need not keep a task waiting.
        self._callbacks: set[Callable[[], None]] = set()

    @property
    def requested(self) -> bool:
        return self._requested.is_set()

    @property
    def active(self) -> int:
        """Client connections still being served."""
        return self._active

    def request(self) -> None:
        """Tell every held connection to send its notice and end."""
        if self._requested.is_set():
            return
        self._requested.set()
        for callback in list(self._callbacks):
            callback()

    async def wait(self) -> None:
        """Return once shutdown is requested."""
        await self._requested.wait()

    @contextlib.contextmanager
    def hold(self, on_request: Callable[[], None] | None = None) -> Iterator[None]:
        """One client connection being served: `drained()` waits for it to end.

        `on_request` is called once shutdown is requested (at once, soon, if it
        already is), instead of the connection keeping a task in `wait()`.
        """
        self._active += 1
        self._idle.clear()
        if on_request is not None:
            if self._requested.is_set():
                asyncio.get_running_loop().call_soon(on_request)
            else:
                self._callbacks.add(on_request)
        try:
            yield
        finally:
            if on_request is not None:
                self._callbacks.discard(on_request)
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """True once no connection is held, False if `timeout` passes first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
