"""Per-client limits: connections per IP and per user, message rate.

Each limit is a setting, answers with its own error code, and is counted
in `/metrics` through the errors-by-code counter.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

from realtime_bridge.errors import ClientError
from realtime_bridge.settings import Settings


class RateLimited(ClientError):
    code = "rate_limited"


class TooManySubscriptions(ClientError):
    code = "too_many_subscriptions"


class ConnectionLimits:
    """Counts open connections by client IP and by user."""

    def __init__(self, settings: Settings) -> None:
        self.per_ip = settings.max_connections_per_ip
        self.per_user = settings.max_connections_per_user
        self.by_ip: Counter[str] = Counter()
        self.by_user: Counter[str] = Counter()

    def admit(self, ip: str, user: str | None) -> str | None:
        """None when a new connection is allowed, else the reason it is not."""
        if self.by_ip[ip] >= self.per_ip:
            return f"at most {self.per_ip} connections per client address"
        if user is not None and self.by_user[user] >= self.per_user:
            return f"at most {self.per_user} connections per user"
        return None

    def connected(self, ip: str, user: str | None) -> None:
        self.by_ip[ip] += 1
        if user is not None:
            self.by_user[user] += 1

    @contextlib.contextmanager
    def held(self, ip: str, user: str | None) -> Iterator[None]:
        """Count one connection (or HTTP request in flight) for as long as the block runs."""
        self.connected(ip, user)
        try:
            yield
        finally:
            self.disconnected(ip, user)

    def disconnected(self, ip: str, user: str | None) -> None:
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]
        if user is not None:
            self.by_user[user] -= 1
            if self.by_user[user] <= 0:
                del self.by_user[user]


class RateLimiter:
    """A token bucket: `rate` messages per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            raise RateLimited(f"more than {self.rate:g} messages per second; this one was dropped")
        self.tokens -= 1
