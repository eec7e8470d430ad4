"""The change stream: the leader's numbered changes fanned out to followers through Redis.

Without it every follower reads the log from Postgres (a NOTIFY wake-up,
then a read by seq), so the database answers one read per batch per
follower. With REDIS_URL (and CHANGE_STREAM, on by default) the leader
appends what it has just numbered and logged to one Redis Stream,
``{prefix}:changes``, and followers read that (``XREAD BLOCK``) instead:
the database load stops growing with the number of instances.

* Each entry is one delivered slice (at most a few hundred changes); its
  stream ID is ``{last seq}-0``, so IDs follow seqs and a follower resumes
  with ``XREAD ... {its last seq}-0``. The stream is capped with
  ``MAXLEN ~ CHANGE_STREAM_MAXLEN`` entries: it holds the live tail only.
* An entry is appended only after the batch committed to the log, and
  only by the instance that numbered it. An ID Redis refuses as "not above
  the top" therefore means the stream belongs to another log (a reset or
  restored database): it is deleted, loudly, and written afresh.
* Postgres stays the truth. A follower that finds a hole before an entry
  (trimmed away, lost in a Redis restart, a leader that died between its
  commit and its XADD) reads the hole from the log first; while Redis is
  down, or while the stream stays silent after a NOTIFY says the log moved
  (the leader cannot reach Redis), it reads the log as before. Every path
  drops seqs it already handed on, so a switch in either direction neither
  loses nor repeats anything.
* The leader's outgoing queue is bounded (`SEND_QUEUE_MAX`); while Redis is
  down or the queue is full, entries are dropped and counted: the followers
  fill the hole from Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from realtime_bridge.change import Change
from realtime_bridge.sources.base import Backoff

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger(__name__)

# Delivered slices waiting for Redis on the leader; beyond this they are dropped (and counted).
SEND_QUEUE_MAX = 2000
# Entries one XREAD returns at most.
READ_COUNT = 200
# How long one XREAD blocks (ms); the socket's timeout is above it.
BLOCK_MS = 2000
# The writer's PING while idle (keeps the state shown by /health fresh).
IDLE_PING_S = 2.0


class StreamState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: consecutive changes `first`..`last`."""

    first: int
    last: int
    changes: list[Change]


def encode(changes: list[Change]) -> dict[str, bytes]:
    """The fields of one entry (the changes as the log holds them)."""
    rows = [
        [
            c.seq,
            c.operation,
            c.schema,
            c.table,
            c.record,
            c.old_record,
            c.committed_at.isoformat(),
            c.channel,
            c.event,
            c.outbox_id,
            c.xid,
        ]
        for c in changes
    ]
    return {
        "first": str(changes[0].seq).encode(),
        "last": str(changes[-1].seq).encode(),
        "changes": orjson.dumps(rows),
    }


def decode(fields: dict[Any, Any]) -> Entry:
    """An entry from its fields (raises ValueError, KeyError or TypeError when malformed)."""
    get: Callable[[str], Any] = lambda name: fields.get(name.encode(), fields.get(name))  # noqa: E731
    rows = orjson.loads(get("changes"))
    changes = [
        Change(
            seq=int(seq),
            operation=operation,
            schema=schema,
            table=table,
            record=record,
            old_record=old,
            committed_at=datetime.fromisoformat(at),
            channel=channel,
            event=event,
            outbox_id=outbox_id,
            xid=xid[0] if xid else None,  # entries of a leader older than the xid have none
        )
        for seq, operation, schema, table, record, old, at, channel, event, outbox_id, *xid in rows
    ]
    first, last = int(get("first")), int(get("last"))
    if not changes or changes[0].seq != first or changes[-1].seq != last:
        raise ValueError(f"entry {first}..{last} does not hold those seqs")
    return Entry(first, last, changes)


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


