"""The HTTP server: uvicorn, configured once, with a shutdown that tells every client to reconnect.

Forwarded headers are believed only from `TRUSTED_PROXIES`: uvicorn on its
own trusts `X-Forwarded-For` from 127.0.0.1 (or `FORWARDED_ALLOW_IPS`),
which would let any local client pick its address, and so its per-address
connection budget.

uvicorn on SIGTERM stops accepting, closes WebSockets with a bare 1012 and
then waits, without limit unless told otherwise, for every response to end:
an SSE stream never does, so a deploy hung. `BridgeServer` first asks every
client endpoint to send its reconnect notice and end (`Bridge.shutdown`),
waits up to SHUTDOWN_TIMEOUT for that, and gives uvicorn only what is left
of that time before it cancels whoever remains. The bridge's own stop
(source, pool, embedded Postgres) runs after, from the lifespan.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import uvicorn

from realtime_bridge.bridge import Bridge
from realtime_bridge.protocols.sansio import BridgeWebSocketProtocol
from realtime_bridge.settings import Settings

logger = logging.getLogger(__name__)

# uvicorn's own shutdown needs a moment even when every client has gone.
MIN_GRACE = 0.5


def ws_max_size(settings: Settings) -> int:
    """The largest WebSocket frame uvicorn reads at all."""
    return max(settings.max_message_bytes * 2, settings.max_frame_bytes * 4, 1024 * 1024)


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """uvicorn's config for `app` under `settings` (`overrides` win, e.g. port=0 in tests)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level.lower(),
        # Above both protocols' limits, so an oversized message is read and refused
        # on its channel; only frames beyond this close the socket (1009).
        # uvicorn's websockets-sansio, leaner per connection (`protocols.sansio`):
        # the implementation whose transport `protocols.wire.Link` writes to directly.
        "ws": BridgeWebSocketProtocol,
        "ws_max_size": ws_max_size(settings),
        # Off unless WS_PERMESSAGE_DEFLATE: then without context takeover (`protocols.sansio`).
        "ws_per_message_deflate": settings.ws_permessage_deflate,
        "proxy_headers": bool(settings.trusted_proxies),
        # A list, never None: None would make uvicorn read FORWARDED_ALLOW_IPS itself.
        "forwarded_allow_ips": list(settings.trusted_proxies),
        "lifespan": "on",
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


class BridgeServer(uvicorn.Server):
    """A uvicorn server whose shutdown drains the bridge's clients in bounded time."""

    def __init__(
        self, config: uvicorn.Config, bridge: Bridge, timeout: float | None = None
    ) -> None:
        super().__init__(config)
        self.bridge = bridge
        self.timeout = timeout if timeout is not None else bridge.settings.shutdown_timeout

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # No new connections while the open ones are being told to leave.
        for server in self.servers:
            server.close()
        drain = self.bridge.shutdown
        drain.request()
        if drain.active:
            logger.info("shutting down: telling %d client connection(s) to reconnect", drain.active)
        if not await drain.drained(self.timeout):
            logger.warning(
                "%d client connection(s) still open after SHUTDOWN_TIMEOUT=%g s; cutting them",
                drain.active,
                self.timeout,
            )
        left = self.timeout - (loop.time() - started)
        # uvicorn's field is typed int but used as a float timeout.
        self.config.timeout_graceful_shutdown = max(left, MIN_GRACE)  # type: ignore[assignment]
        await super().shutdown(sockets)
