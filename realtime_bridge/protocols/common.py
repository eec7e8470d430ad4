"""Helpers shared by the endpoints: JSON responses and resolving a subscription target."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket

from realtime_bridge.auth import Access, Forbidden, Principal, Unauthorized, authorize, denial
from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ClientError, UnknownChannel
from realtime_bridge.filters import Filter, parse_filter
from realtime_bridge.hub import Hub, Outlet, Renderer, Subscription, render_db_change
from realtime_bridge.pgsnapshot import PgSnapshot
from realtime_bridge.rooms import Room
from realtime_bridge.row_security import Viewer
from realtime_bridge.topic_policies import PoliciesUnavailable


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


logger = logging.getLogger(__name__)

# Set in the task of a handshake the bridge refused on purpose (see `HandshakeLogFilter`).
_refused: contextvars.ContextVar[bool] = contextvars.ContextVar("refused", default=False)

INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."


class HandshakeLogFilter(logging.Filter):
    """Drops uvicorn's ERROR for a handshake the bridge refused with a denial response.

    uvicorn's websockets-sansio protocol (some versions; Kludex/uvicorn#3138)
    does not mark the handshake complete after a `websocket.http.response`,
    and then reports the deliberate 401/403/429 as an application error. The
    refusal is already logged by `refuse_socket`; any other incomplete
    handshake still reaches the log. uvicorn runs the application in the
    task that logs this, so the context variable set there is visible here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.getMessage() == INCOMPLETE_HANDSHAKE and _refused.get())


def install_handshake_log_filter() -> None:
    """Add `HandshakeLogFilter` to uvicorn's error logger (once)."""
    target = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, HandshakeLogFilter) for f in target.filters):
        target.addFilter(HandshakeLogFilter())


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **details}, status_code=status)


CLIENT_ERROR_STATUS = {
    "bad_message": 400,
    "too_deep": 422,
    "too_long": 422,
    "invalid_filter": 400,
    "unknown_channel": 404,
    "unknown_table": 404,
    "invalid_payload": 422,
    "unauthorized": 401,
    "token_expired": 401,
    "forbidden": 403,
    "too_many_connections": 429,
    "unavailable": 503,
}


def client_error_response(exc: ClientError) -> JSONResponse:
    return error_response(
        CLIENT_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message, **exc.details
    )


def validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


@dataclass(frozen=True)
class Target:
    """What a subscribe request resolved to: channel, filter and row scope."""

    channel: str
    filter: Filter
    owner: str | None
    owner_column: str | None
    # Row security: the role and claims the table's RLS policies are asked with.
    viewer: Viewer | None = None

    def subscribe(
        self,
        hub: Hub,
        outlet: Outlet,
        *,
        since: int | None = None,
        render: Renderer = render_db_change,
        prefix_for: Callable[[str], str] | None = None,
        client_id: str | None = None,
        on_lag: Callable[[Subscription], None] | None = None,
        seen: PgSnapshot | None = None,
    ) -> Subscription:
        """Register on `hub` with this target's channel, filter and row scope (never without)."""
        return hub.subscribe(
            self.channel,
            self.filter,
            outlet,
            since=since,
            render=render,
            prefix_for=prefix_for,
            client_id=client_id,
            on_lag=on_lag,
            owner=self.owner,
            owner_column=self.owner_column,
            viewer=self.viewer,
            seen=seen,
        )


async def resolve_target(
    bridge: Bridge,
    principal: Principal,
    *,
    channel: str | None,
    table: str | None,
    filter_spec: Any,
) -> Target:
    """Resolve, parse and authorize a subscribe request (or raise a ClientError)."""
    room = bridge.registry.room_for(channel or "") if table is None else None
    if room is not None:
        return await _room_target(bridge, principal, channel or "", *room, filter_spec)
    if table is not None:
        name = await bridge.table_channel(table)
    elif channel is not None and "." in channel and channel not in bridge.hub.channels:
        name = await bridge.table_channel(channel)
    else:
        name = bridge.resolve_channel(channel or "")
    hub_channel = bridge.hub.channel(name)
    flt = parse_filter(filter_spec, hub_channel.types if hub_channel.columns is not None else None)
    policy = bridge.policy(name)
    access = authorize(principal, policy)
    if access is Access.NONE:
        raise denial(principal, policy)
    if access is Access.OWN_ROWS:
        return Target(name, flt, principal.user_id, policy.owner_column)
    if access is Access.ROW_SECURITY:
        return Target(name, flt, None, None, Viewer.of(principal))
    return Target(name, flt, None, None)


