"""realtime-bridge-client: subscribe to a realtime-bridge from Python.

    from realtime_bridge_client import connect

    async with connect("http://127.0.0.1:8000", api_key=SERVICE_KEY) as client:
        async with client.subscribe("trade-updates", filters={"status": ["open"]}) as trades:
            async for event in trades:
                print(event.seq, event.operation, event.data)

It needs only websockets, httpx, pydantic and orjson: not the server. What
the client guarantees (reconnect, resume, back-pressure, tokens, resync,
snapshots) and its error tree are described in `realtime_bridge_client._client`.
The public API is exactly what `__all__` lists.
"""

from realtime_bridge_client._client import (
    Client,
    ClientClosed,
    ConnectionState,
    DecodeError,
    Event,
    InvalidFilter,
    Refused,
    ResyncRequired,
    Snapshot,
    Subscription,
    TokenExpired,
    Unauthorized,
    UnknownChannel,
    UnknownTable,
    connect,
)
from realtime_bridge_client.protocol import ClientError, RealtimeBridgeError

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionState",
    "DecodeError",
    "Event",
    "InvalidFilter",
    "RealtimeBridgeError",
    "Refused",
    "ResyncRequired",
    "Snapshot",
    "Subscription",
    "TokenExpired",
    "Unauthorized",
    "UnknownChannel",
    "UnknownTable",
    "connect",
]
