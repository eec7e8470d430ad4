"""Sources produce the ordered stream of `Change` records the bridge routes."""

from realtime_bridge.sources.outbox import OutboxSource, SourceState

__all__ = ["OutboxSource", "SourceState"]
