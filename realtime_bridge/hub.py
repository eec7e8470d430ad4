"""The hub: channels, subscriptions, fan-out and resume.

Events arrive in seq order (`publish`). For each, the hub finds its
receivers through per-channel indexes on equality filters (so a
`user_id = u1` subscription is found by one dict lookup, not by testing
every subscription), renders the frame from the event's shared body and
offers it to the receiver's bounded outlet. An outlet that is full is cut
off (`slow_consumer`); it never slows anyone else.

Resume and back-pressure are one mechanism: a subscription that is behind
(opened with `since`, or whose outlet filled up) is CATCHING_UP. It reads
the shared replay window, or the database log beyond it, at the pace its
client reads, and turns LIVE once it reaches the head, with no await
between the last check and the switch: nothing is missed, nothing is sent
twice, and no per-subscriber buffer grows. Only a client that stops
reading altogether is cut off (its outlet's stall timeout).

Row security (a subscription with a `viewer`: the table's RLS policies
decide what it sees) needs a database round trip per decision, so those
subscriptions are never served from `publish`. Each channel that has some
gets a `_Gate`: a task that follows the window behind the head, asks
`visibility` once per batch of changes for every distinct viewer
interested, and delivers in seq order. Other channels, and the plain
subscriptions of the same channel, never wait for it. While the check
cannot run (the database is down) the gate delivers nothing and keeps its
place (fail closed, nothing lost); once the window has moved past it, its
subscriptions catch up on their own, asking the same question per batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import secrets
from collections import deque
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Protocol

from realtime_bridge.errors import SinceAhead, UnknownChannel
from realtime_bridge.events import Event, Frame, LogEntry
from realtime_bridge.filters import NULL_KEY, Columns, Filter, column_types
from realtime_bridge.pgsnapshot import PgSnapshot
from realtime_bridge.pgtypes import UNKNOWN, ColumnType, Key

logger = logging.getLogger(__name__)


class Outlet(Protocol):
    """The sending side of one client connection."""

    def offer(self, frame: Frame) -> bool:
        """Queue a frame without waiting; False when the outlet is full."""

    async def put(self, frame: Frame) -> None:
        """Queue a frame, waiting for room (used by replay)."""

    @property
    def closed(self) -> bool:
        """True once the client is gone."""


class SubscriptionState(enum.Enum):
    CATCHING_UP = "catching_up"
    LIVE = "live"
    PAUSED = "paused"  # its token expired: nothing is sent until a fresh one arrives
    CLOSED = "closed"


Renderer = Callable[[Event, str], Frame]


def render_db_change(event: Event, prefix: str) -> Frame:
    return event.frame_for(prefix)


@dataclass(eq=False)
class Subscription:
    """One client's interest in one channel, with its filter.

    `last_seq` is how far this subscription has been served: every event
    of its channel up to `last_seq` was either sent or did not match.
    """

    id: str
    channel: str
    filter: Filter
    outlet: Outlet
    prefix: str
    render: Renderer = render_db_change
    client_id: str | None = None
    state: SubscriptionState = SubscriptionState.CATCHING_UP
    last_seq: int = 0
    index: tuple[str, tuple[Key, ...]] | None = None
    on_lag: Callable[[Subscription], None] | None = None
    # Row scope: only rows whose `owner_column` equals `owner` (None: all rows),
    # compared in the column's type (`owner_key` is None when `owner` is no
    # value of that type: then no row is this subscriber's).
    owner: str | None = None
    owner_column: str | None = None
    owner_type: ColumnType = UNKNOWN
    owner_key: Key | None = None
    # Row security: the role and claims the table's policies are asked with
    # (None: no such check). Replaced in place when the client's token changes.
    viewer: Hashable | None = None
    # The snapshot the client holds the rows of (its token): changes of rows
    # that snapshot already showed are not sent again. Dropped on a resync.
    seen: PgSnapshot | None = None

    def owns(self, row: Mapping[str, Any] | None) -> bool:
        """Whether `row` belongs to this subscription's owner (always False when unscoped)."""
        if row is None or self.owner_key is None:
            return False
        return self.owner_type.key(row.get(self.owner_column or "")) == self.owner_key

    def wants(self, event: Event) -> Event | None:
        """The version of `event` this subscription may receive, if any.

        Unscoped: the event when its new or old row matches the filter (so a
        row leaving the filter is seen). Row-scoped: only rows the owner owns;
        when an UPDATE moves a row to another owner, the old owner receives a
        DELETE without the new row and the new owner an INSERT without the
        old one, so neither learns the other's data.
        """
        if self.seen is not None and event.table is not None and self.seen.saw(event.xid):
            return None  # already in the client's snapshot
        if self.owner is None:
            if self.filter.matches(event.view) or (
                event.old_view is not None and self.filter.matches(event.old_view)
            ):
                return event
            return None
        owns_new = self.owns(event.view)
        owns_old = self.owns(event.old_view)
        if not (owns_new or owns_old):
            return None
        if (owns_new and owns_old) or event.view is None or event.old_view is None:
            return self.wants_unscoped(event)
        variant = event.arrival() if owns_new else event.departure()
        return self.wants_unscoped(variant)

    def wants_unscoped(self, event: Event) -> Event | None:
        if self.filter.matches(event.view) or (
            event.old_view is not None and self.filter.matches(event.old_view)
        ):
            return event
        return None

    def deliver(self, event: Event) -> bool:
        """Offer a live event (already chosen by `wants`); when full, fall back to catching up."""
        if self.state is not SubscriptionState.LIVE:
            return False
        if self.outlet.offer(self.render(event, self.prefix)):
            self.last_seq = event.seq
            return True
        # The client is behind. Stop offering live events; it will be served
        # from the shared replay window (then the log) at its own pace.
        self.state = SubscriptionState.CATCHING_UP
        if self.on_lag is not None:
            self.on_lag(self)
        return False


