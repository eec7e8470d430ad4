"""The Starlette application: routes, JSON errors and the bridge's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from realtime_bridge.bridge import Bridge
from realtime_bridge.plugins import PluginRegistry
from realtime_bridge.protocols import phoenix, phoenix_rest, prices, rest, sse, websocket
from realtime_bridge.protocols.common import error_response, install_handshake_log_filter
from realtime_bridge.protocols.session import TransportScope
from realtime_bridge.settings import Settings

#: The WebSocket endpoints, routed by `TransportScope` ahead of Starlette's router.
SOCKETS = {
    "/ws/db_subscriptions": websocket.db_subscriptions,
    # The Supabase Realtime protocol (supabase-js, the Python `realtime` client).
    "/realtime/v1/websocket": phoenix.socket,
    "/socket/websocket": phoenix.socket,
}


def create_app(
    settings: Settings | None = None, registry: PluginRegistry | None = None
) -> Starlette:
    """Build the app; the bridge (plugins, database, source) starts with its lifespan."""
    settings = settings or Settings()
    bridge = Bridge(settings, registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await bridge.start()
        try:
            yield
        finally:
            await bridge.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    routes = [
        Route("/", rest.index),  # the web inspector for browsers, the JSON index otherwise
        Route("/api", rest.index),
        Mount(
            "/inspector",
            StaticFiles(directory=Path(__file__).parent / "static" / "inspector", check_dir=False),
        ),
        Route("/health", rest.health),
        Route("/metrics", rest.metrics),
        Route("/api/stats", rest.stats),
        Route("/api/broadcast", rest.broadcast, methods=["POST"]),
        Route("/api/testing/simulate-signal", rest.simulate_signal, methods=["POST"]),
        Route("/api/channels/{channel}/events", rest.channel_events),
        Route("/api/channels/{channel}/snapshot", rest.channel_snapshot),
        Route("/api/prices", prices.post_prices, methods=["POST"]),
        Route("/api/prices", prices.get_prices, methods=["GET"]),
        Route("/sse/price-updates", prices.sse_prices),  # before /sse/{channel}
        Route("/sse/{channel}", sse.sse_stream),
        *(WebSocketRoute(path, endpoint) for path, endpoint in SOCKETS.items()),
        Route("/realtime/v1/api/broadcast", phoenix_rest.broadcast_batch, methods=["POST"]),
        Route(
            "/realtime/v1/api/broadcast/{topic}/events/{event}",
            phoenix_rest.broadcast_one,
            methods=["POST"],
        ),
        Route(
            "/api/broadcast/{topic}/events/{event}", phoenix_rest.broadcast_one, methods=["POST"]
        ),
    ]
    middleware = [
        # First: it must see uvicorn's own `receive`, and it serves SOCKETS itself
        # (see TransportScope).
        Middleware(TransportScope, endpoints=SOCKETS),
        Middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "apikey",
                "Last-Event-ID",
                "x-client-info",
            ],
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={HTTPException: http_error},
    )
    app.state.bridge = bridge
    install_handshake_log_filter()
    return app