class RoomCheckUnavailable(ClientError, PoliciesUnavailable):
    """The database could not be asked whether a caller may join a room (retry later)."""

    code = "unavailable"


async def _room_target(
    bridge: Bridge,
    principal: Principal,
    name: str,
    room: Room,
    room_id: str | None,
    filter_spec: Any,
) -> Target:
    """A room's channel, once its ownership check admits `principal` (`rooms`)."""
    if room_id is None:
        raise UnknownChannel(
            f"no channel named {name!r}: {room.name} ids must match {room.id_pattern}",
            channel=name,
        )
    flt = parse_filter(filter_spec, None)
    try:
        admitted = await bridge.topic_policies.admits(principal, room.sql, [room_id], topic=name)
    except PoliciesUnavailable as exc:
        raise RoomCheckUnavailable(
            f"could not check who may read {name!r}: {exc}", channel=name
        ) from exc
    if not admitted:
        raise Unauthorized(
            f"not allowed to read {name!r}: the ownership check of {room.name} did not admit "
            "this token",
            channel=name,
        )
    bridge.hub.add_channel(name)
    return Target(name, flt, None, None)


async def request_target(bridge: Bridge, request: HTTPConnection) -> tuple[Principal, Target]:
    """Who reads, and what, for an HTTP read of `/…/{channel}…?filter=…`."""
    principal = await bridge.auth.verify(request_token(request))
    return principal, await resolve_target(
        bridge,
        principal,
        channel=request.path_params["channel"],
        table=None,
        filter_spec=request.query_params.get("filter"),
    )


def client_ip(connection: HTTPConnection) -> str:
    return connection.client.host if connection.client is not None else "unknown"


def refuse_http(bridge: Bridge, request: HTTPConnection, principal: Principal) -> Response | None:
    """429 when this address or user already holds its share of connections, else None.

    SSE streams, long-polls and snapshots in flight count like WebSockets, so
    the per-address and per-user limits hold whatever the transport.
    """
    reason = bridge.limits.admit(client_ip(request), principal.user_id)
    if reason is None:
        return None
    bridge.counters.error("too_many_connections")
    return error_response(429, "too_many_connections", reason)


def request_token(request: HTTPConnection) -> str | None:
    """The key or token of an HTTP or WebSocket request: Bearer header, then apikey."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.headers.get("apikey") or request.query_params.get("apikey") or None


async def require_service(bridge: Bridge, request: HTTPConnection) -> Principal:
    """The principal of a request that must carry the service key."""
    principal = await bridge.auth.verify(request_token(request))
    if not principal.is_service:
        raise Forbidden("this endpoint needs the service key")
    return principal


@dataclass(frozen=True)
class Refusal:
    """Why a WebSocket handshake is refused: HTTP status, code, sentence."""

    status: int
    code: str
    message: str


async def admit_socket(
    bridge: Bridge, websocket: WebSocket, token: str | None
) -> Principal | Refusal:
    """Check origin and key before a socket is accepted (its `Seat` checks the limits)."""
    origin = websocket.headers.get("origin")
    allowed = bridge.settings.allowed_origins
    if origin and "*" not in allowed and origin not in allowed:
        return Refusal(403, "origin_not_allowed", f"origin {origin!r} is not allowed")
    try:
        principal = await bridge.auth.verify(token)
    except ClientError as exc:
        return Refusal(401, exc.code, exc.message)
    return principal


async def refuse_socket(
    bridge: Bridge, websocket: WebSocket, refusal: Refusal, client_ip: str
) -> None:
    """Answer the handshake with an HTTP error and a JSON body (Supabase's `error` too).

    A refusal is the bridge working, not failing: logged once, at INFO, with
    its reason (and uvicorn's "returned without completing handshake" error,
    which some of its versions log after a denial response, is filtered out:
    see `HandshakeLogFilter`).
    """
    bridge.counters.error(refusal.code)
    logger.info(
        "refused a WebSocket on %s from %s: %d %s (%s)",
        websocket.url.path,
        client_ip,
        refusal.status,
        refusal.code,
        refusal.message,
    )
    _refused.set(True)
    body = {"code": refusal.code, "message": refusal.message, "error": refusal.message}
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(body, status_code=refusal.status))
    else:  # pragma: no cover - servers without the denial-response extension
        await websocket.close(code=1008, reason=refusal.code)
