"""A Postgres snapshot, as a token that a snapshot's reader subscribes with.

A snapshot's rows are read in one transaction; Postgres's snapshot of that
transaction (`pg_current_snapshot()`, text form ``xmin:xmax:xip,...``) says
exactly which transactions' writes the rows show. Given it back with `since`,
a subscription skips the changes after `since` whose transaction the rows
already show, so every change reaches the client exactly once: in the rows or
as an event, never both and never neither.

Transactions are named by their 32-bit id here (what the WAL's BEGIN carries
and what the log stores); the snapshot's ids are 64-bit, so each 32-bit id is
widened to the 64-bit id nearest the snapshot's xmax.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from realtime_bridge.errors import BadMessage

_TOKEN = re.compile(r"(\d{1,20}):(\d{1,20}):((?:\d{1,20}(?:,\d{1,20})*)?)")
_WRAP = 1 << 32
_HALF = 1 << 31
#: A token names at most this many in-progress transactions (a busy server has tens).
MAX_IN_PROGRESS = 10_000
MAX_TOKEN_LENGTH = 21 * (MAX_IN_PROGRESS + 2)


@dataclass(frozen=True, slots=True)
class PgSnapshot:
    """Which transactions one snapshot saw: all below `xmin`, none from `xmax`, and
    between them every one not in `in_progress`."""

    xmin: int
    xmax: int
    in_progress: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> PgSnapshot:
        """The snapshot a token names; `BadMessage` when it is none this bridge gives out."""
        match = _TOKEN.fullmatch(text) if len(text) <= MAX_TOKEN_LENGTH else None
        if match is None:
            raise BadMessage(
                "snapshot_token is not a snapshot token (take it from a snapshot's "
                "'snapshot_token', unchanged)"
            )
        xmin, xmax = int(match[1]), int(match[2])
        listed = [int(x) for x in match[3].split(",")] if match[3] else []
        running = frozenset(listed)
        if (
            listed != sorted(listed)
            or xmin > xmax
            or xmax >= 1 << 63
            or len(running) > MAX_IN_PROGRESS
            or any(not xmin <= x < xmax for x in running)
        ):
            raise BadMessage("snapshot_token is not a snapshot token Postgres could have given")
        return cls(xmin, xmax, running)

    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in sorted(self.in_progress))}"

    def saw(self, xid: int | None) -> bool:
        """Whether the snapshot shows the writes of committed transaction `xid` (32-bit)."""
        if xid is None:
            return False  # logged before transaction ids were kept: never skipped
        # The 64-bit id nearest xmax with these low 32 bits (ids in use span far less).
        full = self.xmax + (xid - self.xmax + _HALF) % _WRAP - _HALF
        if full >= self.xmax:
            return False  # began after the snapshot
        return full not in self.in_progress
