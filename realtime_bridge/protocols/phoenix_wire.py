"""Phoenix channel frames, as the Supabase Realtime clients write and read them.

Two serializers, chosen per socket by the `vsn` query parameter:

* ``1.0.0``: JSON objects ``{"topic","event","payload","ref"}`` (clients may add
  ``join_ref``; the server sends exactly those four keys);
* ``2.0.0``: JSON arrays ``[join_ref, ref, topic, event, payload]``, plus two
  binary frames for broadcasts: kind 3 (client → server "user broadcast
  push") and kind 4 (server → client "user broadcast"). Every length field
  of a binary header is one byte, so topic, event and metadata are each at
  most 255 bytes.

Outbound frames travel through the connection's queue as `Frame` tuples of
text. A binary frame is the tuple ``(BINARY, <bytes as latin-1 text>)``: JSON
text never starts with a NUL, so the writer can tell them apart, and the
bytes of a frame sent to many sockets are encoded once and shared.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import orjson

from realtime_bridge.errors import ClientError
from realtime_bridge.events import Frame
from realtime_bridge.protocols import bounds

BINARY = "\x00"
PUSH_KIND = 3
BROADCAST_KIND = 4
RAW_ENCODING = 0
JSON_ENCODING = 1
MAX_HEADER_FIELD = 255


class Vsn(enum.Enum):
    V1 = "1.0.0"
    V2 = "2.0.0"

    @classmethod
    def parse(cls, value: str | None) -> Vsn | None:
        """The serializer a `vsn` parameter asks for (1.0.0 when absent), None if unsupported."""
        if value is None or value == "":
            return cls.V1
        for vsn in cls:
            # Phoenix matches `~> 1.0.0`, i.e. any 1.0.x.
            if value == vsn.value or value.startswith(vsn.value[:4]):
                return vsn
        return None


class BadFrame(ValueError):
    """An inbound frame that is not a Phoenix message (dropped; the socket stays up)."""


class BadPayload(BadFrame):
    """A Phoenix message whose payload is out of bounds (answered on its topic and ref)."""

    def __init__(self, inbound: Inbound, error: ClientError) -> None:
        super().__init__(error.message)
        self.inbound = inbound
        self.error = error


@dataclass(frozen=True, slots=True)
class Inbound:
    """One decoded client message.

    `payload` is the decoded JSON payload. For a binary kind-3 broadcast it
    is ``{"type": "broadcast", "event": ..., "payload": ...}`` like its JSON
    spelling, and `raw` keeps the undecoded user payload with its encoding
    so it can be forwarded without re-encoding.
    """

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any
    raw: bytes | None = None
    raw_encoding: int = JSON_ENCODING


def _ref(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise BadFrame("ref and join_ref must be strings or null")


def decode(data: str | bytes, vsn: Vsn) -> Inbound:
    """Decode one client frame (text, or a v2 binary kind-3 push)."""
    if isinstance(data, bytes):
        if vsn is not Vsn.V2:
            raise BadFrame("binary frames need vsn=2.0.0")
        return _decode_push(data)
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadFrame(f"frame is not valid JSON: {exc}") from exc
    if vsn is Vsn.V2:
        if not isinstance(message, list) or len(message) != 5:
            raise BadFrame("a 2.0.0 frame is [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = message
    else:
        if not isinstance(message, dict) or not {"topic", "event", "payload", "ref"} <= set(
            message
        ):
            raise BadFrame('a 1.0.0 frame is {"topic","event","payload","ref"}')
        topic, event, payload = message["topic"], message["event"], message["payload"]
        ref, join_ref = message["ref"], message.get("join_ref")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise BadFrame("topic and event must be strings")
    return _bounded(Inbound(_ref(join_ref), _ref(ref), topic, event, payload), payload)


def _bounded(inbound: Inbound, payload: Any) -> Inbound:
    """`inbound`, once its (user) payload is within `bounds`; else `BadPayload`."""
    if isinstance(payload, dict | list):
        try:
            bounds.check(payload, "payload")
        except ClientError as exc:
            raise BadPayload(inbound, exc) from exc
    return inbound


def decode_envelope(data: str | bytes, vsn: Vsn) -> Inbound:
    """Topic, event and refs of a frame, to answer it without using its payload.

    For an oversized message: a binary push is read from its header only, a
    text frame is decoded whole (it is at most the WebSocket frame limit).
    """
    if isinstance(data, bytes) and vsn is Vsn.V2 and len(data) >= 7 and data[0] == PUSH_KIND:
        offset = 7
        fields: list[str] = []
        for size in data[1:5]:
            fields.append(data[offset : offset + size].decode(errors="replace"))
            offset += size
        join_ref, ref, topic, _event = fields
        return Inbound(join_ref or None, ref or None, topic, "broadcast", None)
    inbound = decode(data, vsn)
    return Inbound(inbound.join_ref, inbound.ref, inbound.topic, inbound.event, None)


def _decode_push(data: bytes) -> Inbound:
    if len(data) < 7 or data[0] != PUSH_KIND:
        raise BadFrame("the only binary frame a client may send is a kind-3 broadcast push")
    sizes = data[1:6]
    encoding = data[6]
    offset = 7
    fields: list[str] = []
    try:
        for size in sizes:
            if offset + size > len(data):
                raise BadFrame("binary frame shorter than its header says")
            fields.append(data[offset : offset + size].decode())
            offset += size
    except UnicodeDecodeError as exc:
        raise BadFrame("binary frame header is not UTF-8") from exc
    join_ref, ref, topic, event, _metadata = fields
    raw = data[offset:]
    user_payload: Any = None
    if encoding == JSON_ENCODING:
        try:
            user_payload = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadFrame(f"broadcast payload is not valid JSON: {exc}") from exc
    elif encoding != RAW_ENCODING:
        raise BadFrame(f"unknown payload encoding {encoding}")
    inbound = Inbound(
        join_ref or None,
        ref or None,
        topic,
        "broadcast",
        {"type": "broadcast", "event": event, "payload": user_payload},
        raw=raw,
        raw_encoding=encoding,
    )
    return _bounded(inbound, user_payload)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def envelope(
    vsn: Vsn, join_ref: str | None, ref: str | None, topic: str, event: str
) -> tuple[str, str]:
    """The text before and after a payload's JSON in one message."""
    if vsn is Vsn.V2:
        head = f"[{_json(join_ref)},{_json(ref)},{_json(topic)},{_json(event)},"
        return head, "]"
    head = f'{{"topic":{_json(topic)},"event":{_json(event)},"payload":'
    return head, f',"ref":{_json(ref)}}}'


