"""A lean WebSocket (RFC 6455) client for load generation, and a keep-alive HTTP poller.

The load generator must not compete with the server for CPU, so this is
not the `websockets` library (which costs about as much CPU per received
frame as the bridge spends sending it) but a bare `asyncio.Protocol`: it
parses frames in place, extracts the benchmark's marker (the
``"quantity"`` of ``data``) with one regular expression and never decodes
a `db_change` frame as JSON. Control frames (subscribed, pong, error) are
decoded normally. Pings are answered; client frames are masked.

One `Sink` per socket records (marker, arrival time) pairs; arrival time is
``time.time()`` taken when the chunk holding the frame was handed to us.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

DB_CHANGE = b'{"type":"db_change"'
_DATA = b'"data":'
_QUANTITY = re.compile(rb'"quantity":\s*(-?[0-9][0-9.eE+-]*)')

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Linux: let connect() pick the source port per 4-tuple even after bind().
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def marker_of(payload: bytes) -> int | None:
    """The integer marker in a db_change frame's ``data.quantity`` (None if absent)."""
    start = payload.find(_DATA)
    match = _QUANTITY.search(payload, start if start >= 0 else 0)
    if match is None:
        return None
    return int(float(match.group(1)))


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    mask = os.urandom(4)
    if n:
        key = (mask * ((n + 3) // 4))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            n, "little"
        )
    else:
        masked = b""
    return head + mask + masked


@dataclass
class Sink:
    """What one socket saw."""

    owner: int | None = None
    markers: array[int] = field(default_factory=lambda: array("q"))
    times: array[float] = field(default_factory=lambda: array("d"))
    other: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    closed_early: str | None = None
    pongs: int = 0
    pings_sent: int = 0
    server_pings: int = 0
    ping_times: deque[float] = field(default_factory=deque)
    rtts: array[float] = field(default_factory=lambda: array("d"))  # ping → pong, ms

    def reset(self) -> None:
        self.markers = array("q")
        self.times = array("d")


class WsClient(asyncio.Protocol):
    """One client connection: handshake, then frames."""

    def __init__(self, host: str, port: int, target: str, sink: Sink) -> None:
        self.host = host
        self.port = port
        self.target = target
        self.sink = sink
        # uvloop's transports are not asyncio.Transport instances.
        self.transport: Any = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.replied: asyncio.Future[dict[str, Any]] | None = None
        self.handshaken = False
        self.closing = False
        self.closed = False
        self._pending = b""
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0

    # asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {self.target} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.closing and self.sink.closed_early is None:
            self.sink.closed_early = f"connection lost: {exc!r}" if exc else "connection lost"
        reason = ConnectionError(self.sink.closed_early or "closed")
        if not self.opened.done():
            self.opened.set_exception(reason)
        if self.replied is not None and not self.replied.done():
            self.replied.set_exception(reason)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if not self.handshaken:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                self._pending = data
                return
            head = data[:end]
            if not head.startswith(b"HTTP/1.1 101"):
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                body = data[end + 4 : end + 200].decode(errors="replace")
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(f"{status} {body}".strip()))
                self.closing = True
                if self.transport is not None:
                    self.transport.close()
                return
            self.handshaken = True
            if not self.opened.done():
                self.opened.set_result(None)
            data = data[end + 4 :]
        self._frames(data, now)

    # frames -----------------------------------------------------------------

    def _frames(self, data: bytes, now: float) -> None:
        size = len(data)
        pos = 0
        sink = self.sink
        while size - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                header = 10
            end = pos + header + length
            if end > size:
                break
            payload = data[pos + header : end]
            pos = end
            opcode = b0 & 0x0F
            if not b0 & 0x80 or opcode == OP_CONT:
                if opcode != OP_CONT:
                    self._fragment_opcode = opcode
                self._fragments.append(payload)
                if not b0 & 0x80:
                    continue
                payload = b"".join(self._fragments)
                self._fragments = []
                opcode = self._fragment_opcode
            if opcode in (OP_TEXT, OP_BINARY):
                if payload.startswith(DB_CHANGE):
                    marker = marker_of(payload)
                    if marker is not None:
                        sink.markers.append(marker)
                        sink.times.append(now)
                        continue
                self._control(payload)
            elif opcode == OP_PING:
                sink.server_pings += 1
                self._write(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                if not self.closing:
                    reason = payload[2:].decode(errors="replace")
                    sink.closed_early = f"closed by the server: {code} {reason}".strip()
                    self.closing = True
                    self._write(OP_CLOSE, payload[:2])
                if self.transport is not None:
                    self.transport.close()
                return
        if pos < size:
            self._pending = data[pos:]

    def _control(self, payload: bytes) -> None:
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.sink.other["not-json"] = self.sink.other.get("not-json", 0) + 1
            return
        kind = str(frame.get("type")) if isinstance(frame, dict) else "?"
        if kind == "pong":
            self.sink.pongs += 1
            if self.sink.ping_times:
                sent = self.sink.ping_times.popleft()
                self.sink.rtts.append((time.monotonic() - sent) * 1000.0)
            return
        if self.replied is not None and not self.replied.done():
            self.replied.set_result(frame)
            return
        self.sink.other[kind] = self.sink.other.get(kind, 0) + 1
        if kind == "error" and len(self.sink.errors) < 3:
            self.sink.errors.append(str(frame.get("code")))

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(opcode, payload))

    # API ------------------------------------------------------------------------

    def send_json(self, frame: dict[str, Any]) -> None:
        self._write(OP_TEXT, orjson.dumps(frame))

    async def request(self, frame: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send `frame` and wait for the next control frame (e.g. `subscribed`)."""
        self.replied = asyncio.get_running_loop().create_future()
        self.send_json(frame)
        return await asyncio.wait_for(self.replied, timeout)

    def ping(self) -> None:
        self.sink.pings_sent += 1
        self.sink.ping_times.append(time.monotonic())
        self.send_json({"type": "ping"})

    def close(self) -> None:
        if self.closed or self.transport is None:
            return
        self.closing = True
        self._write(OP_CLOSE, (1000).to_bytes(2, "big"))
        self.transport.close()


def source_address(index: int, spread: int) -> str:
    """Spread sockets over 127.0.0.1 … 127.0.0.<spread> (more ephemeral ports)."""
    return f"127.0.0.{1 + index % max(spread, 1)}"


async def open_socket(url: str, sink: Sink, *, index: int, spread: int, timeout: float) -> WsClient:
    """Connect and complete the WebSocket handshake (raises on failure)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if host.startswith("127."):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_address(index, spread), 0))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            _, protocol = await loop.create_connection(
                lambda: WsClient(host, port, target, sink), sock=sock
            )
            await protocol.opened
    except BaseException:
        sock.close()
        raise
    return protocol


