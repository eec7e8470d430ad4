"""Server WebSocket frames built once and written several to a `write()`.

Once there is load, the kernel send per frame is the ceiling (on a 2-core
box a C server reached about 140,000 deliveries/s with one frame per
`write()` and 1.35 million with ten). So a connection's writer takes every
frame its queue holds and hands the socket one buffer of at most
`WRITE_BYTES`; a queue holding one frame is written at once (no timer).

Server frames are not masked, so a frame's bytes, header included, are the
same for every receiver: `Encoder` builds them once per shared string and
per shared frame and keeps them while the hub's fan-out reuses them.

`Link` is the direct line to the socket under uvicorn's websockets-sansio
protocol: `websocket.send` would re-frame and write each message on its
own. Only complete, unfragmented data frames go this way, and only while
the protocol says the connection is open; the handshake, pings, the close
handshake and flow control stay the protocol's.

permessage-deflate (WS_PERMESSAGE_DEFLATE, RFC 7692) is negotiated without
context takeover in either direction, so every message is compressed on
its own, from a fresh compressor: the compressed bytes of a frame depend
only on its payload and the window size, not on the connection. `Encoder`
therefore deflates a shared frame once per window size and every receiver
that negotiated it gets the same bytes (RSV1 set). A per-receiver frame
(the JSON protocol's subscription prefix + the event's shared body) is
deflated part by part, each part once: a raw deflate stream ended with a
sync flush stops on a byte boundary and refers to nothing before it, so
independently compressed parts concatenate into one valid stream (the
empty block the last flush adds is removed, as the RFC asks). Client
frames are decompressed by websockets' own extension, in the protocol.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate

from realtime_bridge.events import Frame

#: A buffer handed to one `write()` grows up to about this many bytes.
WRITE_BYTES = 64 * 1024
#: A batch frame (negotiated) holds at most this many bytes of frames.
BATCH_BYTES = 64 * 1024

OP_TEXT = 0x81  # FIN + text
OP_BINARY = 0x82  # FIN + binary
RSV1 = 0x40  # set on a compressed message's first frame (RFC 7692 §6)
#: zlib's settings for every compressed frame (its defaults: level 6, memLevel 8).
DEFLATE_SETTINGS: dict[str, int] = {"memLevel": 8}
_SYNC_TAIL = b"\x00\x00\xff\xff"  # the empty stored block a sync flush ends with
BINARY_MARK = "\x00"  # a frame whose first part starts with it is binary (see phoenix_wire)

_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def header(opcode: int, length: int) -> bytes:
    """The header of an unmasked frame of `length` payload bytes (RFC 6455 §5.2)."""
    if length < 126:
        return _SHORT.pack(opcode, length)
    if length < 65536:
        return _MEDIUM.pack(opcode, 126, length)
    return _LONG.pack(opcode, 127, length)


class Encoder:
    """UTF-8 bytes of shared strings and wire bytes of shared frames, each built once.

    Keyed by identity, each entry holding its key (so an id cannot be reused
    while it is cached): an event's body and a subscription's prefix are the
    same `str` objects for every receiver and every event, a plugin
    broadcast the same tuple. Bounded in bytes: past `limit`, start afresh.
    """

    def __init__(self, limit: int = 8 * 1024 * 1024) -> None:
        self.limit = limit
        self.size = 0
        self._parts: dict[int, tuple[str, bytes]] = {}
        self._frames: dict[int, tuple[Frame, bytes]] = {}
        # (id, window bits) → (key, deflated bytes): parts keep their sync tail.
        self._deflated: dict[tuple[int, int], tuple[object, bytes]] = {}
        #: Compressions run (each part or shared frame once per window size).
        self.deflations = 0
        #: Bytes compressed and what they became.
        self.deflated_in = 0
        self.deflated_out = 0

    def text(self, part: str) -> bytes:
        entry = self._parts.get(id(part))
        if entry is not None and entry[0] is part:
            return entry[1]
        data = part.encode()
        self._remember(len(data))
        self._parts[id(part)] = (part, data)
        return data

    def payload(self, frame: Frame) -> bytes:
        """The frame's payload bytes (binary frames: the bytes after the mark)."""
        if frame[0].startswith(BINARY_MARK):
            return "".join(frame)[1:].encode("latin-1")
        text = self.text
        return b"".join([text(part) for part in frame])

    def frame(self, frame: Frame) -> bytes:
        """The whole wire frame, header included, built once for a shared frame tuple."""
        entry = self._frames.get(id(frame))
        if entry is not None and entry[0] is frame:
            return entry[1]
        data = self.payload(frame)
        wire = header(OP_BINARY if frame[0].startswith(BINARY_MARK) else OP_TEXT, len(data)) + data
        self._remember(len(wire))
        self._frames[id(frame)] = (frame, wire)
        return wire

    def parts(self, frame: Frame) -> list[bytes]:
        """A text frame as [header, part bytes...]: per-receiver frames (nothing to share whole)."""
        text = self.text
        encoded = [text(part) for part in frame]
        size = 0
        for data in encoded:
            size += len(data)
        encoded.insert(0, header(OP_TEXT, size))
        return encoded

    def deflate_stats(self) -> dict[str, int]:
        """Compressions run and the bytes before / after (for /api/stats)."""
        return {
            "compressions": self.deflations,
            "bytes_in": self.deflated_in,
            "bytes_out": self.deflated_out,
        }

    def deflate(self, data: bytes, wbits: int) -> bytes:
        """`data` as a raw deflate stream from a fresh compressor, sync-flushed (tail kept)."""
        compressor = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION,
            zlib.DEFLATED,
            -wbits,
            DEFLATE_SETTINGS["memLevel"],
        )
        out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self.deflations += 1
        self.deflated_in += len(data)
        self.deflated_out += len(out) - len(_SYNC_TAIL)
        return out

    def deflated_part(self, part: str, wbits: int) -> bytes:
        """A shared string, deflated once per window size (ends with the sync tail)."""
        key = (id(part), wbits)
        entry = self._deflated.get(key)
        if entry is not None and entry[0] is part:
            return entry[1]
        data = self.deflate(self.text(part), wbits)
        self._remember(len(data))
        self._deflated[key] = (part, data)
        return data

    def deflated_frame(self, frame: Frame, wbits: int) -> bytes:
        """The whole compressed wire frame (RSV1), built once for a shared frame tuple."""
        key = (id(frame), wbits)
        entry = self._deflated.get(key)
        if entry is not None and entry[0] is frame:
            return entry[1]
        data = self.deflate(self.payload(frame), wbits)[: -len(_SYNC_TAIL)]
        opcode = OP_BINARY if frame[0].startswith(BINARY_MARK) else OP_TEXT
        wire = header(opcode | RSV1, len(data)) + data
        self._remember(len(wire))
        self._deflated[key] = (frame, wire)
        return wire

    def deflated_parts(self, parts: Sequence[str], wbits: int) -> list[bytes]:
        """A compressed text frame of `parts` as [header, deflated parts...], each part once."""
        encoded = [self.deflated_part(part, wbits) for part in parts]
        encoded[-1] = encoded[-1][: -len(_SYNC_TAIL)]
        size = 0
        for data in encoded:
            size += len(data)
        encoded.insert(0, header(OP_TEXT | RSV1, size))
        return encoded

    def _remember(self, size: int) -> None:
        self.size += size
        if self.size > self.limit:
            self._parts.clear()
            self._frames.clear()
            self._deflated.clear()
            self.size = size


