"""Events: what clients receive, encoded once and shared by every receiver.

An `Event` is a `Change` seen through one channel (a plugin's typed channel
or a table's generic one). Its JSON body is encoded once, lazily; each wire
format only wraps those shared bytes with a few per-receiver characters
(the subscription id, the SSE framing).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime_bridge.change import Row

# A frame on its way out: parts joined only when written, so that the
# shared body is never copied per receiver while it waits in a queue.
Frame = tuple[str, ...]


@dataclass(slots=True, eq=False)
class Event:
    """One channel's view of one change at position `seq`."""

    seq: int
    channel: str
    event: str
    operation: str
    table: str | None
    data: Row | None
    old: Row | None
    timestamp: str
    user_id: Any = None
    record_id: Any = None
    # What filters are matched against: the raw row with the payload's
    # computed fields, for the new and (UPDATE / DELETE) the old state.
    view: Mapping[str, Any] | None = None
    old_view: Mapping[str, Any] | None = None
    owners: tuple[Any, ...] = ()
    # The writing transaction's 32-bit id, for the snapshot token (`pgsnapshot`).
    xid: int | None = None
    _body: str | None = field(default=None, repr=False)
    _variants: dict[str, Event] | None = field(default=None, repr=False)

    @property
    def body(self) -> str:
        """The JSON object after its opening brace, shared by every frame."""
        if self._body is None:
            encoded = orjson.dumps(
                {
                    "channel": self.channel,
                    "event": self.event,
                    "table": self.table,
                    "operation": self.operation,
                    "user_id": self.user_id,
                    "record_id": self.record_id,
                    "data": self.data,
                    "old": self.old,
                    "seq": self.seq,
                    "timestamp": self.timestamp,
                }
            ).decode()
            self._body = encoded[1:]
        return self._body

    def frame_for(self, prefix: str) -> Frame:
        """The `db_change` frame for a subscription whose prefix is given."""
        return (prefix, self.body)

    def arrival(self) -> Event:
        """This UPDATE as seen by the row's new owner: an INSERT, without the old row."""
        return self._variant("arrival", "INSERT", self.data, None, self.view, None)

    def departure(self) -> Event:
        """This UPDATE as seen by the row's old owner: a DELETE, without the new row."""
        return self._variant("departure", "DELETE", None, self.old, None, self.old_view)

    def _variant(
        self,
        name: str,
        operation: str,
        data: Row | None,
        old: Row | None,
        view: Mapping[str, Any] | None,
        old_view: Mapping[str, Any] | None,
    ) -> Event:
        if self._variants is None:
            self._variants = {}
        variant = self._variants.get(name)
        if variant is None:
            current = view if view is not None else old_view
            variant = self._variants[name] = Event(
                seq=self.seq,
                channel=self.channel,
                event=self.event,
                operation=operation,
                table=self.table,
                data=data,
                old=old,
                timestamp=self.timestamp,
                user_id=self.user_id if current is None else current.get("user_id", self.user_id),
                record_id=self.record_id,
                view=view,
                old_view=old_view,
                owners=self.owners,
                xid=self.xid,
            )
        return variant


def subscription_prefix(subscription_id: str) -> str:
    """The constant start of every `db_change` frame sent to one subscription."""
    return '{"type":"db_change","subscription_id":' + orjson.dumps(subscription_id).decode() + ","


# What an entry holds beyond its rows: the entry, the Change, the dicts' own slots.
ENTRY_OVERHEAD = 400


def row_size(row: Mapping[str, Any] | None) -> int:
    """About how many bytes of memory a decoded row holds (shallow sizes of its values).

    Cheap enough to run on every change: one C call per value, no encoding.
    """
    if row is None:
        return 0
    return sys.getsizeof(row) + sum(map(sys.getsizeof, row.values()))


def event_size(event: Event) -> int:
    """The estimated memory an event adds to its entry: its payload, view and encoded body."""
    return ENTRY_OVERHEAD + 2 * (row_size(event.data) + row_size(event.old))


class LogEntry:
    """One change in the hub's window: its channels now, its events on demand.

    Typing a row (a plugin's pydantic model) is the costly part of routing,
    so an event is built only the first time a channel with subscribers (or
    a catching-up subscription) asks for it, then kept for everyone else.
    `size` estimates the memory the entry holds (its change, then each
    event as it is built, reported to `on_grow`): the hub bounds its window
    by the sum.
    """

    __slots__ = ("_build", "_events", "channels", "on_grow", "seq", "size")

    def __init__(
        self,
        seq: int,
        channels: tuple[str, ...],
        build: Callable[[str], Event | None] | None = None,
        events: dict[str, Event | None] | None = None,
        size: int = ENTRY_OVERHEAD,
    ) -> None:
        self.seq = seq
        self.channels = channels
        self._build = build
        self._events: dict[str, Event | None] = events or {}
        self.size = size
        self.on_grow: Callable[[int], None] | None = None

    @classmethod
    def of(cls, seq: int, events: list[Event]) -> LogEntry:
        """An entry whose events are already built."""
        size = ENTRY_OVERHEAD + sum(event_size(e) for e in events)
        return cls(
            seq, tuple(e.channel for e in events), events={e.channel: e for e in events}, size=size
        )

    def event(self, channel: str) -> Event | None:
        """The event this change produces on `channel` (None: none, or its plugin failed)."""
        if channel in self._events:
            return self._events[channel]
        built = self._build(channel) if self._build is not None else None
        self._events[channel] = built
        if built is not None:
            grown = event_size(built)
            self.size += grown
            if self.on_grow is not None:
                self.on_grow(grown)
        return built