class ChangeStream:
    """The leader's side (publish) and a follower's side (read) of the stream."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "realtime-bridge",
        maxlen: int = 10_000,
        grace: float = 0.5,
    ) -> None:
        self.url = url
        self.key = f"{prefix}:changes"
        self.maxlen = maxlen
        # How long a follower waits for the stream after a NOTIFY before reading Postgres.
        self.grace = grace
        self.state = StreamState.CONNECTING
        self.since = time.time()
        self.last_error: str | None = None
        self.reconnects = 0
        # Leader: entries and changes appended, dropped (Redis down or queue full), resets.
        self.published = 0
        self.published_changes = 0
        self.dropped = 0
        self.resets = 0
        # Follower: entries read, changes handed on from it, holes filled from Postgres,
        # and the highest seq the stream has shown (its head, for the lag).
        self.received = 0
        self.delivered_changes = 0
        self.gaps_filled = 0
        self.fallback_reads = 0
        self.head_seen: int | None = None
        self.reading = False
        self._out: asyncio.Queue[list[Change]] = asyncio.Queue(SEND_QUEUE_MAX)
        self._writing = False
        self._task: asyncio.Task[None] | None = None

    # the leader ---------------------------------------------------------------

    def publish(self, changes: list[Change]) -> None:
        """Append numbered, committed changes (in seq order); never blocks."""
        if not changes:
            return
        if not self._writing:
            self.dropped += 1
            return
        try:
            self._out.put_nowait(changes)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._run(), name="change-stream")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._set(StreamState.STOPPED)

    async def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.state is not StreamState.CONNECTED:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _set(self, state: StreamState, error: str | None = None) -> None:
        if state is not self.state:
            self.state = state
            self.since = time.time()
        if error is not None:
            self.last_error = error

    def _failed(self, exc: BaseException) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if self.state is not StreamState.DEGRADED:
            logger.warning(
                "change stream: Redis unavailable (%s); followers read the log from Postgres "
                "until it is back",
                error,
            )
        self._set(StreamState.DEGRADED, error)
        self.reconnects += 1

    def _client(self, *, timeout: float) -> Redis:
        from redis.asyncio import Redis

        return Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=timeout)

    async def _run(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            redis = self._client(timeout=5)
            try:
                await redis.ping()
                self._writing = True
                if self.state is StreamState.DEGRADED:
                    logger.info("change stream: Redis is back; followers read the stream again")
                self._set(StreamState.CONNECTED)
                backoff.reset()
                await self._write(redis)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            finally:
                self._writing = False
                # What was queued for the lost connection is gone: followers read it from the log.
                while not self._out.empty():
                    self._out.get_nowait()
                    self.dropped += 1
                with contextlib.suppress(Exception):
                    await redis.aclose()
            await asyncio.sleep(backoff.next())

    async def _write(self, redis: Redis) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._out.get(), IDLE_PING_S)
            except TimeoutError:
                await redis.ping()
                continue
            batch = [first]
            while not self._out.empty() and len(batch) < 64:
                batch.append(self._out.get_nowait())
            pipe = redis.pipeline(transaction=False)
            for changes in batch:
                self._xadd(pipe, changes)
            results = await pipe.execute(raise_on_error=False)
            for changes, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    await self._refused(redis, changes, result)
                else:
                    self.published += 1
                    self.published_changes += len(changes)

    def _xadd(self, pipe: Any, changes: list[Change]) -> None:
        pipe.xadd(
            self.key,
            encode(changes),
            id=f"{changes[-1].seq}-0",
            maxlen=self.maxlen,
            approximate=True,
        )

    async def _refused(self, redis: Redis, changes: list[Change], error: Exception) -> None:
        """An XADD failed: a stream of another log is replaced; anything else is raised."""
        if "equal or smaller" not in str(error):
            raise error
        top: Any = await redis.xrevrange(self.key, count=1)
        logger.warning(
            "change stream: %s holds seqs up to %s, beyond this log's %s (a reset or "
            "restored database, or another deployment with the same REDIS_PREFIX); "
            "starting it afresh",
            self.key,
            _seq_of(top[0][0]) if top else "?",
            changes[-1].seq,
        )
        self.resets += 1
        await redis.delete(self.key)
        await redis.xadd(
            self.key,
            encode(changes),  # type: ignore[arg-type]
            id=f"{changes[-1].seq}-0",
            maxlen=self.maxlen,
            approximate=True,
        )
        self.published += 1
        self.published_changes += len(changes)

    # a follower ---------------------------------------------------------------

    async def entries(self, after: Callable[[], int]) -> AsyncIterator[Entry]:
        """Entries above `after()` (read again after each reconnect), forever.

        While Redis is unreachable `reading` is False (the follower reads the
        log from Postgres) and the connection is retried with backoff.
        """
        backoff = Backoff(0.2, 5.0)
        while True:
            redis = self._client(timeout=BLOCK_MS / 1000 + 5)
            try:
                cursor = f"{after()}-0"
                while True:
                    reply: Any = await redis.xread(
                        {self.key: cursor}, count=READ_COUNT, block=BLOCK_MS
                    )
                    if not self.reading:
                        self.reading = True
                        backoff.reset()
                        if self.state is not StreamState.CONNECTED:
                            self._set(StreamState.CONNECTED)
                    for _key, items in reply or []:
                        for entry_id, fields in items:
                            cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                            try:
                                entry = decode(fields)
                            except (KeyError, TypeError, ValueError) as exc:
                                logger.warning("change stream: ignored entry %s: %s", cursor, exc)
                                continue
                            self.received += 1
                            self.head_seen = max(self.head_seen or 0, entry.last)
                            yield entry
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reading = False
                self._failed(exc)
            finally:
                self.reading = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(redis.aclose(), 1)
            await asyncio.sleep(backoff.next())

    # reporting ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "key": self.key,
            "maxlen": self.maxlen,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "reading": self.reading,
            "published": self.published,
            "published_changes": self.published_changes,
            "dropped": self.dropped,
            "resets": self.resets,
            "received": self.received,
            "delivered_changes": self.delivered_changes,
            "gaps_filled": self.gaps_filled,
            "fallback_reads": self.fallback_reads,
            "head_seen": self.head_seen,
        }