def secured(event: Event, sees_new: bool, sees_old: bool, sub: Subscription) -> Event | None:
    """The version of `event` a row-secured `sub` receives, given which row images it may see.

    As with owner scoping: an UPDATE that makes a row visible arrives as an
    INSERT without the old row, one that hides it as a DELETE without the
    new row; a DELETE is seen only by who could see the row before it went.
    Events without a table (broadcasts) are not row-secured: never sent.
    """
    if event.table is None:
        return None
    has_new, has_old = event.view is not None, event.old_view is not None
    if has_new and has_old:
        if sees_new and sees_old:
            version = event
        elif sees_new:
            version = event.arrival()
        elif sees_old:
            version = event.departure()
        else:
            return None
    elif (has_new and sees_new) or (has_old and sees_old):
        version = event
    else:
        return None
    return sub.wants_unscoped(version)


# (table, row images, viewers) → for each viewer, the indexes of the rows it may see.
Visibility = Callable[
    [str, Sequence[Mapping[str, Any]], Sequence[Hashable]], Awaitable[list[set[int]]]
]


class Channel:
    """A channel's subscriptions, indexed by their equality filters.

    `types` holds each column's Postgres type: filters, row scopes and the
    index keys all compare values in those types, so a lookup finds exactly
    the subscriptions whose filter would say yes.
    """

    def __init__(self, name: str, columns: Columns | None, owner_column: str | None) -> None:
        self.name = name
        self.types = column_types(columns)
        self.columns = set(self.types) if columns is not None else None
        self.owner_column = owner_column
        self.indexed: dict[str, dict[Key, set[Subscription]]] = {}
        self.unindexed: set[Subscription] = set()
        # Row-scoped to an owner no row can have (not a value of the owner column's type).
        self.inert: set[Subscription] = set()
        self.count = 0
        self.gated = 0  # row-secured subscriptions (served by the channel's gate)

    def type_of(self, column: str) -> ColumnType:
        return self.types.get(column, UNKNOWN)

    def add(self, sub: Subscription) -> None:
        if sub.owner is not None and sub.owner_column is not None:
            if sub.owner_key is None:
                sub.index = None
                self.inert.add(sub)
                self.count += 1
                return
            sub.index = (sub.owner_column, (sub.owner_key,))
        else:
            sub.index = sub.filter.index_key(prefer=self.owner_column)
        if sub.index is None:
            self.unindexed.add(sub)
        else:
            column, keys = sub.index
            table = self.indexed.setdefault(column, {})
            for key in keys:
                table.setdefault(key, set()).add(sub)
        self.count += 1

    def remove(self, sub: Subscription) -> None:
        if sub.index is None:
            for kept in (self.unindexed, self.inert):
                if sub in kept:
                    kept.discard(sub)
                    self.count -= 1
            return
        column, keys = sub.index
        table = self.indexed.get(column, {})
        found = False
        for key in keys:
            members = table.get(key)
            if members and sub in members:
                found = True
                members.discard(sub)
                if not members:
                    del table[key]
        if not table and column in self.indexed:
            del self.indexed[column]
        if found:
            self.count -= 1

    def receivers(self, event: Event) -> Iterable[tuple[Subscription, Event]]:
        """The subscriptions that want `event` (and the version each gets), without a full scan."""
        if not self.indexed:
            candidates: Iterable[Subscription] = self.unindexed
        else:
            found: dict[Subscription, None] = dict.fromkeys(self.unindexed)
            for column, table in self.indexed.items():
                kind = self.type_of(column)
                for view in (event.view, event.old_view):
                    if view is None:
                        continue
                    value = view.get(column)
                    key = NULL_KEY if value is None else kind.key(value)
                    members = table.get(key) if key is not None else None
                    if members:
                        found.update(dict.fromkeys(members))
            candidates = found
        chosen = []
        for sub in candidates:
            version = sub.wants(event)
            if version is not None:
                chosen.append((sub, version))
        return chosen


