"""Rooms: the in-memory side of Supabase Realtime channels in this process.

A room is every channel joined on one topic, public and private topics
being separate namespaces (as in Supabase). It carries what never touches
the database: client broadcasts (delivered to the other members, and to
the sender with `self`) and presence (`presence_state` once, then
`presence_diff`). Each frame is encoded once per wire format and shared by
every member. A member whose connection queue is full is cut off by its
own connection (`slow_consumer`); nobody else waits for it.

With a backplane (REDIS_URL, `realtime_bridge.backplane`) rooms span
instances: local broadcasts and presence changes are published to the
other instances, theirs are delivered here, and `presence_state` holds the
members of every instance.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from realtime_bridge.backplane import Backplane, Presence
from realtime_bridge.events import Frame
from realtime_bridge.protocols.phoenix_wire import (
    JSON_ENCODING,
    Vsn,
    envelope,
    message,
    user_broadcast,
)


class Member(Protocol):
    """One joined channel, as a room sees it."""

    @property
    def topic(self) -> str: ...

    @property
    def join_ref(self) -> str | None: ...

    @property
    def vsn(self) -> Vsn: ...

    @property
    def presence_enabled(self) -> bool: ...

    @property
    def receives_broadcast(self) -> bool:
        """False on a private topic whose SELECT policy refuses broadcasts to it."""

    @property
    def receives_presence(self) -> bool:
        """False on a private topic whose SELECT policy refuses presence to it."""

    def send(self, frame: Frame) -> None:
        """Queue a frame on the member's connection without waiting."""


@dataclass(frozen=True, slots=True)
class Tracked:
    key: str
    payload: dict[str, Any]
    meta: dict[str, Any]


def presence_ref() -> str:
    return "F" + secrets.token_urlsafe(9)


def broadcast_frames(
    topic: str,
    event: str,
    raw: bytes,
    encoding: int,
    meta: dict[str, Any] | None = None,
) -> dict[Vsn, Frame | None]:
    """One broadcast encoded for each wire format (None: that format cannot carry it).

    `raw` is the user payload already encoded: JSON (`encoding` 1) or bytes
    (0, which 1.0.0 sockets never receive, as in Supabase).
    """
    frames: dict[Vsn, Frame | None] = {Vsn.V1: None, Vsn.V2: None}
    text: Frame | None = None
    if encoding == JSON_ENCODING:
        body = (
            '{"type":"broadcast","event":'
            + orjson.dumps(event).decode()
            + ',"payload":'
            + raw.decode()
            + (',"meta":' + orjson.dumps(meta).decode() if meta else "")
            + "}"
        )
        head, tail = envelope(Vsn.V1, None, None, topic, "broadcast")
        frames[Vsn.V1] = (head, body, tail)
        head, tail = envelope(Vsn.V2, None, None, topic, "broadcast")
        text = (head, body, tail)
    frames[Vsn.V2] = user_broadcast(topic, event, meta, raw, encoding) or text
    return frames