#: One per process: the hub fans an event out to every protocol's sessions at once.
ENCODER = Encoder()


def batches(frames: Sequence[Frame], limit: int = BATCH_BYTES) -> Iterator[list[Frame]]:
    """Runs of consecutive frames of at most `limit` characters (a longer frame alone)."""
    run: list[Frame] = []
    size = 0
    for frame in frames:
        length = 0
        for part in frame:
            length += len(part)
        if run and size + length > limit:
            yield run
            run, size = [], 0
        run.append(frame)
        size += length + 1
    if run:
        yield run


_OPEN, _COMMA, _CLOSE = "[", ",", "]"


def write_batches(
    encoder: Encoder, frames: Sequence[Frame], deflate: int | None = None
) -> Iterator[bytes]:
    """Buffers for the socket: runs of two or more frames as one JSON array frame each.

    `deflate`: the window bits of a negotiated permessage-deflate (compressed frames).
    """
    text = encoder.text
    pending: list[bytes] = []
    pending_size = 0
    for run in batches(frames):
        if deflate is not None:
            if len(run) == 1:
                parts = encoder.deflated_parts(run[0], deflate)
            else:
                joined: list[str] = [_OPEN]
                for index, frame in enumerate(run):
                    if index:
                        joined.append(_COMMA)
                    joined.extend(frame)
                joined.append(_CLOSE)
                parts = encoder.deflated_parts(joined, deflate)
            pending.extend(parts)
            for data in parts:
                pending_size += len(data)
        elif len(run) == 1:
            parts = encoder.parts(run[0])
            pending.extend(parts)
            for data in parts:
                pending_size += len(data)
        else:
            body: list[bytes] = [b"["]
            size = 1
            for index, frame in enumerate(run):
                if index:
                    body.append(b",")
                    size += 1
                for part in frame:
                    data = text(part)
                    body.append(data)
                    size += len(data)
            body.append(b"]")
            size += 1
            pending.append(header(OP_TEXT, size))
            pending.extend(body)
            pending_size += size
        if pending_size >= WRITE_BYTES:
            yield b"".join(pending)
            pending, pending_size = [], 0
    if pending:
        yield b"".join(pending)


