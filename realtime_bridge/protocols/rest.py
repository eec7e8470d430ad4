"""HTTP endpoints: long-poll, broadcast, the testing API, health, stats, metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import BadMessage, ClientError, PostgrestError, PublishError
from realtime_bridge.events import Event, Frame
from realtime_bridge.hub import AHEAD_GRACE
from realtime_bridge.metrics import CONTENT_TYPE, render_metrics
from realtime_bridge.pgsnapshot import PgSnapshot
from realtime_bridge.protocols import bounds
from realtime_bridge.protocols.common import (
    JSONResponse,
    Target,
    client_error_response,
    client_ip,
    error_response,
    refuse_http,
    request_target,
    require_service,
    validation_message,
)
from realtime_bridge.protocols.messages import BroadcastRequest, SimulateSignal
from realtime_bridge.protocols.outlet import CollectOutlet
from realtime_bridge.protocols.sse import parse_since, parse_snapshot_token
from realtime_bridge.protocols.wire import ENCODER
from realtime_bridge.snapshot import DEFAULT_LIMIT, MAX_LIMIT, SnapshotUnavailable, take_snapshot

MAX_BODY = 1024 * 1024
MAX_POLL_LIMIT = 1000
MAX_POLL_WAIT = 60.0


def _bridge(request: Request) -> Bridge:
    bridge: Bridge = request.app.state.bridge
    return bridge


def _number(value: str | None, name: str, default: float, low: float, high: float) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise BadMessage(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise BadMessage(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _render_plain(event: Event, _prefix: str) -> Frame:
    return ('{"type":"db_change",', event.body)


async def channel_events(request: Request) -> Response:
    """Long-poll: events after `since`, waiting up to `wait` seconds for the first."""
    bridge = _bridge(request)
    params = request.query_params
    try:
        principal, target = await request_target(bridge, request)
        since = parse_since(params.get("since"), "since")
        seen = parse_snapshot_token(params.get("snapshot_token"), since)
        limit = int(_number(params.get("limit"), "limit", 100, 1, MAX_POLL_LIMIT))
        wait = _number(params.get("wait"), "wait", 25, 0, MAX_POLL_WAIT)
        await bridge.hub.check_since(since, min(wait, AHEAD_GRACE))
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    refused = refuse_http(bridge, request, principal)
    if refused is not None:
        return refused
    with bridge.limits.held(client_ip(request), principal.user_id), bridge.shutdown.hold():
        return await _long_poll(request, bridge, target, since, limit, wait, seen)


async def _long_poll(
    request: Request,
    bridge: Bridge,
    target: Target,
    since: int | None,
    limit: int,
    wait: float,
    seen: PgSnapshot | None = None,
) -> Response:
    hub = bridge.hub
    start = hub.head if since is None else since
    outlet = CollectOutlet(limit)
    resync: dict[str, int] = {}
    sub = target.subscribe(hub, outlet, since=start, render=_render_plain, seen=seen)
    try:
        await hub.catch_up(
            sub,
            on_resync=lambda earliest: resync.setdefault("earliest_seq", earliest),
            stop=lambda: outlet.full,
        )
        if resync:
            return error_response(
                409,
                "resync_required",
                f"seq {start} is older than the retained log; "
                "reload a snapshot and poll from next_seq",
                earliest_seq=resync["earliest_seq"],
                next_seq=hub.head,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        # On shutdown the poll is answered at once: the client polls again from
        # next_seq, on whichever instance answers then.
        stopping = asyncio.ensure_future(bridge.shutdown.wait())
        try:
            # Wait in short slices so a client that gave up frees its subscription.
            while not outlet.items and not stopping.done() and loop.time() < deadline:
                arrived = asyncio.ensure_future(outlet.wait(min(1.0, deadline - loop.time())))
                try:
                    await asyncio.wait({arrived, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    arrived.cancel()
                if not outlet.items and not stopping.done() and await request.is_disconnected():
                    break
        finally:
            stopping.cancel()
        # No await from here on: every event up to hub.head has been offered.
        next_seq = sub.last_seq if outlet.full else max(hub.head, sub.last_seq, start)
        body = '{"events":[' + ",".join(outlet.items) + '],"next_seq":' + str(next_seq) + "}"
    finally:
        hub.unsubscribe(sub)
    return Response(body, media_type="application/json")


async def channel_snapshot(request: Request) -> Response:
    """A channel's current rows (scope and filter applied) and the seq to subscribe from."""
    bridge = _bridge(request)
    params = request.query_params
    try:
        principal, target = await request_target(bridge, request)
        limit = int(_number(params.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT))
        refused = refuse_http(bridge, request, principal)
        if refused is not None:
            return refused
        try:
            with bridge.limits.held(client_ip(request), principal.user_id):
                snapshot = await take_snapshot(
                    bridge, target, limit=limit, cursor=params.get("cursor")
                )
        except asyncpg.DataError:
            raise BadMessage("cursor is not one this bridge gave out") from None
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    except SnapshotUnavailable as exc:
        return error_response(503, "unavailable", str(exc))
    except (
        OSError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        httpx.HTTPError,
        PostgrestError,
    ) as exc:
        return error_response(503, "unavailable", f"could not read the snapshot: {exc}")
    return JSONResponse(snapshot.to_json())