# HTTP polling (the naive approach's clients) ---------------------------------------------


class HttpPoller:
    """One keep-alive HTTP/1.1 connection polling `GET <path>?user_id=..&since=..`."""

    def __init__(self, url: str, user: int, sink: Sink) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = parts.path
        self.user = user
        self.sink = sink
        self.cursor = ""
        self.requests = 0
        self.reconnects = 0
        self.index = 0
        self.spread = 1
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, index: int, spread: int) -> None:
        self.index, self.spread = index, spread
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, local_addr=(source_address(index, spread), 0)
        )

    async def poll(self) -> None:
        """One request; a connection the server closed (keep-alive timeout) is reopened."""
        for attempt in (1, 2):
            try:
                await self._request()
                return
            except (OSError, asyncio.IncompleteReadError):
                if attempt == 2:
                    raise
                self.reconnects += 1
                self.close()
                await self.connect(self.index, self.spread)

    async def _request(self) -> None:
        assert self.reader is not None
        assert self.writer is not None
        query = f"user_id=u{self.user}&since={quote(self.cursor)}"
        self.writer.write(f"GET {self.path}?{query} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        now = time.time()
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length)
        self.requests += 1
        if not head.startswith(b"HTTP/1.1 200"):
            self.sink.other["http-error"] = self.sink.other.get("http-error", 0) + 1
            return
        answer = orjson.loads(body)
        self.cursor = str(answer.get("cursor") or self.cursor)
        for row in answer.get("rows", ()):
            self.sink.markers.append(int(float(row["quantity"])))
            self.sink.times.append(now)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