# (after, upto, channel) → batches of that channel's events, oldest first.
HistoryReader = Callable[[int, int, str], AsyncIterator[list[Event]]]


#: Seconds a `since` beyond the head may take to be reached before it is refused.
AHEAD_GRACE = 1.0


@dataclass
class HubStats:
    events_in: int = 0
    frames_out: int = 0
    replayed: int = 0
    slow_consumers: int = 0
    resyncs: int = 0
    secured_checks: int = 0  # row-security statements (one per table per batch)
    secured_failures: int = 0  # of which could not run (retried)


class Hub:
    """Routes events to subscriptions; keeps the recent window for resume."""

    def __init__(
        self,
        *,
        head: int = 0,
        window: int = 50_000,
        window_bytes: int = 0,
        history: HistoryReader | None = None,
        earliest_seq: Callable[[], Any] | None = None,
        visibility: Visibility | None = None,
    ) -> None:
        self.head = head
        # The replay window: the latest entries, at most `window_events` of
        # them and (when `window_max_bytes` > 0) at most that many estimated
        # bytes (`LogEntry.size`), oldest evicted first. Older events are
        # read back from the database log (`history`), or a resync is asked.
        self.window: deque[LogEntry] = deque()
        self.window_events = max(window, 1)
        self.window_max_bytes = window_bytes
        self.window_bytes = 0
        self.channels: dict[str, Channel] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.history = history
        self.earliest_seq = earliest_seq
        # Positions below this missed changes the capture lost: resync (require_resync).
        self.resync_floor = 0
        self.stats = HubStats()
        self._ids = itertools.count(1)
        self._waiters: list[asyncio.Future[None]] = []
        # Row security: asks which row images each viewer may see (see `_Gate`).
        self.visibility = visibility
        self.gates: dict[str, _Gate] = {}

    # channels -----------------------------------------------------------

    def add_channel(
        self, name: str, *, columns: Columns | None = None, owner_column: str | None = None
    ) -> Channel:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = Channel(name, columns, owner_column)
        return channel

    def channel(self, name: str) -> Channel:
        try:
            return self.channels[name]
        except KeyError:
            raise UnknownChannel(f"no channel named {name!r}", channel=name) from None

    # publishing ----------------------------------------------------------

    def publish(self, seq: int, entry: LogEntry | list[Event]) -> None:
        """Route change `seq` (seqs arrive in increasing order) to its subscribers."""
        if isinstance(entry, list):
            entry = LogEntry.of(seq, entry)
        if seq <= self.head:
            logger.warning("ignoring seq %s at or below head %s", seq, self.head)
            return
        if seq != self.head + 1 and self.window:
            logger.warning("seq jumped from %s to %s", self.head, seq)
            for old in self.window:
                old.on_grow = None
            self.window.clear()
            self.window_bytes = 0
        self.head = seq
        self._keep(entry)
        self.stats.events_in += 1
        for gate in self.gates.values():
            # A gate with nothing pending skips changes of other channels here, so a
            # quiet row-secured channel never falls behind the window for nothing.
            if gate.cursor == seq - 1 and gate.channel.name not in entry.channels:
                gate.cursor = seq
        for name in entry.channels:
            channel = self.channels.get(name)
            if channel is None or channel.count == 0:
                continue
            event = entry.event(name)
            if event is None:
                continue
            for sub, version in channel.receivers(event):
                if sub.viewer is None and sub.deliver(version):
                    self.stats.frames_out += 1
            if channel.gated:
                self.gates[name].wake.set()
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _keep(self, entry: LogEntry) -> None:
        """Add `entry` to the window, evicting the oldest past either bound (the newest stays)."""
        window = self.window
        window.append(entry)
        entry.on_grow = self._grew
        self.window_bytes += entry.size
        limit = self.window_max_bytes
        while len(window) > self.window_events or (
            limit > 0 and self.window_bytes > limit and len(window) > 1
        ):
            evicted = window.popleft()
            evicted.on_grow = None  # a replay still holding it must not count it
            self.window_bytes -= evicted.size

    def _grew(self, grown: int) -> None:
        # An entry in the window built an event (evictions wait for the next publish).
        self.window_bytes += grown

    async def wait_for_head(self, seq: int, timeout: float) -> bool:
        """Wait until the head reaches `seq`; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.head < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return self.head >= seq
        return True

    async def check_since(self, since: int | None, grace: float) -> None:
        """Raise `SinceAhead` when `since` is beyond the head and not reached within `grace` s.

        Another instance may be a moment ahead of this one, so a little
        patience; a position far in the future (another database, or seqs
        of a process that has restarted) gets a clear answer instead of a
        silent wait.
        """
        if since is None or since <= self.head:
            return
        if await self.wait_for_head(since, grace):
            return
        raise SinceAhead(
            f"since {since} is ahead of this bridge's head seq {self.head}: it was not given "
            "out here; take a snapshot (or subscribe without since) and resume from its seq",
            since=since,
            head_seq=self.head,
        )

    # subscriptions -------------------------------------------------------

    def subscribe(
        self,
        channel_name: str,
        filter: Filter,
        outlet: Outlet,
        *,
        since: int | None = None,
        render: Renderer = render_db_change,
        prefix_for: Callable[[str], str] | None = None,
        client_id: str | None = None,
        on_lag: Callable[[Subscription], None] | None = None,
        owner: str | None = None,
        owner_column: str | None = None,
        viewer: Hashable | None = None,
        seen: PgSnapshot | None = None,
    ) -> Subscription:
        """Register a subscription in CATCHING_UP state; run `catch_up` to serve it.

        Without `since` it starts at the current head (live from now). With a
        `viewer`, only the rows the table's policies show that viewer. With
        `seen` (and `since`), not the changes that snapshot already showed.
        """
        if seen is not None and since is None:
            raise ValueError("a snapshot token needs the snapshot's seq as `since`")
        channel = self.channel(channel_name)
        if viewer is not None and owner is not None:
            raise ValueError("a subscription is row-secured or owner-scoped, not both")
        if viewer is not None and self.visibility is None:
            raise ValueError("a row-secured subscription needs a hub with `visibility`")
        filter = filter.typed(channel.types)
        if owner is not None and owner_column is None:
            raise ValueError("a row-scoped subscription needs the owner column")
        owner_type = channel.type_of(owner_column or "")
        sub_id = f"sub_{next(self._ids)}_{secrets.token_hex(4)}"
        sub = Subscription(
            id=sub_id,
            channel=channel_name,
            filter=filter,
            outlet=outlet,
            prefix=prefix_for(sub_id) if prefix_for else "",
            render=render,
            client_id=client_id,
            last_seq=self.head if since is None else since,
            on_lag=on_lag,
            owner=owner,
            owner_column=owner_column if owner is not None else None,
            owner_type=owner_type,
            owner_key=owner_type.key(owner) if owner is not None else None,
            viewer=viewer,
            seen=seen,
        )
        channel.add(sub)
        self.subscriptions[sub_id] = sub
        if viewer is not None:
            channel.gated += 1
            if channel_name not in self.gates:
                self.gates[channel_name] = _Gate(self, channel)
        return sub

    def pause(self, sub: Subscription) -> None:
        """Stop sending to `sub` (its token expired); `resume` catches it up later."""
        if sub.state is not SubscriptionState.CLOSED:
            sub.state = SubscriptionState.PAUSED

    def resume(self, sub: Subscription) -> None:
        """Make a paused subscription catch up from where it stopped (run `catch_up` next)."""
        if sub.state is SubscriptionState.PAUSED:
            sub.state = SubscriptionState.CATCHING_UP

    def unsubscribe(self, sub: Subscription) -> None:
        if self.subscriptions.pop(sub.id, None) is None:
            return
        sub.state = SubscriptionState.CLOSED
        channel = self.channels.get(sub.channel)
        if channel is not None:
            channel.remove(sub)
            if sub.viewer is not None:
                channel.gated -= 1

    async def close(self) -> None:
        """Stop the row-security gates (the bridge's shutdown)."""
        gates, self.gates = list(self.gates.values()), {}
        for gate in gates:
            gate.task.cancel()
        for gate in gates:
            with contextlib.suppress(asyncio.CancelledError):
                await gate.task

    async def catch_up(
        self,
        sub: Subscription,
        *,
        on_resync: Callable[[int], Any] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Serve `sub` every matching event after its `last_seq`, then make it LIVE.

        Reads the shared in-memory window where it reaches back far enough,
        the database log otherwise, waiting for room in the outlet (so a slow
        reader paces itself instead of being cut off). The switch to LIVE
        happens with no await after the last check, so nothing is missed or
        sent twice. When `last_seq` is older than anything still kept,
        `on_resync(earliest)` is called and the subscription continues from
        the current head.
        """

        def stopped() -> bool:
            return (
                sub.state is not SubscriptionState.CATCHING_UP
                or sub.outlet.closed
                or (stop is not None and stop())
            )

        if sub.last_seq > self.head:
            # Endpoints refuse such a `since` first (`check_since`); going live
            # here would send seqs the client says it already has.
            raise SinceAhead(
                f"since {sub.last_seq} is ahead of the head seq {self.head}",
                since=sub.last_seq,
                head_seq=self.head,
            )
        while not stopped():
            head = self.head
            if sub.last_seq < self.resync_floor <= head:
                self.stats.resyncs += 1
                sub.last_seq = head
                sub.seen = None  # the client reloads: its old snapshot no longer applies
                if on_resync is not None:
                    result = on_resync(self.resync_floor)
                    if asyncio.iscoroutine(result):
                        await result
                continue
            if sub.last_seq >= head:
                sub.state = SubscriptionState.LIVE
                return
            first = self.window[0].seq if self.window else head + 1
            if sub.last_seq + 1 >= first:
                offset = sub.last_seq + 1 - first
                chunk = list(itertools.islice(self.window, offset, offset + 1024))
                gated: list[Event | None] | None = None
                if sub.viewer is not None:
                    events = [
                        entry.event(sub.channel) if sub.channel in entry.channels else None
                        for entry in chunk
                    ]
                    gated = await self._secured_versions(sub, events, stopped)
                    if gated is None:
                        return
                for i, entry in enumerate(chunk):
                    if gated is not None:
                        version = gated[i]
                    else:
                        event = entry.event(sub.channel) if sub.channel in entry.channels else None
                        version = sub.wants(event) if event is not None else None
                    if version is not None:
                        await self._send_replayed(sub, version)
                        if sub.outlet.closed:
                            return  # not accepted: the client is gone (or the poll is full)
                    # Recorded before any early return: the frame is queued.
                    sub.last_seq = entry.seq
                    if stopped():
                        return
                continue
            earliest = await self._earliest()
            if earliest is None or sub.last_seq + 1 < earliest:
                self.stats.resyncs += 1
                sub.last_seq = self.head
                sub.seen = None
                if on_resync is not None:
                    result = on_resync(earliest if earliest is not None else self.head + 1)
                    if asyncio.iscoroutine(result):
                        await result
                continue
            if self.history is None:
                sub.last_seq = first - 1
                continue
            upto = first - 1
            async for batch in self.history(sub.last_seq, upto, sub.channel):
                versions: list[Event | None]
                if sub.viewer is not None:
                    found = await self._secured_versions(sub, list(batch), stopped)
                    if found is None:
                        return
                    versions = found
                else:
                    versions = [sub.wants(event) for event in batch]
                for event, version in zip(batch, versions, strict=True):
                    if version is not None:
                        await self._send_replayed(sub, version)
                        if sub.outlet.closed:
                            return
                    sub.last_seq = event.seq
                    if stopped():
                        return
            if not stopped():
                sub.last_seq = max(sub.last_seq, upto)

    async def _secured_versions(
        self, sub: Subscription, events: list[Event | None], stopped: Callable[[], bool]
    ) -> list[Event | None] | None:
        """What row-secured `sub` receives of each event (None: stopped while the check waited)."""
        wanted = [sub.wants(e) if e is not None else None for e in events]
        asked = [e for e, w in zip(events, wanted, strict=True) if e is not None and w is not None]
        if not asked:
            return [None] * len(events)
        viewer = sub.viewer
        assert viewer is not None
        sightings = await self.sightings(asked, [viewer], stopped)
        if sightings is None:
            return None
        out: list[Event | None] = []
        for event, version in zip(events, wanted, strict=True):
            if event is None or version is None:
                out.append(None)
                continue
            sees_new, sees_old = sightings(event, viewer)
            out.append(secured(event, sees_new, sees_old, sub))
        return out

    async def sightings(
        self,
        events: Sequence[Event],
        viewers: Sequence[Hashable],
        stopped: Callable[[], bool] = lambda: False,
    ) -> Callable[[Event, Hashable], tuple[bool, bool]] | None:
        """Ask once per table which of `events`' row images each viewer may see.

        Returns `sees(event, viewer) -> (sees_new_row, sees_old_row)`. When
        the check fails (the database is down) it waits and asks again, and
        delivers nothing meanwhile: fail closed, nothing lost. None when
        `stopped()` turned true while waiting.
        """
        visibility = self.visibility
        assert visibility is not None
        # Per table: its row images, and where each event's new / old image is.
        images: dict[str, list[Mapping[str, Any]]] = {}
        where: dict[int, tuple[str, int | None, int | None]] = {}
        for event in events:
            if event.table is None or id(event) in where:
                continue
            rows = images.setdefault(event.table, [])
            new_at = old_at = None
            if event.view is not None:
                # An UPDATE's new row lacks the TOASTed values it did not change.
                new = event.view if event.old_view is None else {**event.old_view, **event.view}
                new_at = len(rows)
                rows.append(new)
            if event.old_view is not None:
                old_at = len(rows)
                rows.append(event.old_view)
            where[id(event)] = (event.table, new_at, old_at)
        index = {viewer: i for i, viewer in enumerate(viewers)}
        seen: dict[str, list[set[int]]] = {}
        delay = 0.05
        for table, rows in images.items():
            while True:
                if stopped():
                    return None
                try:
                    seen[table] = await visibility(table, rows, viewers)
                    self.stats.secured_checks += 1
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.stats.secured_failures += 1
                    if self.stats.secured_failures == 1 or delay >= 2.0:
                        logger.warning(
                            "row-level security on %s cannot be checked, holding its changes "
                            "back (retrying): %s",
                            table,
                            exc,
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)

        def sees(event: Event, viewer: Hashable) -> tuple[bool, bool]:
            spot = where.get(id(event))
            if spot is None:
                return False, False
            table, new_at, old_at = spot
            visible = seen[table][index[viewer]]
            return (new_at is not None and new_at in visible), (
                old_at is not None and old_at in visible
            )

        return sees

    async def _send_replayed(self, sub: Subscription, event: Event) -> None:
        await sub.outlet.put(sub.render(event, sub.prefix))
        self.stats.replayed += 1

    def require_resync(self, from_seq: int) -> int:
        """Changes before `from_seq` are incomplete (the capture lost some): resync everyone.

        Every subscription, live or catching up, is sent back through catch-up
        with a position before the gap, so each protocol tells its client
        `resync_required` in its own way and carries on live; a client that
        resumes from before the gap later is told the same. Returns how many
        subscriptions were told.
        """
        self.resync_floor = max(self.resync_floor, from_seq)
        told = 0
        for sub in list(self.subscriptions.values()):
            if sub.state is SubscriptionState.CLOSED or sub.last_seq >= from_seq:
                continue
            told += 1
            if sub.state is SubscriptionState.LIVE:
                sub.state = SubscriptionState.CATCHING_UP
                if sub.on_lag is not None:
                    sub.on_lag(sub)
        return told

    async def _earliest(self) -> int | None:
        if self.earliest_seq is None:
            return None
        result = self.earliest_seq()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return None if result is None else int(result)

    # introspection -------------------------------------------------------

    def subscriptions_per_channel(self) -> dict[str, int]:
        return {name: ch.count for name, ch in self.channels.items() if ch.count}


class _Gate:
    """Serves a channel's row-secured LIVE subscriptions, a batch of changes at a time.

    Follows the hub's window from `cursor` (everything up to it is decided)
    to the head; for each batch, one `visibility` question per table covers
    every distinct viewer interested, then the batch is delivered in seq
    order. A subscription receives a change only while LIVE and only once
    (`last_seq` below the change's seq), so one that went live through
    `catch_up` meanwhile, or lagged and is catching up, is served exactly
    once by exactly one of the two.
    """

    BATCH = 512

    def __init__(self, hub: Hub, channel: Channel) -> None:
        self.hub = hub
        self.channel = channel
        self.cursor = hub.head
        self.error: str | None = None
        self.wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"row-security-{channel.name}")
        self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "the row-security gate of %s failed", self.channel.name, exc_info=task.exception()
            )

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
                self.error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug here must not silently stop the channel: said, kept in
                # /health, and tried again (the cursor has not moved).
                self.error = f"{type(exc).__name__}: {exc}"
                logger.exception("the row-security gate of %s failed; retrying", self.channel.name)
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        hub, name = self.hub, self.channel.name
        if self.cursor >= hub.head:
            self.wake.clear()
            await self.wake.wait()
            return
        if not self.channel.gated:
            self.cursor = hub.head
            return
        first = hub.window[0].seq if hub.window else hub.head + 1
        if self.cursor + 1 < first:
            # The window moved past the gate (a long outage): each subscription
            # catches up by itself, from the log, with the same checks.
            for sub in list(hub.subscriptions.values()):
                if (
                    sub.channel == name
                    and sub.viewer is not None
                    and sub.state is SubscriptionState.LIVE
                ):
                    sub.state = SubscriptionState.CATCHING_UP
                    if sub.on_lag is not None:
                        sub.on_lag(sub)
            self.cursor = hub.head
            return
        offset = self.cursor + 1 - first
        entries = list(itertools.islice(hub.window, offset, offset + self.BATCH))
        if await self._serve(entries):
            self.cursor = max(self.cursor, entries[-1].seq)

    async def _serve(self, entries: list[LogEntry]) -> bool:
        """Decide and deliver `entries`; False when it stopped before deciding."""
        name = self.channel.name
        work: list[tuple[Event, list[tuple[Subscription, Hashable]]]] = []
        viewers: dict[Hashable, None] = {}
        for entry in entries:
            if name not in entry.channels:
                continue
            event = entry.event(name)
            if event is None:
                continue
            wanting = [
                (sub, sub.viewer)
                for sub, _ in self.channel.receivers(event)
                if sub.viewer is not None
                and sub.state is SubscriptionState.LIVE
                and sub.last_seq < event.seq
            ]
            if wanting:
                work.append((event, wanting))
                viewers.update(dict.fromkeys(v for _, v in wanting))
        if not work:
            return True
        sees = await self.hub.sightings(
            [event for event, _ in work], list(viewers), lambda: not self.channel.gated
        )
        if sees is None:
            return False  # everyone left while the check could not run
        for event, wanting in work:
            for sub, viewer in wanting:
                if sub.state is not SubscriptionState.LIVE or sub.last_seq >= event.seq:
                    continue
                version = secured(event, *sees(event, viewer), sub)
                if version is not None and sub.deliver(version):
                    self.hub.stats.frames_out += 1
        return True
