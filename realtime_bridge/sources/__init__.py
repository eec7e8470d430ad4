"""Sources produce the ordered stream of `Change` records the bridge routes."""

from realtime_bridge.sources.base import ModeStatus, Source, SourceState, SourceStatus
from realtime_bridge.sources.outbox import OutboxSource

__all__ = ["ModeStatus", "OutboxSource", "Source", "SourceState", "SourceStatus"]
