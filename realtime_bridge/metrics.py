"""Prometheus text exposition of the bridge's counters and gauges."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from realtime_bridge.bridge import Bridge


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(bridge: Bridge) -> str:
    stats = bridge.stats()
    healthy, health = bridge.health()
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{labels} {value}")

    metric(
        "realtime_bridge_up",
        "gauge",
        "1 when the source is connected and no task failed.",
        [("", 1 if healthy else 0)],
    )
    metric(
        "realtime_bridge_mode",
        "gauge",
        "1 for the source and mode (realtime|polling) the bridge runs in.",
        [(f'{{source="{_label(health["source"])}",mode="{_label(health["mode"])}"}}', 1)],
    )
    metric("realtime_bridge_head_seq", "gauge", "Highest seq routed.", [("", stats["head_seq"])])
    metric(
        "realtime_bridge_connections",
        "gauge",
        "Open client connections.",
        [("", stats["connections"])],
    )
    metric(
        "realtime_bridge_connections_total",
        "counter",
        "Client connections accepted.",
        [("", stats["connections_total"])],
    )
    metric(
        "realtime_bridge_subscriptions",
        "gauge",
        "Subscriptions per channel.",
        [(f'{{channel="{_label(c)}"}}', n) for c, n in sorted(stats["subscriptions"].items())],
    )
    metric(
        "realtime_bridge_events_in_total",
        "counter",
        "Changes routed by the hub.",
        [("", stats["events_in"])],
    )
    metric(
        "realtime_bridge_events_out_total",
        "counter",
        "Frames queued to clients live.",
        [("", stats["events_out"])],
    )
    metric(
        "realtime_bridge_events_replayed_total",
        "counter",
        "Frames sent by resume.",
        [("", stats["events_replayed"])],
    )
    metric(
        "realtime_bridge_slow_consumers_total",
        "counter",
        "Clients cut off for falling behind.",
        [("", stats["dropped"]["slow_consumers"])],
    )
    metric(
        "realtime_bridge_mode_switches_total",
        "counter",
        "Switches between realtime and polling mode.",
        [("", health.get("mode_switches", 0))],
    )
    metric(
        "realtime_bridge_errors_total",
        "counter",
        "Error frames and responses by code.",
        [(f'{{code="{_label(c)}"}}', n) for c, n in sorted(stats["errors_sent"].items())],
    )
    metric(
        "realtime_bridge_plugin_errors_total",
        "counter",
        "Rows a plugin failed to map.",
        [(f'{{plugin="{_label(p)}"}}', n) for p, n in sorted(stats["plugin_errors"].items())],
    )
    source = health.get("source_status") or {}
    metric(
        "realtime_bridge_source_reconnects_total",
        "counter",
        "Times the source reconnected.",
        [("", source.get("reconnects", 0))],
    )
    relay = stats.get("relay")
    if relay is not None:
        metric(
            "realtime_bridge_relay_messages_total",
            "counter",
            "Events relayed to Supabase Realtime, by outcome.",
            [
                (f'{{result="{result}"}}', relay[result])
                for result in ("sent", "failed", "dropped", "skipped_inactive")
            ],
        )
        metric(
            "realtime_bridge_relay_retries_total",
            "counter",
            "Relay requests retried after 429, 5xx or a network error.",
            [("", relay["retries"])],
        )
        metric(
            "realtime_bridge_relay_queued",
            "gauge",
            "Events waiting to be relayed.",
            [("", relay["queued"])],
        )
    lag = health.get("lag_ms")
    if lag is not None:
        metric(
            "realtime_bridge_lag_ms",
            "gauge",
            "Commit-to-route delay of the last change.",
            [("", lag)],
        )
    return "\n".join(lines) + "\n"
