"""The lifecycle both WebSocket protocols share.

Admit (origin, key, limits) or refuse the handshake; accept; count the
connection; run one reader and one writer task until the reader ends; then
undo all of it, whatever ended the connection. Each protocol supplies how it
admits, reads and writes, and what it opens and closes beyond that.

On shutdown (`Bridge.shutdown`) the session stops its subscriptions, queues
the protocol's goodbye behind what is already queued, lets the writer send
it all and closes with 1012 (service restart).
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket

from realtime_bridge.auth import UNCHECKED, Principal
from realtime_bridge.bridge import Bridge
from realtime_bridge.events import Frame
from realtime_bridge.limits import RateLimiter
from realtime_bridge.protocols.common import Refusal, client_ip, refuse_socket
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.shutdown import CLOSE_SERVICE_RESTART


class SocketSession:
    """One client socket, from handshake to cleanup."""

    outlet: QueueOutlet

    def __init__(self, bridge: Bridge, websocket: WebSocket) -> None:
        self.bridge = bridge
        self.websocket = websocket
        self.principal: Principal = UNCHECKED
        self.replays: dict[str, asyncio.Task[None]] = {}
        self._rate = RateLimiter(bridge.settings.max_messages_per_second)
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._draining = False
        self.client_ip = client_ip(websocket)

    async def run(self) -> None:
        refusal = await self._admit()
        if refusal is not None:
            await refuse_socket(self.bridge, self.websocket, refusal)
            return
        await self.websocket.accept()
        counters = self.bridge.counters
        counters.connections_total += 1
        counters.connections_open += 1
        self.bridge.limits.connected(self.client_ip, self.principal.user_id)
        self._opened()
        writer = self._writer = asyncio.create_task(self._write(), name="socket-writer")
        self._reader = asyncio.create_task(self._read(), name="socket-reader")
        restart = asyncio.create_task(self._restart(), name="socket-restart")
        with self.bridge.shutdown.hold():
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
                if self._draining:
                    # The reader may end first (the client answered the close, or
                    # sent something meanwhile): the goodbye still goes out.
                    await asyncio.wait({restart}, timeout=self.bridge.settings.shutdown_timeout)
            finally:
                restart.cancel()
                counters.connections_open -= 1
                self.bridge.limits.disconnected(self.client_ip, self.principal.user_id)
                self._closed()
                for task in self.replays.values():
                    task.cancel()
                self._close_outlet()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer
                if self._closing is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._closing

    async def _restart(self) -> None:
        """Once shutdown is requested: goodbye, drain the queue, close 1012, end the session."""
        await self.bridge.shutdown.wait()
        self._draining = True
        for task in self.replays.values():
            task.cancel()  # before the goodbye reads the positions they would move
        self.outlet.end(self._goodbye())
        if self._writer is not None:
            # Bounded by the server: past SHUTDOWN_TIMEOUT it cancels the session.
            await asyncio.wait({self._writer})
        with contextlib.suppress(Exception):
            await self.websocket.close(code=CLOSE_SERVICE_RESTART, reason="service restart")
        if self._reader is not None:
            self._reader.cancel()

    def _goodbye(self) -> Frame | None:
        """Stop every subscription; the last frame to send before the restart close, if any."""
        raise NotImplementedError

    async def _admit(self) -> Refusal | None:
        """Check the handshake; set `self.principal` or say why not."""
        raise NotImplementedError

    async def _read(self) -> None:
        raise NotImplementedError

    async def _receive(self) -> str | bytes | None:
        """The next frame (text or bytes); None once the client has gone."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text: str | None = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    def _oversize(self, frame: str | bytes) -> int | None:
        """The frame's size in bytes when it exceeds MAX_FRAME_BYTES, else None."""
        size = len(frame.encode()) if isinstance(frame, str) else len(frame)
        return size if size > self.bridge.settings.max_frame_bytes else None

    async def _write(self) -> None:
        raise NotImplementedError

    def _close_outlet(self) -> None:
        raise NotImplementedError

    def _opened(self) -> None:
        """After accept: anything the protocol starts per connection."""

    def _closed(self) -> None:
        """Before the outlet closes: release what the protocol holds (subscriptions...)."""
