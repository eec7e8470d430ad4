"""Rooms: a family of channels `<prefix><id>` whose ownership Postgres decides.

A plugin declares a room (``Room(prefix="challenge_", param="challenge_id",
predicate=...)``) next to its `Plugin`s. ``challenge_42`` is then a channel
that exists once someone is admitted to it: at each subscribe or join the
predicate, a boolean SQL expression in which ``$challenge_id`` is the id as
text, is evaluated in Postgres as the caller (their role and JWT claims, as
`topic_policies` does for private topics), so ``auth.uid()`` and
``auth.jwt()`` work in it. True admits; false, NULL or an error refuses.
The service key is admitted without a query.

Ids are exact strings: ``id_pattern`` (a full match) refuses malformed ones
before any query, and the predicate compares text (``id::text =
$challenge_id``), so ``challenge_0001`` is not ``challenge_1``.

Whoever is admitted receives every event on the room (no row scope): the
room's owner is the point of the check. Events reach a room through
`realtime_bridge.broadcast('challenge_42', ...)`, typically from a trigger
in the writer's transaction.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel

from realtime_bridge.errors import ConfigurationError

PARAM_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Room:
    """Channels `<prefix><id>` that a caller may join only if `predicate` admits them."""

    prefix: str
    param: str
    predicate: str
    id_pattern: str = r"[A-Za-z0-9_-]{1,64}"
    events: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.prefix or "." in self.prefix:
            raise ConfigurationError(
                f"room prefix {self.prefix!r} must be a non-empty name without dots"
            )
        if not PARAM_NAME.fullmatch(self.param):
            raise ConfigurationError(
                f"room parameter {self.param!r} must be a lower-case SQL identifier"
            )
        if f"${self.param}" not in self.predicate:
            raise ConfigurationError(
                f"room {self.prefix}{{{self.param}}}: the predicate must use ${self.param}"
            )
        try:
            re.compile(self.id_pattern)
        except re.error as exc:
            raise ConfigurationError(f"room {self.prefix!r}: bad id_pattern: {exc}") from exc

    @property
    def name(self) -> str:
        return f"{self.prefix}{{{self.param}}}"

    @property
    def sql(self) -> str:
        """The predicate as one query with the id as `$1` (text)."""
        placeholder = re.compile(re.escape(f"${self.param}") + r"(?![A-Za-z0-9_])")
        return f"SELECT coalesce(({placeholder.sub('($1::text)', self.predicate)}), false)"

    def room_id(self, channel: str) -> str | None:
        """The id in `channel` if it names one of this room's channels, else None."""
        if not channel.startswith(self.prefix):
            return None
        value = channel[len(self.prefix) :]
        return value if re.fullmatch(self.id_pattern, value) else None
