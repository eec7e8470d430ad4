"""What the sources share: the reconnect backoff."""

from __future__ import annotations

from realtime_bridge.sources.base import Backoff


def test_backoff_doubles_to_its_cap_and_starts_over_once_reset() -> None:
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()  # a session was established
    assert backoff.next() == 0.1
