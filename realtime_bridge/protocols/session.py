"""The lifecycle both WebSocket protocols share.

Admit (origin, key, limits) or refuse the handshake; accept; count the
connection; run one reader and one writer task until the reader ends; then
undo all of it, whatever ended the connection. Each protocol supplies how it
admits, reads and writes, and what it opens and closes beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket

from realtime_bridge.auth import UNCHECKED, Principal
from realtime_bridge.bridge import Bridge
from realtime_bridge.limits import RateLimiter
from realtime_bridge.protocols.common import Refusal, client_ip, refuse_socket


class SocketSession:
    """One client socket, from handshake to cleanup."""

    def __init__(self, bridge: Bridge, websocket: WebSocket) -> None:
        self.bridge = bridge
        self.websocket = websocket
        self.principal: Principal = UNCHECKED
        self.replays: dict[str, asyncio.Task[None]] = {}
        self._rate = RateLimiter(bridge.settings.max_messages_per_second)
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
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
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        finally:
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
            self._release()

    def _release(self) -> None:
        """Drop what refers back to this session (tasks, subscriptions, timers).

        A closed session is then freed by reference counting; left as cycles,
        every closed connection would wait for (and lengthen) a pass of the
        cyclic garbage collector.
        """
        self.replays.clear()
        self._reader = self._writer = self._closing = None

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
