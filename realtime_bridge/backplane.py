"""The Redis backplane: client broadcasts and presence across instances (REDIS_URL).

Database changes already cross instances through the outbox log (every
instance reads the same seqs). What never touches the database, the
Supabase protocol's client broadcasts and presence, lives in each process's
rooms (`phoenix_rooms`); with REDIS_URL set, this module carries it to the
other instances:

* One pub/sub channel, ``{prefix}:bus``, carries every message with its
  topic and the id of the instance that sent it (an instance skips its own:
  it delivered them locally already, `self: false` included).
* Presence: each instance keeps its own members in a hash,
  ``{prefix}:presence:{instance}`` (field: the presence's phx_ref), next to
  a liveness key, ``{prefix}:alive:{instance}``; both expire after
  BACKPLANE_TTL seconds unless refreshed (every third of it). Joins and
  leaves are published as diffs; every instance mirrors the others'
  members, so a joining client's `presence_state` holds the whole cluster.
  Applying a diff is idempotent (by phx_ref), which makes a resync (reload
  the hashes, diff against the mirror) safe at any time.
* An instance that dies stops refreshing its liveness key: within
  BACKPLANE_TTL plus one refresh interval the survivors see it gone and
  emit the leaves of its members themselves.
* Redis down: state ``degraded``, delivery stays within this instance,
  nothing is queued; the connection is retried with backoff and, once back,
  this instance rewrites its hash, reloads everyone else's and tells the
  others to reload its own (``resync``). Database changes are unaffected.

Messages from one instance are sent in order by one task over one
connection, so a diff never overtakes the hash update it describes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from realtime_bridge.sources.base import Backoff

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

logger = logging.getLogger(__name__)

# Outgoing messages waiting for Redis; beyond this they are dropped (and counted).
SEND_QUEUE_MAX = 10_000
JSON_ENCODING = 1

TopicKey = tuple[bool, str]  # (private, sub-topic), as `Rooms` keys its rooms


class BackplaneState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Presence:
    """One tracked presence of some instance."""

    private: bool
    sub_topic: str
    key: str
    meta: dict[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps([self.private, self.sub_topic, self.key, self.meta])

    @classmethod
    def decode(cls, raw: bytes | str) -> Presence:
        private, sub_topic, key, meta = orjson.loads(raw)
        return cls(bool(private), str(sub_topic), str(key), dict(meta))


class Sink(Protocol):
    """Where remote broadcasts and presence diffs are delivered (this process's rooms)."""

    def remote_broadcast(
        self,
        private: bool,
        sub_topic: str,
        event: str,
        raw: bytes,
        encoding: int,
        meta: dict[str, Any] | None,
    ) -> None: ...

    def remote_diff(
        self,
        private: bool,
        sub_topic: str,
        joins: dict[str, Any],
        leaves: dict[str, Any],
    ) -> None: ...


class Diffs:
    """Presence joins and leaves gathered per topic, then delivered in one diff each."""

    def __init__(self) -> None:
        self.topics: dict[TopicKey, tuple[dict[str, Any], dict[str, Any]]] = {}

    def add(self, presence: Presence, *, join: bool) -> None:
        joins, leaves = self.topics.setdefault((presence.private, presence.sub_topic), ({}, {}))
        side = joins if join else leaves
        side.setdefault(presence.key, {"metas": []})["metas"].append(presence.meta)

    def deliver(self, sink: Sink | None) -> None:
        if sink is None:
            return
        for (private, sub_topic), (joins, leaves) in self.topics.items():
            sink.remote_diff(private, sub_topic, joins, leaves)


class Backplane:
    """This instance's link to the others through Redis."""

    def __init__(self, url: str, *, ttl: float = 6.0, prefix: str = "realtime-bridge") -> None:
        self.url = url
        self.ttl = ttl
        self.interval = ttl / 3
        self.prefix = prefix
        self.instance = secrets.token_hex(6)
        self.channel = f"{prefix}:bus"
        self.sink: Sink | None = None
        self.state = BackplaneState.CONNECTING
        self.since = time.time()
        self.last_error: str | None = None
        self.reconnects = 0
        self.published = 0
        self.received = 0
        self.dropped = 0
        self.expired_instances = 0
        # This instance's presences, by phx_ref (the truth its hash is rewritten from).
        self.local: dict[str, Presence] = {}
        # The other instances' presences: by instance, then phx_ref; and by topic.
        self.remote: dict[str, dict[str, Presence]] = {}
        self._by_topic: dict[TopicKey, dict[str, Presence]] = {}
        self._out: asyncio.Queue[tuple[bytes, dict[str, bytes], list[str]]] = asyncio.Queue(
            SEND_QUEUE_MAX
        )
        self._task: asyncio.Task[None] | None = None
        # A session is open: messages queue for it (state may still be connecting).
        self._accepting = False
        self._redis: Redis | None = None

    # keys ------------------------------------------------------------------------

    def _alive_key(self, instance: str) -> str:
        return f"{self.prefix}:alive:{instance}"

    def _presence_key(self, instance: str) -> str:
        return f"{self.prefix}:presence:{instance}"

    # what the rooms call ---------------------------------------------------------

    def presences(self, private: bool, sub_topic: str) -> Iterable[Presence]:
        """The other instances' presences on one topic."""
        return self._by_topic.get((private, sub_topic), {}).values()

    def publish_broadcast(
        self,
        private: bool,
        sub_topic: str,
        event: str,
        raw: bytes,
        encoding: int,
        meta: dict[str, Any] | None,
    ) -> None:
        body = {
            "o": self.instance,
            "k": "b",
            "p": private,
            "t": sub_topic,
            "e": event,
            "n": encoding,
            "r": raw.decode() if encoding == JSON_ENCODING else base64.b64encode(raw).decode(),
            "m": meta,
        }
        self._send(orjson.dumps(body))

    def publish_presence(self, joins: list[tuple[str, Presence]], leaves: list[str]) -> None:
        """This instance's presences changed: record them, tell the others."""
        for ref in leaves:
            self.local.pop(ref, None)
        for ref, presence in joins:
            self.local[ref] = presence
        body = {
            "o": self.instance,
            "k": "d",
            "j": [[ref, p.private, p.sub_topic, p.key, p.meta] for ref, p in joins],
            "l": leaves,
        }
        self._send(orjson.dumps(body), {ref: p.encode() for ref, p in joins}, leaves)

    def _send(
        self, body: bytes, hset: dict[str, bytes] | None = None, hdel: list[str] | None = None
    ) -> None:
        if not self._accepting:
            # Degraded: this instance only (its hash is rewritten on reconnect).
            self.dropped += 1
            return
        try:
            self._out.put_nowait((body, hset or {}, hdel or []))
        except asyncio.QueueFull:
            self.dropped += 1

    # lifecycle -------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="backplane")
        return self._task

    async def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.state is not BackplaneState.CONNECTED:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        """Leave the cluster: the others drop this instance's presences at once."""
        was_connected = self.state is BackplaneState.CONNECTED
        redis = self._redis
        if was_connected and redis is not None:
            # Let queued messages (the leaves of closing sockets) go first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._out.join(), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if was_connected and redis is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    pipe = redis.pipeline(transaction=False)
                    pipe.delete(self._alive_key(self.instance), self._presence_key(self.instance))
                    pipe.publish(self.channel, orjson.dumps({"o": self.instance, "k": "x"}))
                    await pipe.execute()
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
        self._set(BackplaneState.STOPPED)

    def _set(self, state: BackplaneState, error: str | None = None) -> None:
        if state is not self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error

    async def _run(self) -> None:
        from redis.asyncio import Redis

        backoff = Backoff(0.2, 5.0)
        while True:
            redis: Redis = Redis.from_url(
                self.url, socket_connect_timeout=2, socket_timeout=max(self.interval, 1.0)
            )
            self._redis = redis
            try:
                await self._session(redis, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = _describe(exc)
                if self.state is not BackplaneState.DEGRADED:
                    logger.warning(
                        "backplane: Redis unavailable (%s); broadcasts and presence stay on "
                        "this instance until it is back",
                        error,
                    )
                self._set(BackplaneState.DEGRADED, error)
                self.reconnects += 1
            # Whatever was queued for the lost connection is gone (the hash is rewritten).
            while not self._out.empty():
                self._out.get_nowait()
                self._out.task_done()
                self.dropped += 1
            with contextlib.suppress(Exception):
                await redis.aclose()
            await asyncio.sleep(backoff.next())

    async def _session(self, redis: Redis, backoff: Backoff) -> None:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self._accepting = True
        try:
            await pubsub.subscribe(self.channel)
            await self._write_own(redis)
            await self._resync(redis)
            await redis.publish(self.channel, orjson.dumps({"o": self.instance, "k": "s"}))
            backoff.reset()
            if self.state is BackplaneState.DEGRADED:
                logger.info("backplane: Redis is back; broadcasts and presence cross instances")
            self._set(BackplaneState.CONNECTED)
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(redis, pubsub))
                group.create_task(self._write(redis))
                group.create_task(self._heartbeat(redis))
        finally:
            self._accepting = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _write_own(self, redis: Redis) -> None:
        """(Re)write this instance's hash from `local` and its liveness key."""
        mine = self._presence_key(self.instance)
        ttl_ms = int(self.ttl * 1000)
        pipe = redis.pipeline(transaction=True)
        pipe.delete(mine)
        if self.local:
            pipe.hset(mine, mapping={ref: p.encode() for ref, p in self.local.items()})
            pipe.pexpire(mine, ttl_ms)
        pipe.set(self._alive_key(self.instance), b"1", px=ttl_ms)
        await pipe.execute()

    # reading ---------------------------------------------------------------------

    async def _read(self, redis: Redis, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None or message.get("type") != "message":
                continue
            try:
                body = orjson.loads(message["data"])
                origin = body["o"]
                if origin == self.instance:
                    continue
                self.received += 1
                await self._apply(redis, origin, body)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                logger.warning("backplane: ignored a malformed message: %s", exc)

    async def _apply(self, redis: Redis, origin: str, body: dict[str, Any]) -> None:
        kind = body["k"]
        if kind == "b":
            if self.sink is not None:
                encoding = int(body["n"])
                text: str = body["r"]
                raw = text.encode() if encoding == JSON_ENCODING else base64.b64decode(text)
                self.sink.remote_broadcast(
                    bool(body["p"]), str(body["t"]), str(body["e"]), raw, encoding, body.get("m")
                )
        elif kind == "d":
            diffs = Diffs()
            theirs = self.remote.setdefault(origin, {})
            for ref in body["l"]:
                gone = theirs.pop(ref, None)
                if gone is not None:
                    self._unindex(ref, gone)
                    diffs.add(gone, join=False)
            for ref, private, sub_topic, key, meta in body["j"]:
                if ref not in theirs:
                    presence = Presence(bool(private), str(sub_topic), str(key), dict(meta))
                    theirs[ref] = presence
                    self._index(ref, presence)
                    diffs.add(presence, join=True)
            diffs.deliver(self.sink)
        elif kind == "s":
            await self._reload(redis, origin)
        elif kind == "x":
            self._drop(origin)

    async def _resync(self, redis: Redis) -> None:
        """Reload every live instance's presences and diff them against the mirror."""
        alive: set[str] = set()
        async for key in redis.scan_iter(match=self._alive_key("*"), count=500):
            instance = (key.decode() if isinstance(key, bytes) else str(key)).rsplit(":", 1)[-1]
            if instance != self.instance:
                alive.add(instance)
        for instance in list(self.remote):
            if instance not in alive:
                self._drop(instance)
        for instance in alive:
            await self._reload(redis, instance)

    async def _reload(self, redis: Redis, instance: str) -> None:
        """Replace the mirror of one instance with its hash, delivering the difference."""
        stored = await redis.hgetall(self._presence_key(instance))
        fresh = {
            (ref.decode() if isinstance(ref, bytes) else str(ref)): Presence.decode(raw)
            for ref, raw in stored.items()
        }
        theirs = self.remote.setdefault(instance, {})
        diffs = Diffs()
        for ref in [ref for ref in theirs if ref not in fresh]:
            gone = theirs.pop(ref)
            self._unindex(ref, gone)
            diffs.add(gone, join=False)
        for ref, presence in fresh.items():
            if ref not in theirs:
                theirs[ref] = presence
                self._index(ref, presence)
                diffs.add(presence, join=True)
        if not theirs:
            del self.remote[instance]
        diffs.deliver(self.sink)

    def _drop(self, instance: str) -> int:
        """An instance left (or expired): its members leave."""
        theirs = self.remote.pop(instance, {})
        diffs = Diffs()
        for ref, presence in theirs.items():
            self._unindex(ref, presence)
            diffs.add(presence, join=False)
        diffs.deliver(self.sink)
        return len(theirs)

    def _index(self, ref: str, presence: Presence) -> None:
        self._by_topic.setdefault((presence.private, presence.sub_topic), {})[ref] = presence

    def _unindex(self, ref: str, presence: Presence) -> None:
        key = (presence.private, presence.sub_topic)
        topic = self._by_topic.get(key)
        if topic is not None:
            topic.pop(ref, None)
            if not topic:
                del self._by_topic[key]

    # writing ---------------------------------------------------------------------

    async def _write(self, redis: Redis) -> None:
        mine = self._presence_key(self.instance)
        ttl_ms = int(self.ttl * 1000)
        while True:
            body, hset, hdel = await self._out.get()
            pipe = redis.pipeline(transaction=False)
            if hdel:
                pipe.hdel(mine, *hdel)
            if hset:
                pipe.hset(mine, mapping=hset)  # type: ignore[arg-type]
                pipe.pexpire(mine, ttl_ms)
            pipe.publish(self.channel, body)
            try:
                await pipe.execute()
            finally:
                self._out.task_done()
            self.published += 1

    async def _heartbeat(self, redis: Redis) -> None:
        ttl_ms = int(self.ttl * 1000)
        while True:
            await asyncio.sleep(self.interval)
            pipe = redis.pipeline(transaction=False)
            pipe.set(self._alive_key(self.instance), b"1", px=ttl_ms, get=True)
            pipe.pexpire(self._presence_key(self.instance), ttl_ms)
            others = list(self.remote)
            for instance in others:
                pipe.exists(self._alive_key(instance))
            previous, _, *exists = await pipe.execute()
            if previous is None:
                # Our key had expired (a long stall): the others dropped our members.
                logger.warning("backplane: this instance's liveness key had expired; resyncing")
                await self._write_own(redis)
                await redis.publish(self.channel, orjson.dumps({"o": self.instance, "k": "s"}))
            for instance, alive in zip(others, exists, strict=True):
                if not alive:
                    left = self._drop(instance)
                    self.expired_instances += 1
                    logger.warning(
                        "backplane: instance %s stopped refreshing its presence; "
                        "%d presence(s) left",
                        instance,
                        left,
                    )

    # reporting -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "instance": self.instance,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "ttl_s": self.ttl,
            "published": self.published,
            "received": self.received,
            "dropped": self.dropped,
            "peers_with_presence": len(self.remote),
            "local_presences": len(self.local),
            "remote_presences": sum(len(p) for p in self.remote.values()),
            "expired_instances": self.expired_instances,
        }


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