def write_frames(
    encoder: Encoder, frames: Sequence[Frame], shared: bool, deflate: int | None = None
) -> Iterator[bytes]:
    """Buffers for the socket, each several whole frames (`shared`: frame tuples recur).

    `deflate`: the window bits of a negotiated permessage-deflate (compressed frames).
    """
    pending: list[bytes] = []
    size = 0
    for frame in frames:
        if deflate is not None:
            if shared or frame[0].startswith(BINARY_MARK):
                data = encoder.deflated_frame(frame, deflate)
                pending.append(data)
                size += len(data)
            else:
                parts = encoder.deflated_parts(frame, deflate)
                pending.extend(parts)
                for data in parts:
                    size += len(data)
        elif shared or frame[0].startswith(BINARY_MARK):
            data = encoder.frame(frame)
            pending.append(data)
            size += len(data)
        else:
            parts = encoder.parts(frame)
            pending.extend(parts)
            for data in parts:
                size += len(data)
        if size >= WRITE_BYTES:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)


def is_transport(transport: object) -> bool:
    """An asyncio transport, or one that behaves as one (uvloop's are no subclass of it)."""
    if isinstance(transport, asyncio.Transport):
        return True
    return all(
        callable(getattr(transport, name, None))
        for name in ("write", "abort", "is_closing", "get_write_buffer_size")
    )


class Link:
    """Writes pre-built data frames straight to the transport of one uvicorn WebSocket."""

    __slots__ = ("_protocol", "_transport", "deflate")

    def __init__(self, protocol: Any, transport: Any, deflate: int | None = None) -> None:
        self._protocol = protocol
        self._transport = transport
        #: The window bits our frames are compressed with (None: uncompressed).
        self.deflate = deflate

    @classmethod
    def of(cls, protocol: Any) -> Link | None:
        """A link to `protocol` (uvicorn's `receive.__self__`), if it can carry our frames.

        Only uvicorn's websockets-sansio protocol, after the handshake, with
        no extension negotiated or permessage-deflate without context takeover
        on our side (with it, each frame would need the connection's own
        compressor: such a connection frames through the protocol).
        """
        if not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        conn = getattr(protocol, "conn", None)
        transport: Any = getattr(protocol, "transport", None)
        writable = getattr(protocol, "writable", None)
        if conn is None or not is_transport(transport):
            return None
        if not callable(getattr(writable, "wait", None)):
            return None
        extensions = getattr(conn, "extensions", None)
        if extensions == []:
            return cls(protocol, transport)
        if (
            isinstance(extensions, list)
            and len(extensions) == 1
            and isinstance(extensions[0], PerMessageDeflate)
            and extensions[0].local_no_context_takeover
        ):
            return cls(protocol, transport, extensions[0].local_max_window_bits or 15)
        return None

    @property
    def open(self) -> bool:
        """The protocol would still send a data frame (no close sent or received)."""
        protocol = self._protocol
        conn = protocol.conn
        return (
            not protocol.close_sent
            and not protocol.disconnected
            and conn.state.name == "OPEN"
            and not conn.expect_continuation_frame
            and not self._transport.is_closing()
        )

    @property
    def paused(self) -> bool:
        """The transport's buffer is above its high-water mark (the peer is slow)."""
        return not self._protocol.writable.is_set()

    async def drained(self) -> None:
        await self._protocol.writable.wait()

    def write(self, data: bytes) -> None:
        self._transport.write(data)
