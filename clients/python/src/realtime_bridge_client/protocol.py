"""What both ends of the bridge's protocol share: its error codes and their classes.

The server (`realtime_bridge`) raises these and the client raises subclasses
of them, so code catching `UnknownChannel` catches both. The filter grammar
both ends parse is in `realtime_bridge_client.filters`.

    RealtimeBridgeError
    └── ClientError             something a client sent or did; carries `code`
        ├── BadMessage          bad_message
        ├── UnknownChannel      unknown_channel
        ├── UnknownTable        unknown_table
        ├── InvalidFilter       invalid_filter
        ├── UnknownSubscription unknown_subscription
        ├── PayloadInvalid      invalid_payload
        └── Unauthorized        unauthorized
            └── TokenExpired    token_expired
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RESYNC_REQUIRED",
    "SLOW_CONSUMER",
    "TOO_LARGE",
    "BadMessage",
    "ClientError",
    "InvalidFilter",
    "PayloadInvalid",
    "RealtimeBridgeError",
    "TokenExpired",
    "Unauthorized",
    "UnknownChannel",
    "UnknownSubscription",
    "UnknownTable",
]


class RealtimeBridgeError(Exception):
    """Base class of every error the package raises on purpose."""


class ClientError(RealtimeBridgeError):
    """An error caused by a client's request, reported to it with `code`."""

    code = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def frame(self) -> dict[str, Any]:
        """The `{"type": "error", ...}` frame describing this error."""
        return {**self.details, "type": "error", "code": self.code, "message": self.message}


class BadMessage(ClientError):
    code = "bad_message"


class UnknownChannel(ClientError):
    code = "unknown_channel"


class UnknownTable(ClientError):
    code = "unknown_table"


class InvalidFilter(ClientError):
    code = "invalid_filter"


class UnknownSubscription(ClientError):
    code = "unknown_subscription"


class PayloadInvalid(ClientError):
    code = "invalid_payload"


class Unauthorized(ClientError):
    """No, or a bad, token; or a token that may not do this."""

    code = "unauthorized"


class TokenExpired(Unauthorized):
    code = "token_expired"


# Codes sent only as frames (the connection is closed after them).
TOO_LARGE = "too_large"
SLOW_CONSUMER = "slow_consumer"
RESYNC_REQUIRED = "resync_required"
