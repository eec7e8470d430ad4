"""`price-updates` on the wire: POST /api/prices, GET /api/prices, SSE, and the symbol filter.

The JSON WebSocket protocol subscribes through `websocket.py` (which asks
`symbols_of` and `Market.watch`); the frames are `db_change` frames like
any other, with `seq` counting this subscription's deliveries.
"""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import BadMessage, ClientError, InvalidFilter, PayloadInvalid
from realtime_bridge.events import subscription_prefix
from realtime_bridge.market import PRICE_EVENT, SYMBOL_PATTERN, Tick, parse_ticks
from realtime_bridge.protocols.common import (
    JSONResponse,
    client_error_response,
    client_ip,
    error_response,
    refuse_http,
    request_token,
    require_service,
)
from realtime_bridge.protocols.outlet import QueueOutlet

MAX_PRICE_BODY = 16 * 1024 * 1024
MAX_ERRORS = 20
_SYMBOL = re.compile(SYMBOL_PATTERN)
_FILTER = re.compile(r"symbol=(eq\.(?P<one>[^,()]+)|in\.\((?P<many>[^()]*)\))")


def symbols_of(spec: Any, limit: int) -> frozenset[str]:
    """The symbols of a price-updates filter: {"symbol": [...]}, or symbol=eq.X / in.(X,Y)."""
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            spec = orjson.loads(spec)
        except orjson.JSONDecodeError as exc:
            raise InvalidFilter(f"filter is not valid JSON: {exc}") from exc
    values: Any
    if spec is None:
        raise InvalidFilter(
            'price-updates needs a symbol filter, e.g. {"symbol": ["AAPL", "MSFT"]}'
        )
    if isinstance(spec, Mapping):
        if set(spec) != {"symbol"}:
            extra = sorted(str(key) for key in spec if key != "symbol")
            raise InvalidFilter(
                f"price-updates filters on 'symbol' only (got {', '.join(extra) or 'nothing'})"
            )
        values = spec["symbol"]
        if isinstance(values, str):
            values = [values]
    elif isinstance(spec, str):
        match = _FILTER.fullmatch(spec.strip())
        if match is None:
            raise InvalidFilter(
                f"price-updates filter {spec!r}: use symbol=eq.X or symbol=in.(X,Y)"
            )
        values = [match["one"]] if match["one"] else match["many"].split(",")
    else:
        raise InvalidFilter("filter must be an object or a filter string")
    if not isinstance(values, list) or not values:
        raise InvalidFilter("'symbol' must be a symbol or a non-empty list of symbols")
    symbols = set()
    for value in values:
        if not isinstance(value, str) or not _SYMBOL.match(value):
            raise InvalidFilter(
                f"{value!r} is not a symbol (a string of letters, digits and ._:/=^-, "
                "at most 32 characters)"
            )
        symbols.add(value)
    if len(symbols) > limit:
        raise InvalidFilter(f"at most {limit} symbols per subscription, got {len(symbols)}")
    return frozenset(symbols)


def max_rate_of(value: Any, default: float | None) -> float | None:
    """The per-symbol update cap a client asked for (0: none), else the bridge's default."""
    if value is None or value == "":
        return default
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise BadMessage(f"max_rate must be updates per second, got {value!r}") from None
    if not 0 <= rate <= 1000:
        raise BadMessage(f"max_rate must be between 0 and 1000, got {value!r}")
    return rate or None


def price_subscription_id() -> str:
    return f"sub_price_{secrets.token_hex(6)}"