class Room:
    """The members and presences of one topic."""

    def __init__(
        self, topic: str, private: bool = False, backplane: Backplane | None = None
    ) -> None:
        self.topic = topic
        self.private = private
        self.sub_topic = topic.removeprefix("realtime:")
        self.backplane = backplane
        self.members: dict[Member, None] = {}
        self.presences: dict[Member, Tracked] = {}

    def __len__(self) -> int:
        return len(self.members)

    def join(self, member: Member) -> None:
        self.members[member] = None

    def leave(self, member: Member) -> None:
        """Remove a member, telling the others its presence left."""
        self.untrack(member)
        self.members.pop(member, None)

    # broadcast ---------------------------------------------------------------

    def broadcast(
        self,
        event: str,
        raw: bytes,
        encoding: int,
        *,
        sender: Member | None = None,
        include_sender: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """Deliver one broadcast to the members (not to other instances: `Rooms.broadcast`)."""
        frames = broadcast_frames(self.topic, event, raw, encoding, meta)
        delivered = 0
        for member in list(self.members):
            if not member.receives_broadcast or (member is sender and not include_sender):
                continue
            frame = frames[member.vsn]
            if frame is not None:
                member.send(frame)
                delivered += 1
        return delivered

    # presence ----------------------------------------------------------------

    def state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for tracked in self.presences.values():
            grouped.setdefault(tracked.key, {"metas": []})["metas"].append(tracked.meta)
        if self.backplane is not None:
            for remote in self.backplane.presences(self.private, self.sub_topic):
                grouped.setdefault(remote.key, {"metas": []})["metas"].append(remote.meta)
        return grouped

    def send_state(self, member: Member) -> None:
        member.send(
            message(member.vsn, member.join_ref, None, self.topic, "presence_state", self.state())
        )

    def track(self, member: Member, key: str, payload: dict[str, Any]) -> None:
        """Track (or update) a member's presence; an identical repeat does nothing."""
        old = self.presences.get(member)
        if old is not None and old.key == key and old.payload == payload:
            return
        meta = {**payload, "phx_ref": presence_ref()}
        leaves: dict[str, Any] = {}
        if old is not None:
            meta["phx_ref_prev"] = old.meta["phx_ref"]
            leaves = {old.key: {"metas": [old.meta]}}
        self.presences[member] = Tracked(key, payload, meta)
        self._diff({key: {"metas": [meta]}}, leaves)
        self._publish_presence(key, meta, old)

    def untrack(self, member: Member) -> None:
        old = self.presences.pop(member, None)
        if old is not None:
            self._diff({}, {old.key: {"metas": [old.meta]}})
            self._publish_presence(None, None, old)

    def _publish_presence(
        self, key: str | None, meta: dict[str, Any] | None, old: Tracked | None
    ) -> None:
        if self.backplane is None:
            return
        joins = (
            [(meta["phx_ref"], Presence(self.private, self.sub_topic, key, meta))]
            if key is not None and meta is not None
            else []
        )
        self.backplane.publish_presence(joins, [old.meta["phx_ref"]] if old is not None else [])

    def _diff(self, joins: dict[str, Any], leaves: dict[str, Any]) -> None:
        body = orjson.dumps({"joins": joins, "leaves": leaves}).decode()
        frames = {vsn: envelope(vsn, None, None, self.topic, "presence_diff") for vsn in Vsn}
        for member in list(self.members):
            if member.presence_enabled and member.receives_presence:
                head, tail = frames[member.vsn]
                member.send((head, body, tail))


class Rooms:
    """Every room of this process, by (private, sub-topic); the backplane's sink."""

    def __init__(self, backplane: Backplane | None = None) -> None:
        self._rooms: dict[tuple[bool, str], Room] = {}
        self.backplane = backplane
        if backplane is not None:
            backplane.sink = self

    def get(self, private: bool, sub_topic: str) -> Room | None:
        return self._rooms.get((private, sub_topic))

    def join(self, private: bool, sub_topic: str, member: Member) -> Room:
        room = self._rooms.get((private, sub_topic))
        if room is None:
            room = self._rooms[(private, sub_topic)] = Room(
                f"realtime:{sub_topic}", private, self.backplane
            )
        room.join(member)
        return room

    def leave(self, private: bool, sub_topic: str, member: Member) -> None:
        room = self._rooms.get((private, sub_topic))
        if room is None:
            return
        room.leave(member)
        if not room:
            del self._rooms[(private, sub_topic)]

    def __len__(self) -> int:
        return len(self._rooms)

    def broadcast(
        self,
        private: bool,
        sub_topic: str,
        event: str,
        raw: bytes,
        encoding: int,
        *,
        sender: Member | None = None,
        include_sender: bool = False,
        meta: dict[str, Any] | None = None,
    ) -> int:
        """A client broadcast: this instance's members, then every other instance's."""
        room = self._rooms.get((private, sub_topic))
        delivered = 0
        if room is not None:
            delivered = room.broadcast(
                event, raw, encoding, sender=sender, include_sender=include_sender, meta=meta
            )
        if self.backplane is not None:
            self.backplane.publish_broadcast(private, sub_topic, event, raw, encoding, meta)
        return delivered

    # the backplane's sink ----------------------------------------------------

    def remote_broadcast(
        self,
        private: bool,
        sub_topic: str,
        event: str,
        raw: bytes,
        encoding: int,
        meta: dict[str, Any] | None,
    ) -> None:
        room = self._rooms.get((private, sub_topic))
        if room is not None:
            room.broadcast(event, raw, encoding, meta=meta)

    def remote_diff(
        self, private: bool, sub_topic: str, joins: dict[str, Any], leaves: dict[str, Any]
    ) -> None:
        room = self._rooms.get((private, sub_topic))
        if room is not None:
            room._diff(joins, leaves)


def generated_presence_key() -> str:
    """A presence key for a join that gave none (Supabase uses a UUIDv1 too)."""
    return str(uuid.uuid1())
