"""The Python client, kept importable here for code written before it had its own package.

It now ships as `realtime_bridge_client` (``pip install realtime-bridge-client``,
from clients/python), which a backend service can install without the
server; the server package carries it too. Import from there in new code.
"""

from realtime_bridge_client import (
    Client,
    ClientClosed,
    ClientError,
    ConnectionState,
    DecodeError,
    Event,
    InvalidFilter,
    RealtimeBridgeError,
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
from realtime_bridge_client._client import filter_string, http_url, websocket_url

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
    "filter_string",
    "http_url",
    "websocket_url",
]