async def post_prices(request: Request) -> Response:
    """Publish a batch of ticks (service key): {"ticks": [{"symbol", "price", ...}, ...]}."""
    bridge: Bridge = request.app.state.bridge
    limit = bridge.settings.price_max_batch
    try:
        await require_service(bridge, request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_PRICE_BODY:
            return error_response(413, "too_large", f"body exceeds {MAX_PRICE_BODY} bytes")
        raw = await request.body()
        if len(raw) > MAX_PRICE_BODY:
            return error_response(413, "too_large", f"body exceeds {MAX_PRICE_BODY} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadMessage(f"body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict) or not isinstance(body.get("ticks"), list):
            raise BadMessage('body must be {"ticks": [{"symbol": ..., "price": ...}, ...]}')
        ticks = body["ticks"]
        if len(ticks) > limit:
            return error_response(
                413,
                "too_large",
                f"{len(ticks)} ticks in one request; at most {limit} (PRICE_MAX_BATCH)",
                limit=limit,
            )
        accepted = publish_validated(bridge, ticks)
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    return JSONResponse({"accepted": accepted, "received": len(ticks)}, status_code=202)


async def get_prices(request: Request) -> Response:
    """The last tick of some symbols (any valid key): `?symbols=A,B` or `?filter=...`.

    For clients that poll instead of subscribing (a REST fallback): the same
    `data` a subscription receives, for the symbols with a price; the others
    are listed in `missing`.
    """
    bridge: Bridge = request.app.state.bridge
    params = request.query_params
    try:
        await bridge.auth.verify(request_token(request))
        spec: Any = params.get("filter")
        if spec is None and params.get("symbols"):
            spec = {"symbol": [s for s in params["symbols"].split(",") if s]}
        symbols = symbols_of(spec, bridge.settings.price_max_symbols)
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    found, missing = [], []
    for symbol in sorted(symbols):
        tick = bridge.market.cache.get(symbol)
        if tick is None:
            missing.append(symbol)
        else:
            found.append(tick.data())
    return JSONResponse({"prices": found, "missing": missing})


def publish_validated(bridge: Bridge, raw: list[Any]) -> int:
    """Validate every tick (all or nothing) and publish them; returns how many were kept."""
    try:
        ticks = parse_ticks(raw)
    except ValidationError as exc:
        errors = [
            {
                "index": error["loc"][0] if error["loc"] else None,
                "field": ".".join(str(part) for part in error["loc"][1:]) or None,
                "message": error["msg"],
            }
            for error in exc.errors(include_url=False)[:MAX_ERRORS]
        ]
        first = errors[0]
        raise PayloadInvalid(
            f"tick {first['index']}: {first['field'] or 'tick'}: {first['message']} "
            f"({exc.error_count()} error(s); nothing was published)",
            errors=errors,
        ) from exc
    return bridge.market.publish(ticks)


def render_sse(prefix: str, seq: int, tick: Tick) -> str:
    return f'event: {PRICE_EVENT}\ndata: {prefix}"seq":{seq},{tick.body}\n\n'


async def sse_prices(request: Request) -> Response:
    """`GET /sse/price-updates?filter=...` (or `symbols=A,B`), conflated like the WebSocket."""
    bridge: Bridge = request.app.state.bridge
    params = request.query_params
    try:
        principal = await bridge.auth.verify(request_token(request))
        spec: Any = params.get("filter")
        if spec is None and params.get("symbols"):
            spec = {"symbol": [s for s in params["symbols"].split(",") if s]}
        symbols = symbols_of(spec, bridge.settings.price_max_symbols)
        max_rate = max_rate_of(params.get("max_rate"), bridge.settings.price_max_rate)
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    refused = refuse_http(bridge, request, principal)
    if refused is not None:
        return refused
    ip = client_ip(request)
    heartbeat = bridge.settings.sse_heartbeat
    outlet = QueueOutlet(bridge.settings.send_queue_max)
    sub_id = price_subscription_id()

    async def stream() -> AsyncIterator[str]:
        bridge.limits.connected(ip, principal.user_id)
        bridge.counters.connections_open += 1
        bridge.counters.connections_total += 1
        watch = bridge.market.watch(
            symbols,
            prefix=subscription_prefix(sub_id),
            wake=outlet.wake,
            render=render_sse,
            max_rate=max_rate,
        )
        outlet.attach(watch)
        try:
            yield f": subscribed {sub_id} to {len(symbols)} symbol(s)\nretry: 3000\n\n"
            while True:
                try:
                    frames = await asyncio.wait_for(outlet.take(), heartbeat)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                if not frames:
                    return
                yield "".join(frames)
        finally:
            bridge.market.unwatch(watch)
            outlet.close()
            bridge.limits.disconnected(ip, principal.user_id)
            bridge.counters.connections_open -= 1

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
