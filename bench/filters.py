"""`python -m bench.filters`: what each filter operator costs the hub's fan-out.

In process, no database: one channel with SUBS subscriptions, all with the
same operator and a different value each (`user_id=eq.u17`,
`user_id=ilike.*u17*`, ...), then EVENTS row changes published through
`Hub.publish`. Prints, per operator, events routed per second and how many
subscriptions were tested per event: an indexed operator tests only the
subscriptions whose key the row has, an unindexed one tests them all.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from realtime_bridge.events import Event, Frame, subscription_prefix
from realtime_bridge.filters import Filter, parse_filter
from realtime_bridge.hub import Hub, SubscriptionState

# Operator → the filter of subscription i (the rows' user_id is "u<k>", note NULL or not).
SPECS = {
    "eq": "user_id=eq.u{i}",
    "like (no wildcard)": "user_id=like.u{i}",
    "is.null": "note=is.null,user_id=eq.u{i}",
    "like u{i}*": "user_id=like.u{i}*",
    "ilike *U{i}": "user_id=ilike.*U{i}",
    "not.eq": "user_id=not.eq.u{i}",
    "not.in": "user_id=not.in.(u{i},x)",
    "gt": "user_id=gt.u{i}",
}
TYPES = {"id": "int8", "user_id": "text", "note": "text"}


class Counting(Filter):
    tests = 0

    def matches(self, row: Any) -> bool:
        Counting.tests += 1
        return super().matches(row)


class Sink:
    closed = False
    frames = 0

    def offer(self, frame: Frame) -> bool:
        Sink.frames += 1
        return True

    async def put(self, frame: Frame) -> None:
        Sink.frames += 1


@dataclass
class Figure:
    operator: str
    events_per_s: float
    tested_per_event: float
    delivered_per_event: float


def measure(operator: str, subs: int, events: int) -> Figure:
    hub = Hub(window=1000)
    hub.add_channel("t", columns=TYPES)
    sink = Sink()
    for i in range(subs):
        flt = parse_filter(SPECS[operator].format(i=i), TYPES)
        sub = hub.subscribe("t", Counting(flt.conditions), sink, prefix_for=subscription_prefix)
        sub.state = SubscriptionState.LIVE
    batch = []
    for seq in range(1, events + 1):
        row = {"id": seq, "user_id": f"u{seq % subs}", "note": None if seq % 2 else "n"}
        batch.append(
            Event(
                seq=seq,
                channel="t",
                event="e",
                operation="INSERT",
                table="public.t",
                data=row,
                old=None,
                timestamp="t",
                user_id=None,
                view=row,
            )
        )
    Counting.tests = 0
    Sink.frames = 0
    started = time.perf_counter()
    for event in batch:
        hub.publish(event.seq, [event])
    elapsed = time.perf_counter() - started
    return Figure(operator, events / elapsed, Counting.tests / events, Sink.frames / events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    print(f"{args.subs} subscriptions on one channel, {args.events} INSERTs")
    print(f"{'operator':<20} {'events/s':>10} {'tested/event':>13} {'sent/event':>11}")
    for operator in SPECS:
        figure = measure(operator, args.subs, args.events)
        print(
            f"{figure.operator:<20} {figure.events_per_s:>10,.0f} "
            f"{figure.tested_per_event:>13,.1f} {figure.delivered_per_event:>11,.1f}"
        )


if __name__ == "__main__":
    main()
