"""The hub on its own: indexed routing, shared encoding, catch-up and back-pressure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from realtime_bridge.errors import UnknownChannel
from realtime_bridge.events import Event, Frame, LogEntry, subscription_prefix
from realtime_bridge.filters import Filter, parse_filter
from realtime_bridge.hub import Hub, Subscription, SubscriptionState


class ListOutlet:
    def __init__(self, limit: int = 1000) -> None:
        self.frames: list[Frame] = []
        self.limit = limit
        self.closed = False
        self.room = asyncio.Event()

    def offer(self, frame: Frame) -> bool:
        if len(self.frames) >= self.limit:
            return False
        self.frames.append(frame)
        return True

    async def put(self, frame: Frame) -> None:
        while len(self.frames) >= self.limit:
            self.room.clear()
            await self.room.wait()
        self.frames.append(frame)


def event(seq: int, user: str, channel: str = "pos") -> Event:
    row = {"id": seq, "user_id": user}
    return Event(
        seq=seq, channel=channel, event="e", operation="INSERT", table="public.t",
        data=row, old=None, timestamp="t", user_id=user, view=row,
    )  # fmt: skip


class CountingFilter(Filter):
    calls = 0

    def matches(self, row: Mapping[str, Any] | None) -> bool:
        CountingFilter.calls += 1
        return super().matches(row)


def live(hub: Hub, flt: Filter, outlet: ListOutlet, channel: str = "pos") -> Subscription:
    sub = hub.subscribe(channel, flt, outlet, prefix_for=subscription_prefix)
    sub.state = SubscriptionState.LIVE
    return sub


def test_equality_filters_are_found_by_lookup_not_by_scanning() -> None:
    hub = Hub()
    hub.add_channel("pos", owner_column="user_id")
    outlets = {}
    for i in range(1000):
        outlets[i] = ListOutlet()
        conditions = parse_filter({"user_id": f"u{i}"}).conditions
        live(hub, CountingFilter(conditions), outlets[i])
    CountingFilter.calls = 0
    hub.publish(1, [event(1, "u7")])
    assert CountingFilter.calls == 1  # only u7's subscription was even tested
    assert len(outlets[7].frames) == 1
    assert sum(len(o.frames) for o in outlets.values()) == 1


def test_is_null_and_like_literals_are_found_by_lookup_too() -> None:
    hub = Hub()
    hub.add_channel("pos", columns={"id": "int8", "user_id": "text"})
    nulls, exact, pattern = ListOutlet(), ListOutlet(), ListOutlet()
    specs = {"user_id=is.null": nulls, "user_id=like.u\\_7": exact, "user_id=like.u_*": pattern}
    filters = {}
    for spec, outlet in specs.items():
        filters[spec] = CountingFilter(parse_filter(spec, {"user_id": "text"}).conditions)
        live(hub, filters[spec], outlet)
    others = [ListOutlet() for _ in range(100)]
    for i, outlet in enumerate(others):
        live(hub, CountingFilter(parse_filter({"user_id": f"x{i}"}).conditions), outlet)
    CountingFilter.calls = 0
    null_row = {"id": 1, "user_id": None}
    hub.publish(1, [Event(
        seq=1, channel="pos", event="e", operation="INSERT", table="public.t",
        data=null_row, old=None, timestamp="t", user_id=None, view=null_row,
    )])  # fmt: skip
    hub.publish(2, [event(2, "u_7")])
    hub.publish(3, [event(3, "uu7")])
    # The is.null and like-literal subscriptions were looked up, the wildcard
    # pattern tested on each event: 1 + 1 + 3, none of the 100 others.
    assert CountingFilter.calls == 5
    assert [len(nulls.frames), len(exact.frames), len(pattern.frames)] == [1, 1, 2]
    assert all(not o.frames for o in others)


def test_each_event_is_encoded_once_for_all_receivers() -> None:
    hub = Hub()
    hub.add_channel("pos")
    outlets = [ListOutlet() for _ in range(50)]
    subs = [live(hub, Filter(), o) for o in outlets]
    shared = event(1, "u1")
    hub.publish(1, [shared])
    body = shared.body
    for sub, outlet in zip(subs, outlets, strict=True):
        assert outlet.frames == [(subscription_prefix(sub.id), body)]
        # Not an equal copy: the very same string object, shared.
        assert outlet.frames[0][1] is body


def test_unknown_channel_is_refused() -> None:
    with pytest.raises(UnknownChannel):
        Hub().subscribe("missing", Filter(), ListOutlet())


def test_unsubscribe_removes_from_every_index_key() -> None:
    hub = Hub()
    channel = hub.add_channel("pos")
    outlet = ListOutlet()
    sub = live(hub, parse_filter({"user_id": ["u1", "u2"]}), outlet)
    assert channel.count == 1
    hub.unsubscribe(sub)
    assert channel.count == 0
    assert channel.indexed == {}
    hub.publish(1, [event(1, "u1")])
    assert outlet.frames == []


async def test_catch_up_reads_memory_then_db_and_goes_live_without_a_gap() -> None:
    log: dict[int, Event] = {}

    def publish() -> None:
        seq = hub.head + 1
        log[seq] = event(seq, "u1")
        hub.publish(seq, [log[seq]])

    reads: list[tuple[int, int]] = []

    async def history(after: int, upto: int, channel: str) -> AsyncIterator[list[Event]]:
        await asyncio.sleep(0)
        reads.append((after, upto))
        if len(reads) == 1:
            publish()  # a new event arrives while the database is read
        yield [log[s] for s in range(after + 1, upto + 1)]

    async def earliest() -> int:
        return 1

    hub = Hub(window=3, history=history, earliest_seq=earliest)
    hub.add_channel("pos")
    for _ in range(9):
        publish()
    # The window holds 7, 8, 9: the rest must come from "the database".
    outlet = ListOutlet()
    sub = hub.subscribe("pos", Filter(), outlet, since=0, render=lambda e, _p: (str(e.seq),))
    await hub.catch_up(sub)
    assert sub.state is SubscriptionState.LIVE
    publish()
    assert [int(f[0]) for f in outlet.frames] == list(range(1, hub.head + 1))
    assert hub.head == 11
    # The window moved during the first read, so the gap it left was read too.
    assert reads == [(0, 6), (6, 7)]


async def test_the_window_keeps_to_its_byte_bound_and_resume_reads_the_evicted_from_the_log() -> (
    None
):
    log: dict[int, Event] = {}

    async def history(after: int, upto: int, channel: str) -> AsyncIterator[list[Event]]:
        yield [log[s] for s in range(after + 1, upto + 1)]

    async def earliest() -> int:
        return 1

    hub = Hub(window=1000, window_bytes=10_000, history=history, earliest_seq=earliest)
    hub.add_channel("pos")
    sizes = [300, 2_000, 50, 4_000]
    for seq in range(1, 101):
        log[seq] = event(seq, "u1")
        entry = LogEntry.of(seq, [log[seq]])
        entry.size = sizes[seq % len(sizes)]
        hub.publish(seq, entry)
        assert hub.window_bytes == sum(e.size for e in hub.window)
        assert hub.window_bytes <= 10_000
    # Oldest first: what is left is the newest run of entries, ending at the head.
    kept = [e.seq for e in hub.window]
    assert kept == list(range(kept[0], 101))
    assert 1 < kept[0] < 100
    # A client from before the window gets everything, in order, from the log then memory.
    outlet = ListOutlet()
    sub = hub.subscribe("pos", Filter(), outlet, since=0, render=lambda e, _p: (str(e.seq),))
    await hub.catch_up(sub)
    assert [int(f[0]) for f in outlet.frames] == list(range(1, 101))
    # One entry over the bound on its own stays (the newest always does).
    big = LogEntry.of(101, [event(101, "u1")])
    big.size = 50_000
    hub.publish(101, big)
    assert [e.seq for e in hub.window] == [101]
    assert hub.window_bytes == 50_000


async def test_full_outlet_switches_to_catch_up_and_resumes_in_order() -> None:
    hub = Hub(window=100)
    hub.add_channel("pos")
    outlet = ListOutlet(limit=3)
    lagged: list[Subscription] = []
    sub = hub.subscribe(
        "pos", Filter(), outlet, render=lambda e, _p: (str(e.seq),), on_lag=lagged.append
    )
    await hub.catch_up(sub)
    for seq in range(1, 11):
        hub.publish(seq, [event(seq, "u1")])
    assert lagged == [sub]
    assert sub.state is SubscriptionState.CATCHING_UP
    assert outlet.frames == [("1",), ("2",), ("3",)]

    async def drain() -> None:
        while sub.state is not SubscriptionState.LIVE:
            outlet.frames, taken = [], outlet.frames
            received.extend(taken)
            outlet.room.set()
            await asyncio.sleep(0)

    received: list[Frame] = []
    await asyncio.gather(hub.catch_up(sub), drain())
    received.extend(outlet.frames)
    assert [int(f[0]) for f in received] == list(range(1, 11))


async def test_resync_when_since_is_older_than_the_log() -> None:
    async def earliest() -> int:
        return 50

    hub = Hub(head=60, window=5, earliest_seq=earliest)
    hub.add_channel("pos")
    outlet = ListOutlet()
    asked: list[int] = []
    sub = hub.subscribe("pos", Filter(), outlet, since=10)
    await hub.catch_up(sub, on_resync=asked.append)
    assert asked == [50]
    assert sub.state is SubscriptionState.LIVE
    assert sub.last_seq == 60
    assert hub.stats.resyncs == 1
