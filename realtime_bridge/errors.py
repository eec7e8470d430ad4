"""The exception tree, and the error codes clients see.

    RealtimeBridgeError
    ├── ConfigurationError      bad settings or plugins, raised at start-up
    ├── MigrationError          a migration file failed to apply
    ├── PublishError            an event could not be written
    ├── PostgrestError          hosted mode: PostgREST refused a read
    └── ClientError             something a client sent or did; carries `code`
        ├── BadMessage          bad_message
        │   ├── TooDeep         too_deep    (JSON nested past the depth limit)
        │   └── TooLong         too_long    (too many entries, or a key too long)
        ├── UnknownChannel      unknown_channel
        ├── UnknownTable        unknown_table
        ├── InvalidFilter       invalid_filter
        ├── UnknownSubscription unknown_subscription
        ├── SinceAhead          since_ahead
        └── PayloadInvalid      invalid_payload

Codes are stable and documented in the README; the message is for humans.
The base and the client-error classes are defined in
`realtime_bridge_client.protocol` (the client package, which the server
ships too), so the Python client's errors are subclasses of these.
"""

from __future__ import annotations

from realtime_bridge_client.protocol import (
    RESYNC_REQUIRED,
    SLOW_CONSUMER,
    TOO_LARGE,
    BadMessage,
    ClientError,
    InvalidFilter,
    PayloadInvalid,
    RealtimeBridgeError,
    SinceAhead,
    UnknownChannel,
    UnknownSubscription,
    UnknownTable,
)

__all__ = [
    "RESYNC_REQUIRED",
    "SLOW_CONSUMER",
    "TOO_LARGE",
    "BadMessage",
    "ClientError",
    "ConfigurationError",
    "InvalidFilter",
    "MigrationError",
    "PayloadInvalid",
    "PostgrestError",
    "PublishError",
    "RealtimeBridgeError",
    "SinceAhead",
    "TooDeep",
    "TooLong",
    "UnknownChannel",
    "UnknownSubscription",
    "UnknownTable",
]


class TooDeep(BadMessage):
    """A client message nested deeper than the bridge reads."""

    code = "too_deep"


class TooLong(BadMessage):
    """A client message with an array, object or key longer than the bridge reads."""

    code = "too_long"


class ConfigurationError(RealtimeBridgeError):
    """The settings or the plugins are unusable; raised at start-up."""


class MigrationError(RealtimeBridgeError):
    """A migration file failed to apply."""


class PublishError(RealtimeBridgeError):
    """An event could not be published."""


class PostgrestError(RealtimeBridgeError):
    """PostgREST refused a read: its error `code` (e.g. ``42703``) and message."""

    def __init__(self, table: str, code: str | None, message: str | None) -> None:
        super().__init__(f"PostgREST refused to read {table}: {message or 'error'} (code {code})")
        self.code = code
