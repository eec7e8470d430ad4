"""`/metrics`: the bridge's counters, gauges and histograms for Prometheus.

Each bridge has its own `CollectorRegistry` (several bridges in one process,
as in the tests, never share or collide). Counters and gauges are read from
`Bridge.stats()` / `Bridge.health()` when scraped, so the hot path keeps its
plain integer counters. Histograms are `Buckets`: a list of counts bumped
with one `bisect` (no lock: everything observing runs on the event loop),
cheap enough to observe per event and per writer wake-up, and exported as
ordinary Prometheus histograms.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from realtime_bridge.bridge import Bridge

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, from a fast local hop to a client stuck behind a full pass of the collector.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Frames waiting in one connection's outbound queue (SEND_QUEUE_MAX caps it).
DEPTH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Buckets:
    """One histogram series: counts per upper bound, their sum, no lock."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        total = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return out


class LabelledBuckets:
    """A histogram with one label: a `Buckets` per label value, made on first use."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.series: dict[str, Buckets] = {}

    def of(self, label: str) -> Buckets:
        series = self.series.get(label)
        if series is None:
            series = self.series[label] = Buckets(self.bounds)
        return series


class Histograms:
    """The histograms one bridge observes into."""

    def __init__(self) -> None:
        # Commit → frames queued to every receiver's outbound queue, per channel, per event.
        self.delivery = LabelledBuckets(LATENCY_BUCKETS)
        # Commit → the source handed the change on, per batch (its last change).
        self.source_lag = Buckets(LATENCY_BUCKETS)
        # How late the loop monitor woke: the longest anything blocked the loop.
        self.loop_stall = Buckets(PAUSE_BUCKETS)
        # Garbage-collector passes by generation ("0", "1", "2").
        self.gc_pause = LabelledBuckets(PAUSE_BUCKETS)
        # Frames queued on one connection each time its writer wakes up.
        self.queue_depth = Buckets(DEPTH_BUCKETS)


def _histogram(
    name: str, help_text: str, series: Iterable[tuple[tuple[str, ...], Buckets]], labels: list[str]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=labels)
    for values, buckets in series:
        family.add_metric(list(values), buckets.cumulative(), buckets.sum)
    return family


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _counter(name: str, help_text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_text, value=value)


class BridgeCollector(Collector):
    """Reads one bridge's state at scrape time."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Metric]:
        bridge = self.bridge
        stats = bridge.stats()
        healthy, health = bridge.health()
        yield _gauge(
            "realtime_bridge_up",
            "1 when the source is connected and no task failed.",
            1 if healthy else 0,
        )
        mode = GaugeMetricFamily(
            "realtime_bridge_mode",
            "1 for the source and mode (realtime|polling) the bridge runs in.",
            labels=["source", "mode"],
        )
        mode.add_metric([health["source"], health["mode"]], 1)
        yield mode
        yield _gauge("realtime_bridge_head_seq", "Highest seq routed.", stats["head_seq"])
        yield _gauge(
            "realtime_bridge_connections", "Open client connections.", stats["connections"]
        )
        yield _counter(
            "realtime_bridge_connections_total",
            "Client connections accepted.",
            stats["connections_total"],
        )
        subscriptions = GaugeMetricFamily(
            "realtime_bridge_subscriptions", "Subscriptions per channel.", labels=["channel"]
        )
        for channel, count in sorted(stats["subscriptions"].items()):
            subscriptions.add_metric([channel], count)
        yield subscriptions
        yield _counter(
            "realtime_bridge_events_in_total", "Changes routed by the hub.", stats["events_in"]
        )
        yield _counter(
            "realtime_bridge_events_out_total",
            "Frames queued to clients live.",
            stats["events_out"],
        )
        yield _counter(
            "realtime_bridge_events_replayed_total",
            "Frames sent by resume.",
            stats["events_replayed"],
        )
        yield _counter(
            "realtime_bridge_slow_consumers_total",
            "Clients cut off for falling behind.",
            stats["dropped"]["slow_consumers"],
        )
        yield _counter(
            "realtime_bridge_mode_switches_total",
            "Switches between realtime and polling mode.",
            health.get("mode_switches", 0),
        )
        errors = CounterMetricFamily(
            "realtime_bridge_errors_total", "Error frames and responses by code.", labels=["code"]
        )
        for code, count in sorted(stats["errors_sent"].items()):
            errors.add_metric([code], count)
        yield errors
        plugin_errors = CounterMetricFamily(
            "realtime_bridge_plugin_errors_total", "Rows a plugin failed to map.", labels=["plugin"]
        )
        for plugin, count in sorted(stats["plugin_errors"].items()):
            plugin_errors.add_metric([plugin], count)
        yield plugin_errors
        source = health.get("source_status") or {}
        yield _counter(
            "realtime_bridge_source_reconnects_total",
            "Times the source reconnected.",
            source.get("reconnects", 0),
        )
        yield from self._relay(stats.get("relay"))
        yield from self._wal(health.get("wal"))
        lag = health.get("lag_ms")
        if lag is not None:
            yield _gauge("realtime_bridge_lag_ms", "Commit-to-route delay of the last change.", lag)
        yield from self._pauses()
        yield from self._histograms()

    def _wal(self, wal: dict[str, Any] | None) -> Iterator[Metric]:
        if wal is None:
            return  # not the WAL source
        if wal.get("slot_lag_bytes") is not None:
            yield _gauge(
                "realtime_bridge_wal_slot_lag_bytes",
                "WAL the replication slot holds back on the database's disk.",
                wal["slot_lag_bytes"],
            )
        yield _gauge(
            "realtime_bridge_wal_slot_lag_seconds",
            "Age of the oldest change read from the slot and not yet acknowledged.",
            wal["slot_lag_seconds"],
        )
        yield _gauge(
            "realtime_bridge_wal_unlogged_changes",
            "Changes handed on by the leader and not yet in the log.",
            wal["unlogged"],
        )
        yield _counter(
            "realtime_bridge_wal_statements_total",
            "Statements the WAL leader sent (log batches, type lookups).",
            wal["statements"],
        )
        yield _counter(
            "realtime_bridge_wal_slot_recreated_total",
            "Times the slot was lost and recreated (clients were told to resync).",
            wal["slot_recreated"],
        )

    def _relay(self, relay: dict[str, int] | None) -> Iterator[Metric]:
        if relay is None:
            return
        messages = CounterMetricFamily(
            "realtime_bridge_relay_messages_total",
            "Events relayed to Supabase Realtime, by outcome.",
            labels=["result"],
        )
        for result in ("sent", "failed", "dropped", "skipped_inactive"):
            messages.add_metric([result], relay[result])
        yield messages
        yield _counter(
            "realtime_bridge_relay_retries_total",
            "Relay requests retried after 429, 5xx or a network error.",
            relay["retries"],
        )
        yield _gauge(
            "realtime_bridge_relay_queued", "Events waiting to be relayed.", relay["queued"]
        )

    def _pauses(self) -> Iterator[Metric]:
        bridge = self.bridge
        yield _gauge(
            "realtime_bridge_loop_stall_max_seconds",
            "Longest event-loop stall seen since start (how late the loop monitor woke).",
            bridge.loop_monitor.longest,
        )
        collections = CounterMetricFamily(
            "realtime_bridge_gc_collections_total",
            "Garbage-collector passes since start, by generation.",
            labels=["generation"],
        )
        longest = GaugeMetricFamily(
            "realtime_bridge_gc_pause_max_seconds",
            "Longest garbage-collector pass since start, by generation.",
            labels=["generation"],
        )
        timer = bridge.collector_timer
        for generation in range(3):
            collections.add_metric([str(generation)], timer.counts[generation])
            longest.add_metric([str(generation)], timer.longest[generation])
        yield collections
        yield longest

    def _histograms(self) -> Iterator[Metric]:
        h = self.bridge.histograms
        yield _histogram(
            "realtime_bridge_delivery_latency_seconds",
            "Commit to frames queued for every receiver, per channel (one sample per event).",
            [((c,), b) for c, b in sorted(h.delivery.series.items())], ["channel"],
        )  # fmt: skip
        yield _histogram(
            "realtime_bridge_source_lag_seconds",
            "Commit to the source handing the change on (one sample per batch).",
            [((), h.source_lag)], [],
        )  # fmt: skip
        yield _histogram(
            "realtime_bridge_loop_stall_seconds",
            "How late the event loop ran a timer (sampled every LOOP_MONITOR_INTERVAL).",
            [((), h.loop_stall)], [],
        )  # fmt: skip
        yield _histogram(
            "realtime_bridge_gc_pause_seconds",
            "Garbage-collector pass durations, by generation.",
            [((g,), b) for g, b in sorted(h.gc_pause.series.items())], ["generation"],
        )  # fmt: skip
        yield _histogram(
            "realtime_bridge_outbound_queue_depth",
            "Frames waiting in a connection's outbound queue when its writer wakes up.",
            [((), h.queue_depth)], [],
        )  # fmt: skip


def metrics_registry(bridge: Bridge) -> CollectorRegistry:
    """A registry of this bridge's own (not the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BridgeCollector(bridge))
    return registry


def render_metrics(bridge: Bridge) -> str:
    return generate_latest(bridge.metrics_registry).decode()
