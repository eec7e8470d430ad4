"""The exception tree, and the error codes clients see.

    RealtimeBridgeError
    ├── ConfigurationError      bad settings or plugins, raised at start-up
    ├── MigrationError          a migration file failed to apply
    ├── PublishError            an event could not be written
    └── ClientError             something a client sent or did; carries `code`
        ├── BadMessage          bad_message
        │   ├── TooDeep         too_deep    (JSON nested past the depth limit)
        │   └── TooLong         too_long    (too many entries, or a key too long)
        ├── UnknownChannel      unknown_channel
        ├── UnknownTable        unknown_table
        ├── InvalidFilter       invalid_filter
        ├── UnknownSubscription unknown_subscription
        └── PayloadInvalid      invalid_payload

Codes are stable and documented in the README; the message is for humans.
"""

from __future__ import annotations

from typing import Any


class RealtimeBridgeError(Exception):
    """Base class of every error the package raises on purpose."""


class ConfigurationError(RealtimeBridgeError):
    """The settings or the plugins are unusable; raised at start-up."""


class MigrationError(RealtimeBridgeError):
    """A migration file failed to apply."""


class PublishError(RealtimeBridgeError):
    """An event could not be published."""


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


class TooDeep(BadMessage):
    code = "too_deep"


class TooLong(BadMessage):
    code = "too_long"


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


# Codes sent only as frames (the connection is closed after them).
TOO_LARGE = "too_large"
SLOW_CONSUMER = "slow_consumer"
RESYNC_REQUIRED = "resync_required"
