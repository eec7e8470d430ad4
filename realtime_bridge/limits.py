"""Per-client limits: connections per IP and per user, message rate.

Each limit is a setting, answers with its own error code, and is counted
in `/metrics` through the errors-by-code counter.

A connection counts once for its client address and once for every user it
acts for: the user of the handshake's token and, after that, the user of any
token it subscribes or joins with or switches to (`Seat`). So a user's
budget holds however the token arrives, and moves with the identity.
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


class TooManyConnections(ClientError):
    code = "too_many_connections"


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
        return None if user is None else self.user_full(user)

    def seat(self, ip: str) -> Seat:
        """A place for one connection from `ip`, counted once it is `occupy`-ed."""
        return Seat(self, ip)

    def user_full(self, user: str) -> str | None:
        """None when `user` may hold one more connection, else the reason it may not."""
        if self.by_user[user] >= self.per_user:
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
            self._release_user(user)

    def _release_user(self, user: str) -> None:
        self.by_user[user] -= 1
        if self.by_user[user] <= 0:
            del self.by_user[user]


class Seat:
    """One connection's place in the counts: its address once, each user it acts for once.

    `hold` and `release` are reference-counted per connection (a Supabase
    socket can join several channels with the same user's token and counts
    once for that user); `close` gives everything back, and is idempotent.
    Before `occupy` and after `close` a seat counts nothing.
    """

    def __init__(self, limits: ConnectionLimits, ip: str) -> None:
        self._limits = limits
        self.ip = ip
        self.users: Counter[str] = Counter()
        self.open = False

    def occupy(self, user: str | None) -> None:
        """Count the connection for its address and `user`, or raise `TooManyConnections`.

        Checked and counted with no await in between, so concurrent handshakes
        cannot overshoot a limit.
        """
        reason = self._limits.admit(self.ip, user)
        if reason is not None:
            raise TooManyConnections(reason)
        self._limits.by_ip[self.ip] += 1
        self.open = True
        self.hold(user)

    def hold(self, user: str | None) -> None:
        """Also act for `user`; `TooManyConnections` when that user is at its limit."""
        if user is None or not self.open:
            return
        if self.users[user] == 0:
            reason = self._limits.user_full(user)
            if reason is not None:
                raise TooManyConnections(reason)
            self._limits.by_user[user] += 1
        self.users[user] += 1

    def release(self, user: str | None) -> None:
        if user is None or self.users[user] <= 0:
            return
        self.users[user] -= 1
        if self.users[user] == 0:
            del self.users[user]
            self._limits._release_user(user)

    def switch(self, old: str | None, new: str | None) -> None:
        """Move one hold from `old` to `new`; on `TooManyConnections` nothing changes."""
        if old == new:
            return
        self.hold(new)
        self.release(old)

    def close(self) -> None:
        if not self.open:
            return
        self.open = False
        for user in list(self.users):
            self._limits._release_user(user)
        self.users.clear()
        self._limits.disconnected(self.ip, None)


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