def message(
    vsn: Vsn, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any
) -> Frame:
    """One complete text message."""
    head, tail = envelope(vsn, join_ref, ref, topic, event)
    return (head, _json(payload), tail)


def reply(
    vsn: Vsn,
    join_ref: str | None,
    ref: str | None,
    topic: str,
    status: str,
    response: dict[str, Any],
) -> Frame:
    return message(vsn, join_ref, ref, topic, "phx_reply", {"status": status, "response": response})


def user_broadcast(
    topic: str, event: str, meta: dict[str, Any] | None, payload: bytes, encoding: int
) -> Frame | None:
    """A kind-4 binary broadcast, or None when a header field is too long for it."""
    topic_b, event_b = topic.encode(), event.encode()
    meta_b = orjson.dumps(meta) if meta else b""
    if max(len(topic_b), len(event_b), len(meta_b)) > MAX_HEADER_FIELD:
        return None
    header = bytes((BROADCAST_KIND, len(topic_b), len(event_b), len(meta_b), encoding))
    data = header + topic_b + event_b + meta_b + payload
    return (BINARY, data.decode("latin-1"))


def is_binary(text: str) -> bool:
    return text.startswith(BINARY)


def binary_bytes(text: str) -> bytes:
    """The bytes of a joined binary frame (see `user_broadcast`)."""
    return text[1:].encode("latin-1")
