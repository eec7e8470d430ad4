"""uvicorn's websockets-sansio protocol, holding less per connection.

The handshake, pings, the close handshake and the frame parser stay
uvicorn's and websockets'; this subclass only changes what an open, idle
connection keeps (measured with `python -m bench.connmem`):

* the receive queue is an `Inbox` and the writable flag a `Flag`
  (`lean`): no deque is allocated until a message is queued or someone
  waits, where `asyncio.Queue` + `asyncio.Event` allocated four up front;
* the parsed handshake request and the response built for it (their
  header objects) are dropped, and the request's headers emptied, once
  the response is sent: nothing reads them after, the ASGI scope keeps
  its own copy of the headers.

With `ws_per_message_deflate` (WS_PERMESSAGE_DEFLATE) it offers
permessage-deflate with `server_no_context_takeover` and
`client_no_context_takeover` instead of uvicorn's context-keeping
parameters: no compressor or decompressor lives between messages (no
per-connection zlib state, 100+ KiB each with context takeover), and
`wire.Encoder` can compress a broadcast once for every receiver.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.server import ServerProtocol

from realtime_bridge.protocols.lean import Flag, Inbox
from realtime_bridge.protocols.wire import DEFLATE_SETTINGS


class BridgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """The protocol `server_config` serves WebSockets with (`ws=`)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if config.ws_per_message_deflate:
            self.conn = ServerProtocol(
                extensions=[
                    ServerPerMessageDeflateFactory(
                        server_no_context_takeover=True,
                        client_no_context_takeover=True,
                        compress_settings=DEFLATE_SETTINGS,
                    )
                ],
                max_size=config.ws_max_size,
                logger=logging.getLogger("uvicorn.error"),
            )
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag(True)  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete:
            # Set in handle_connect and read only while accepting.
            request = self.__dict__.pop("request", None)
            self.__dict__.pop("response", None)
            if request is not None:
                # websockets' handshake parser keeps the request in a local of its
                # generator for the connection's life: empty its headers at least.
                request.headers.clear()
