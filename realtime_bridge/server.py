"""The HTTP server: uvicorn, with a shutdown that tells every client to reconnect.

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

import uvicorn

from realtime_bridge.bridge import Bridge

logger = logging.getLogger(__name__)

# uvicorn's own shutdown needs a moment even when every client has gone.
MIN_GRACE = 0.5


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