async def _json_body(request: Request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise _TooLarge()
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise _TooLarge()
    return bounds.loads(raw, "body")


class _TooLarge(Exception):
    pass


async def broadcast(request: Request) -> Response:
    """Publish an event on a plugin channel; 202 with its seq."""
    bridge = _bridge(request)
    try:
        await require_service(bridge, request)
        data = await _json_body(request)
        try:
            message = BroadcastRequest.model_validate(data)
        except ValidationError as exc:
            raise BadMessage(validation_message(exc)) from exc
        seq = await bridge.publish(message.channel, message.event, message.payload)
    except _TooLarge:
        return error_response(413, "too_large", f"body exceeds {MAX_BODY} bytes")
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    except PublishError as exc:
        return error_response(503, "unavailable", str(exc))
    return JSONResponse(
        {"seq": seq, "status": "published" if seq is not None else "queued"}, status_code=202
    )


async def simulate_signal(request: Request) -> Response:
    """Write a trade and its position, so their events flow like any change."""
    bridge = _bridge(request)
    if not bridge.settings.enable_testing_api:
        return error_response(
            404, "not_found", "the testing API is off; set ENABLE_TESTING_API=true"
        )
    try:
        await require_service(bridge, request)
        data = await _json_body(request)
        try:
            signal = SimulateSignal.model_validate(data)
        except ValidationError as exc:
            raise BadMessage(validation_message(exc)) from exc
    except _TooLarge:
        return error_response(413, "too_large", f"body exceeds {MAX_BODY} bytes")
    except ClientError as exc:
        return client_error_response(exc)
    assert bridge.pool is not None
    try:
        async with bridge.pool.acquire() as conn, conn.transaction():
            trade = await conn.fetchrow(
                """
                INSERT INTO public.trades (user_id, symbol, signal_type, quantity, entry_price,
                                           stop_loss, take_profit, status, executed_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', now())
                RETURNING to_jsonb(trades.*) AS row
                """,
                signal.user_id,
                signal.symbol,
                signal.signal_type,
                signal.quantity,
                signal.entry_price,
                signal.stop_loss,
                signal.take_profit,
            )
            direction = 1 if signal.signal_type == "BUY" else -1
            position = await conn.fetchrow(
                """
                INSERT INTO public.positions (user_id, symbol, quantity, entry_price, current_price,
                                              unrealized_pnl, stop_loss, take_profit, status)
                VALUES ($1, $2, $3, $4, $4, 0, $5, $6, 'open')
                RETURNING to_jsonb(positions.*) AS row
                """,
                signal.user_id,
                signal.symbol,
                signal.quantity * direction,
                signal.entry_price,
                signal.stop_loss,
                signal.take_profit,
            )
    except asyncpg.UndefinedTableError:
        return error_response(
            409,
            "missing_tables",
            "the demo trading tables are not in this database; apply the migrations",
        )
    return JSONResponse(
        {
            "trade": _typed(bridge, "trade-updates", trade["row"]),
            "position": _typed(bridge, "position-updates", position["row"]),
        },
        status_code=201,
    )


def _typed(bridge: Bridge, channel: str, row: dict[str, Any]) -> dict[str, Any]:
    plugin = bridge.registry.by_channel.get(channel)
    return plugin.payload(row) if plugin is not None else row


async def health(request: Request) -> Response:
    """Open to everyone; error details only for the service key."""
    bridge = _bridge(request)
    await bridge.log_head()
    healthy, body = bridge.health()
    try:
        await require_service(bridge, request)
    except ClientError:
        if body.get("source_status"):
            body["source_status"].pop("last_error", None)
        body.pop("mode_detail", None)
        body["backplane"].pop("last_error", None)
        body["failed_tasks"] = sorted(body["failed_tasks"])
    body["time"] = datetime.now(UTC).isoformat()
    return JSONResponse(body, status_code=200 if healthy else 503)


async def stats(request: Request) -> Response:
    bridge = _bridge(request)
    try:
        await require_service(bridge, request)
    except ClientError as exc:
        return client_error_response(exc)
    await bridge.log_head()
    # Counted once per compression, not per receiver (`wire.Encoder`).
    deflate = ENCODER.deflate_stats() if bridge.settings.ws_permessage_deflate else None
    return JSONResponse({**bridge.stats(), "permessage_deflate": deflate})


async def metrics(request: Request) -> Response:
    bridge = _bridge(request)
    try:
        await require_service(bridge, request)
    except ClientError as exc:
        return client_error_response(exc)
    return Response(render_metrics(bridge), media_type=CONTENT_TYPE)


async def index(request: Request) -> Response:
    """`/`: the web inspector for browsers, this JSON index otherwise (always at `/api`)."""
    # Imported here to keep the inspector's whole footprint in this one function.
    from pathlib import Path

    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse

    at_root = request.url.path == "/"
    # The same URL answers two media types, so caches must key on Accept.
    vary = {"Vary": "Accept"} if at_root else {}
    page = Path(__file__).parent.parent / "static" / "inspector" / "index.html"
    wants_html = at_root and "text/html" in request.headers.get("accept", "")
    if wants_html and await run_in_threadpool(page.is_file):
        # no-cache: a new build's index.html (naming new hashed assets) shows at once.
        return FileResponse(page, headers={**vary, "Cache-Control": "no-cache"})
    bridge = _bridge(request)
    return JSONResponse(
        {
            "name": "realtime-bridge",
            "channels": sorted(bridge.hub.channels),
            "endpoints": {
                "inspector": "/",
                "index": "/api",
                "websocket": "/ws/db_subscriptions",
                "sse": "/sse/{channel}",
                "poll": "/api/channels/{channel}/events",
                "snapshot": "/api/channels/{channel}/snapshot",
                "broadcast": "/api/broadcast",
                "health": "/health",
                "stats": "/api/stats",
                "metrics": "/metrics",
            },
        },
        headers=vary,
    )
