"""What every source shares: its state, its mode, and the `Source` shape the bridge runs.

A source turns some view of the database into numbered `Change` records for
one `deliver` callback. The bridge runs exactly one:

* `OutboxSource`: capture triggers and the outbox; seqs are durable and
  shared by every instance (resume and replay read the log).
* `SupabaseSource`: hosted Supabase Realtime, falling back to PostgREST
  polling while it is down; seqs are this process's own.
* `PollSource`: reads the tables over SQL, for a database where the capture
  triggers cannot be installed; seqs are this process's own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from realtime_bridge.change import Change

logger = logging.getLogger(__name__)

Deliver = Callable[[list[Change]], None]
Mode = Literal["realtime", "polling"]


class SourceState(enum.Enum):
    STARTING = "starting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    STOPPED = "stopped"


@dataclass
class SourceStatus:
    state: SourceState = SourceState.STARTING
    role: str = "none"
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    reconnects: int = 0
    last_seq: int = 0
    last_lag_ms: float | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    def set(self, state: SourceState, error: str | None = None) -> None:
        """Be in `state` (`since` moves only when it changes); `error` becomes `last_error`."""
        if state is SourceState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        if state is not self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error

    async def wait_connected(self, timeout: float) -> bool:
        """True once the state is CONNECTED, False if `timeout` passes first."""
        return await wait_for(self._connected, timeout)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "role": self.role,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "last_seq": self.last_seq,
            "lag_ms": self.last_lag_ms,
        }


@dataclass
class ModeStatus:
    """realtime or polling, why, since when, and how often it switched."""

    mode: Mode = "realtime"
    reason: str = "starting"
    since: float = field(default_factory=time.time)
    switches: int = 0
    #: The underlying error, if any: shown only to the service key (it can
    #: name hosts, databases and roles).
    detail: str | None = None

    def switch(self, mode: Mode, reason: str, detail: str | None = None) -> None:
        """Be in `mode` for `reason`; a change of mode is counted and logged."""
        self.detail = detail
        if mode == self.mode:
            self.reason = reason
            return
        self.mode = mode
        self.reason = reason
        self.since = time.time()
        self.switches += 1
        logger.warning(
            "realtime-bridge mode switch: now %s (%s)",
            mode,
            f"{reason}: {detail}" if detail else reason,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "mode_reason": self.reason,
            "mode_since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "mode_switches": self.switches,
            "mode_detail": self.detail,
        }


@dataclass
class Backoff:
    """Delays between reconnect attempts: doubling from `first` up to `cap`.

    `reset()` belongs where a session is established, not where it ends: a
    session runs until it fails, so resetting on return never happens and
    every outage would wait longer than the one before.
    """

    first: float
    cap: float
    _next: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        """The delay to wait now; the one after doubles (up to `cap`)."""
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay


class Source(Protocol):
    """What the bridge needs from a source."""

    #: "outbox", "supabase" or "poll" (shown by /health).
    name: str
    #: True when seqs live in the outbox: replay beyond the hub's window,
    #: publishing and relaying need it.
    durable: bool
    status: SourceStatus
    mode: ModeStatus

    def start(self) -> asyncio.Task[None]: ...

    async def stop(self) -> None: ...

    async def wait_connected(self, timeout: float) -> bool: ...

    @property
    def healthy(self) -> bool:
        """Changes are flowing (by realtime, or by polling that succeeds)."""
        ...


async def wait_for(event: asyncio.Event, timeout: float) -> bool:
    """True once `event` is set, False if `timeout` passes first."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True
