"""Supabase Realtime's broadcast REST API.

* ``POST /realtime/v1/api/broadcast`` ``{"messages": [{topic, event, payload, private?, id?}]}``
* ``POST /realtime/v1/api/broadcast/{topic}/events/{event}[?private=true]``, body = the
  payload (JSON, or bytes with ``Content-Type: application/octet-stream``)

Both answer 202 with an empty body once the messages are accepted. A topic
named after a plugin channel is published through the outbox (validated by
the channel's model, numbered, replayable, seen by every instance); any
other topic is an ephemeral broadcast to the sockets joined on it (on every
instance through the backplane when REDIS_URL is set), with ``meta: {"id":
...}`` as Supabase adds. A batch is checked whole before anything is
delivered.

Who may send, as on Supabase (supabase-js falls back to this API for
``send()`` before the channel is joined, and ``httpSend()`` /
``http_send`` always use it): any valid key or user token (the
``Authorization`` bearer first, then ``apikey``) on a public topic; on a
private topic (``private: true``) the service key, or a token that the
``realtime.messages`` INSERT policy lets write there: messages it may not
send are skipped without an error, as Supabase skips them. A plugin
channel, backed by the database, takes the service key only (403).
A payload over MAX_MESSAGE_BYTES is refused (422), as Supabase refuses one
over its tenant limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from realtime_bridge.auth import Forbidden, Principal
from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import BadMessage, ClientError, PayloadInvalid, PublishError
from realtime_bridge.protocols import bounds
from realtime_bridge.protocols.common import (
    client_error_response,
    error_response,
    request_token,
    validation_message,
)
from realtime_bridge.protocols.phoenix import phoenix_state
from realtime_bridge.protocols.phoenix_wire import JSON_ENCODING, RAW_ENCODING
from realtime_bridge.topic_policies import Extension, PoliciesUnavailable

MAX_BODY = 1024 * 1024
MAX_BATCH = 100


class RestMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    topic: Annotated[str, Field(min_length=1, max_length=200)]
    event: Annotated[str, Field(min_length=1, max_length=255)]
    payload: dict[str, Any]
    private: bool = False
    id: Annotated[str, Field(max_length=200)] | None = None


class RestBatch(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    messages: Annotated[list[RestMessage], Field(min_length=1, max_length=MAX_BATCH)]


class _TooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise _TooLarge
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise _TooLarge
    return raw


def _json(raw: bytes) -> Any:
    return bounds.loads(raw, "body")


def _check(
    bridge: Bridge,
    principal: Principal,
    topic: str,
    event: str,
    payload: Any,
    encoding: int,
    size: int,
) -> None:
    """Refuse, before delivering anything, what is too large or a plugin channel refuses."""
    limit = bridge.settings.max_message_bytes
    if size > limit:
        raise PayloadInvalid(f"Payload size exceeds the limit: {size} bytes > {limit}")
    if topic not in bridge.registry.by_channel:
        return
    if not principal.is_service:
        raise Forbidden(
            f"only the service key may publish on {topic!r}, a channel backed by the database"
        )
    if encoding == RAW_ENCODING:
        raise PayloadInvalid(f"{topic!r} is backed by the database: send a JSON object")
    bridge.registry.validate_broadcast(topic, event, payload)


class Writers:
    """Which private topics this request's token may write to (one policy check per topic)."""

    def __init__(self, request: Request, principal: Principal) -> None:
        self.request = request
        self.principal = principal
        self._known: dict[str, bool] = {}

    async def allowed(self, topic: str) -> bool:
        known = self._known.get(topic)
        if known is None:
            bridge: Bridge = self.request.app.state.bridge
            known = self._known[topic] = await bridge.topic_policies.can_write(
                self.principal, topic, Extension.BROADCAST, dict(self.request.headers.items())
            )
        return known


async def _deliver(
    request: Request,
    writers: Writers,
    topic: str,
    event: str,
    raw: bytes,
    encoding: int,
    *,
    private: bool,
    message_id: str | None,
) -> None:
    bridge: Bridge = request.app.state.bridge
    if topic in bridge.registry.by_channel:
        await bridge.publish(topic, event, orjson.loads(raw), wait=0)
        return
    if private and not await writers.allowed(topic):
        # Supabase skips a private message its sender may not write, and still says 202.
        bridge.counters.error("forbidden")
        return
    phoenix_state(request.app).rooms.broadcast(
        private, topic, event, raw, encoding, meta={"id": message_id or str(uuid.uuid4())}
    )


async def _answer(request: Request, work: Callable[[Writers], Awaitable[None]]) -> Response:
    bridge: Bridge = request.app.state.bridge
    try:
        principal = await bridge.auth.verify(request_token(request))
        await work(Writers(request, principal))
    except _TooLarge:
        return error_response(413, "too_large", f"body exceeds {MAX_BODY} bytes")
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    except (PublishError, PoliciesUnavailable) as exc:
        return error_response(503, "unavailable", str(exc))
    return Response(status_code=202)


async def broadcast_batch(request: Request) -> Response:
    """`POST /realtime/v1/api/broadcast`: a batch of messages."""
    bridge: Bridge = request.app.state.bridge

    async def work(writers: Writers) -> None:
        try:
            batch = RestBatch.model_validate(_json(await _body(request)))
        except ValidationError as exc:
            raise BadMessage(validation_message(exc)) from exc
        encoded = [orjson.dumps(m.payload) for m in batch.messages]
        for m, raw in zip(batch.messages, encoded, strict=True):
            _check(bridge, writers.principal, m.topic, m.event, m.payload, JSON_ENCODING, len(raw))
        for m, raw in zip(batch.messages, encoded, strict=True):
            await _deliver(
                request,
                writers,
                m.topic,
                m.event,
                raw,
                JSON_ENCODING,
                private=m.private,
                message_id=m.id,
            )

    return await _answer(request, work)


async def broadcast_one(request: Request) -> Response:
    """`POST /realtime/v1/api/broadcast/{topic}/events/{event}`: one message."""
    bridge: Bridge = request.app.state.bridge
    topic: str = request.path_params["topic"]
    event: str = request.path_params["event"]
    private = request.query_params.get("private", "").lower() == "true"

    async def work(writers: Writers) -> None:
        raw = await _body(request)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/octet-stream"):
            encoding, payload = RAW_ENCODING, None
        else:
            encoding, payload = JSON_ENCODING, _json(raw)
            raw = orjson.dumps(payload)
        _check(bridge, writers.principal, topic, event, payload, encoding, len(raw))
        await _deliver(
            request, writers, topic, event, raw, encoding, private=private, message_id=None
        )

    return await _answer(request, work)
