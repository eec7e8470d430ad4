"""The lifecycle both WebSocket protocols share.

Admit (origin, key, limits) or refuse the handshake; accept; count the
connection; read in the ASGI task itself until the client goes or we stop
it; then undo all of it, whatever ended the connection. Each protocol
supplies how it admits, reads and writes, and what it opens and closes
beyond that.

One task per connection. Under uvicorn's sansio protocol (a `Link`) the
writing needs none: the outlet calls `_kick` when it has something, which
schedules one `_flush` (everything offered in the meantime goes with it),
and `_flush` writes while the transport is writable; only a socket above
its high-water mark gets a task, `_drain`, waiting for it to drain. Under
another ASGI server a writer task sends frame by frame.

Ending a connection from our side (`_shut`) is bounded: the reason and the
close frame get `CLOSE_GRACE` seconds to reach the client; a client that
does not read them (a stalled consumer, whose socket never becomes
writable) has its transport aborted, so the connection, its limit slot and
its buffers are released at once instead of when the client reads again.

On shutdown (`Bridge.shutdown`) the session stops its subscriptions, queues
the protocol's goodbye behind what is already queued, lets the writer send
it all and closes with 1012 (service restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from realtime_bridge.auth import UNCHECKED, Principal
from realtime_bridge.bridge import Bridge
from realtime_bridge.events import Frame
from realtime_bridge.limits import RateLimiter, TooManyConnections
from realtime_bridge.protocols.common import Refusal, client_ip, refuse_socket
from realtime_bridge.protocols.lean import Flag
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.protocols.wire import Link, is_transport
from realtime_bridge.shutdown import CLOSE_SERVICE_RESTART

logger = logging.getLogger(__name__)

CLOSE_GRACE = 1.0
TRANSPORT_KEY = "realtime_bridge.transport"
PROTOCOL_KEY = "realtime_bridge.protocol"


class TransportScope:
    """ASGI middleware: puts a WebSocket's asyncio transport and protocol in its scope,
    and calls the WebSocket `endpoints` itself.

    ASGI gives an application no way to drop a connection whose peer stopped
    reading (`abort`), nor to write several frames in one `write()` (`Link`).
    uvicorn's `receive` is a method of its protocol object, which holds the
    transport; this is read once, at the edge, so nothing else depends on
    the server's internals. Without it `abort` does nothing and frames go
    out one `websocket.send` each.

    A WebSocket's ASGI call lasts as long as the connection, and every layer
    it passes through keeps its coroutine frame and closures for that long:
    Starlette's router, its exception middleware and its CORS middleware
    (which lets WebSockets through untouched) held about 4.5 KB of every
    idle connection. The endpoints need none of them (they answer their own
    errors), so a path in `endpoints` is called from here.
    """

    def __init__(
        self,
        app: ASGIApp,
        endpoints: Mapping[str, Callable[[WebSocket], Awaitable[None]]] | None = None,
    ) -> None:
        self.app = app
        self.endpoints = dict(endpoints or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            protocol = getattr(receive, "__self__", None)
            transport = getattr(protocol, "transport", None)
            if is_transport(transport):
                scope[TRANSPORT_KEY] = transport
                scope[PROTOCOL_KEY] = protocol
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            endpoint = self.endpoints.get(path)
            if endpoint is not None:
                await endpoint(WebSocket(scope, receive=receive, send=send))
                return
        await self.app(scope, receive, send)


def abort(websocket: WebSocket, *, only_if_stuck: bool = False) -> None:
    """Drop the connection now, discarding unsent bytes (`only_if_stuck`: if there are any)."""
    transport: Any = websocket.scope.get(TRANSPORT_KEY)
    if transport is None:
        logger.warning("cannot abort a stalled WebSocket: its transport is unknown")
        return
    if only_if_stuck and transport.is_closing() and not transport.get_write_buffer_size():
        return
    transport.abort()


class SocketSession:
    """One client socket, from handshake to cleanup."""

    outlet: QueueOutlet

    def __init__(self, bridge: Bridge, websocket: WebSocket) -> None:
        self.bridge = bridge
        self.websocket = websocket
        self.principal: Principal = UNCHECKED
        self.replays: dict[str, asyncio.Task[None]] = {}
        self._rate = RateLimiter(bridge.settings.max_messages_per_second)
        # The ASGI task itself, which reads; `_reading` while it may be cancelled to stop.
        self._reader: asyncio.Task[None] | None = None
        self._reading = False
        self._stop_reading_requested = False
        # Unlinked (another ASGI server): a writer task. Linked: no task, `_flush`
        # runs from the outlet's callbacks; `_drainer` only while the socket is not
        # writable; `_written` once nothing more will be written.
        self._writer: asyncio.Task[None] | None = None
        self._flush_due = False
        self._drainer: asyncio.Task[None] | None = None
        self._written = False
        self._written_flag: Flag | None = None
        self._closing: asyncio.Task[None] | None = None
        # Created only on shutdown (`_on_shutdown`): an idle connection keeps no task waiting.
        self._restarting: asyncio.Task[None] | None = None
        self._draining = False
        self._link: Link | None = None
        self.client_ip = client_ip(websocket)
        self.seat = bridge.limits.seat(self.client_ip)

    async def run(self) -> None:
        refusal = await self._admit()
        if refusal is None:
            try:
                self.seat.occupy(self.principal.user_id)
            except TooManyConnections as exc:
                refusal = Refusal(429, exc.code, exc.message)
        if refusal is not None:
            await refuse_socket(self.bridge, self.websocket, refusal, self.client_ip)
            return
        try:
            await self.websocket.accept()
            self._link = Link.of(self.websocket.scope.get(PROTOCOL_KEY))
            await self._serve()
        finally:
            self.seat.close()

    async def _serve(self) -> None:
        counters = self.bridge.counters
        counters.connections_total += 1
        counters.connections_open += 1
        self._opened()
        self._start_writing()
        reader = self._reader = asyncio.current_task()
        with self.bridge.shutdown.hold(self._on_shutdown):
            try:
                self._reading = True
                try:
                    await self._read()
                except asyncio.CancelledError:
                    if not self._stop_reading_requested or reader is None:
                        raise
                    reader.uncancel()  # our own stop (`_stop_reading`), not the server's
                finally:
                    self._reading = False
                if self._draining and self._restarting is not None:
                    # The reader may end first (the client answered the close, or
                    # sent something meanwhile): the goodbye still goes out.
                    await asyncio.wait(
                        {self._restarting}, timeout=self.bridge.settings.shutdown_timeout
                    )
            finally:
                if self._restarting is not None:
                    self._restarting.cancel()
                counters.connections_open -= 1
                self._closed()
                for task in self.replays.values():
                    task.cancel()
                self._close_outlet()
                await self._stop_writing()
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
        self._reader = self._writer = self._closing = self._restarting = None
        self._drainer = None
        self._link = None

    def _stop_reading(self) -> None:
        """End `_read` from another task: cancel the ASGI task while it reads."""
        reader = self._reader
        if self._reading and reader is not None and reader is not asyncio.current_task():
            self._stop_reading_requested = True
            reader.cancel()

    async def _shut(self, code: str, close_code: int, frame: str | None = None) -> None:
        """End the connection from our side: say why (`frame`) and close, within CLOSE_GRACE."""
        self._close_outlet()
        # The writer may be stuck behind a client that stopped reading.
        self._cancel_writing()
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                if frame is not None:
                    await self.websocket.send_text(frame)
                await self.websocket.close(code=close_code, reason=code)
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
            abort(self.websocket)
        else:
            # Queued, not necessarily delivered: a client that never reads the
            # close frame would hold the transport and its buffer forever.
            asyncio.get_running_loop().call_later(
                CLOSE_GRACE, lambda: abort(self.websocket, only_if_stuck=True)
            )
        finally:
            self._stop_reading()

    # writing ------------------------------------------------------------------

    def _start_writing(self) -> None:
        if self._link is None:
            self._writer = asyncio.create_task(self._write(), name="socket-writer")
            return
        self.outlet.on_ready(self._kick)
        self._kick()

    def _kick(self) -> None:
        """Something to write: flush once the current callbacks are done (they coalesce)."""
        if not self._flush_due and self._drainer is None and not self._written:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write what the outlet holds while the socket is writable; else wait for it."""
        self._flush_due = False
        link = self._link
        if link is None or self._written:
            return
        try:
            self._flush_to(link)
        except Exception:
            # A callback's exception would only reach the loop's log, and the
            # client would wait forever: drop it, so that it reconnects and resumes.
            logger.exception("writing to a WebSocket failed; dropping the connection")
            self._finish_writing()
            abort(self.websocket)

    def _flush_to(self, link: Link) -> None:
        outlet = self.outlet
        for _ in range(64):  # then let others run: `_kick` again
            if link.paused:
                self._drainer = asyncio.create_task(self._drain(link), name="socket-drain")
                return
            frames = outlet.take_now()
            if not frames:
                if outlet.closed and not len(outlet):
                    self._finish_writing()
                return
            if not link.open:
                self._finish_writing()  # the protocol closes; nothing more may follow
                return
            for data in self._buffers(frames, link.deflate):
                link.write(data)
        self._kick()

    async def _drain(self, link: Link) -> None:
        try:
            await link.drained()
        finally:
            self._drainer = None
        self._flush()

    def _finish_writing(self) -> None:
        self._written = True
        self.outlet.on_ready(None)
        if self._written_flag is not None:
            self._written_flag.set()

    async def _written_all(self) -> None:
        """Until the writer has sent everything the ended outlet holds."""
        if self._writer is not None:
            await asyncio.wait({self._writer})
            return
        if self._link is None or self._written:
            return
        if self._written_flag is None:
            self._written_flag = Flag()
        await self._written_flag.wait()

    def _cancel_writing(self) -> None:
        current = asyncio.current_task()
        for task in (self._writer, self._drainer):
            if task is not None and task is not current:
                task.cancel()
        if self._link is not None and not self._written:
            self._finish_writing()

    async def _stop_writing(self) -> None:
        tasks = [t for t in (self._writer, self._drainer) if t is not None]
        self._cancel_writing()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _on_shutdown(self) -> None:
        if self._restarting is None and self._reader is not None:
            self._draining = True
            self._restarting = asyncio.create_task(self._restart(), name="socket-restart")

    async def _restart(self) -> None:
        """Shutdown is requested: goodbye, drain the queue, close 1012, end the session."""
        for task in self.replays.values():
            task.cancel()  # before the goodbye reads the positions they would move
        self.outlet.end(self._goodbye())
        # Bounded by the server: past SHUTDOWN_TIMEOUT it cancels the session.
        await self._written_all()
        with contextlib.suppress(Exception):
            await self.websocket.close(code=CLOSE_SERVICE_RESTART, reason="service restart")
        self._stop_reading()

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
        """Unlinked (another ASGI server): send what the outlet holds, frame by frame."""
        outlet = self.outlet
        while True:
            frames = await outlet.take_frames()
            if not frames:
                return
            for frame in frames:
                await self._send_frame(frame)

    def _buffers(self, frames: list[Frame], deflate: int | None) -> Iterator[bytes]:
        """`frames` as wire bytes, in buffers of several frames each (`deflate`: compressed
        with these window bits, see `wire`)."""
        raise NotImplementedError

    async def _send_frame(self, frame: Frame) -> None:
        """Send one frame through the ASGI server (no `Link`: another server or extension)."""
        raise NotImplementedError

    def _close_outlet(self) -> None:
        raise NotImplementedError

    def _opened(self) -> None:
        """After accept: anything the protocol starts per connection."""

    def _closed(self) -> None:
        """Before the outlet closes: release what the protocol holds (subscriptions...)."""
