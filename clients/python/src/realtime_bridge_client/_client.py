"""The Python client: `async for` over a bridge's events, with reconnects handled.

    async with connect("http://127.0.0.1:8000", api_key=SERVICE_KEY) as client:
        async with client.subscribe("trade-updates", filters={"status": ["open"]}) as trades:
            async for event in trades:
                print(event.seq, event.operation, event.data)

`connect` takes the bridge's base http(s) URL and speaks the WebSocket
protocol of `/ws/db_subscriptions` (see the README). One socket per client
carries every subscription; frames are routed by `subscription_id`.

What the client guarantees:

* **Reconnect.** A lost or refused connection is retried with exponential
  backoff and jitter: the n-th wait is drawn from `[d/2, d]` with
  `d = min(reconnect_max, reconnect_base * 2**n)` (3 s doubling to 30 s by
  default), so a fleet that lost the same bridge does not return in step.
  It starts again at `reconnect_base` once a connection has been answered.
* **Heartbeat.** A `ping` frame every `heartbeat_interval` (25 s); no answer
  within `heartbeat_timeout` (10 s) means the connection is dead (a half-open
  TCP connection never says so) and it is replaced. The protocol-level ping
  of the WebSocket library is off: an answered `ping` frame proves that the
  bridge's session, not just its socket, is alive.
* **Resume.** Each subscription remembers the last `seq` it queued and after
  any reconnect subscribes again with `since` (and its `snapshot_token`, until
  a resync voids it): nothing is lost, and an event with a seq at or below the
  last one is dropped, so nothing is repeated.
* **Back-pressure.** Each subscription queues at most `max_queue` events. A
  consumer that falls further behind stops its feed instead of growing the
  queue; once it has drained half of it, the feed resumes with `since`,
  exactly as after a reconnect. The socket is never blocked by one consumer.
* **Tokens.** `access_token` is sent as `Authorization: Bearer` at the
  handshake (the `apikey` goes in the query string). When the bridge says
  `token_expired`, `get_access_token()` is awaited and the new token sent in
  an `access_token` frame; the bridge resumes the paused subscriptions with
  nothing lost. Without `get_access_token`, `TokenExpired` is raised.
* **Resync.** When `since` is older than the bridge's retained log, the
  subscription raises `ResyncRequired` from its iterator (or calls
  `on_resync` instead, when given); it carries on live either way, so catch
  it, reload a snapshot (`await subscription.snapshot()`), and iterate again.
* **Snapshots.** `await client.snapshot(channel, filters=...)` reads the
  channel's current rows over HTTP (`GET /api/channels/{channel}/snapshot`,
  every page, with the client's key and token), the `seq` they are current
  at and the snapshot's `token`. Subscribing with `since=snapshot.seq,
  snapshot_token=snapshot.token` then delivers every later change exactly
  once: nothing falls between the two, and nothing already in the records
  comes again. Without a token (None: the bridge has no database log), and
  for rows on the later pages of a paged snapshot (the token is the first
  page's), a few changes after `seq` may already be in the records, so apply
  each event as "this row is now `data`" (DELETE: "this row is gone"); the
  rows then end as in the database either way::

      mine = {"user_id": "u1"}
      snap = await client.snapshot("position-updates", filters=mine, model=PositionUpdate)
      rows = {row.id: row for row in snap.records}
      async with client.subscribe(
          "position-updates",
          filters=mine,
          since=snap.seq,
          snapshot_token=snap.token,
          model=PositionUpdate,
      ) as positions:
          async for event in positions:
              if event.operation == "DELETE":
                  rows.pop(event.record_id, None)
              else:
                  rows[event.record_id] = event.data

The bridge answers frames in order and one request is in flight at a time,
which is how a reply (or an error, which names no request) is matched to
what asked for it. Frames are paced to `max_messages_per_second` so that a
reconnect re-subscribing many subscriptions stays under the bridge's limit.

Errors (one tree, rooted in `realtime_bridge_client.protocol`, which the server's
`realtime_bridge.errors` shares)::

    RealtimeBridgeError
    ├── ClientClosed          the client is closed, or was never entered
    ├── DecodeError           an event's payload (or a snapshot's record) does not fit its model
    └── ClientError           the bridge said no: `.code`, `.message`, `.details`
        ├── Refused           a subscribe, the handshake or a token was refused
        │   ├── Unauthorized      unauthorized, forbidden, origin_not_allowed
        │   │   └── TokenExpired  token_expired, and no (working) get_access_token
        │   ├── UnknownChannel    unknown_channel
        │   │   └── UnknownTable  unknown_table
        │   └── InvalidFilter     invalid_filter
        └── ResyncRequired    `since` is older than the retained log (the subscription goes on)

`Unauthorized`, `TokenExpired`, `UnknownChannel`, `UnknownTable` and
`InvalidFilter` are also subclasses of the protocol's classes of the same name
(`realtime_bridge_client.protocol`, which the server raises as
`realtime_bridge.auth` / `realtime_bridge.errors`), so code catching those
catches these. Other refusal codes (`bad_message`, `too_many_subscriptions`,
`too_large`, ...) raise `Refused` with that `code`. A refused subscribe
raises from `async with client.subscribe(...)` (or the first iteration);
a refused handshake or token ends every subscription with that error.
A refused snapshot raises from `client.snapshot(...)` the same way (`503
unavailable` as `Refused` with `code == "unavailable"`); a bridge that
cannot be reached at all raises `httpx.TransportError` there.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import logging
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, overload
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import orjson
from pydantic import BaseModel, ValidationError
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as open_websocket
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from realtime_bridge_client import protocol as errors
from realtime_bridge_client.filters import Condition, parse_filter, spell
from realtime_bridge_client.protocol import ClientError, RealtimeBridgeError

__all__ = [
    "Client",
    "ClientClosed",
    "ConnectionState",
    "DecodeError",
    "Event",
    "InvalidFilter",
    "Refused",
    "ResyncRequired",
    "Snapshot",
    "Subscription",
    "TokenExpired",
    "Unauthorized",
    "UnknownChannel",
    "UnknownTable",
    "connect",
]

logger = logging.getLogger(__name__)

ENDPOINT = "/ws/db_subscriptions"
TOKEN_EXPIRED = "token_expired"
RATE_LIMITED = "rate_limited"
# The request that each reply frame answers.
REPLIES = {
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "ping": "pong",
    "access_token": "access_token",
}
PING = orjson.dumps({"type": "ping"}).decode()
SNAPSHOT_LIMIT = 1000
# Seconds to read one snapshot page (up to 10,000 rows); connecting uses open_timeout.
SNAPSHOT_TIMEOUT = 60.0

D = TypeVar("D")
M = TypeVar("M", bound=BaseModel)


class _Plugin(Protocol):
    @property
    def channel(self) -> str: ...
    @property
    def model(self) -> type[BaseModel]: ...


class PluginRegistry(Protocol):
    """What `connect(registry=...)` reads of the server's `PluginRegistry`: each channel's model."""

    @property
    def by_channel(self) -> Mapping[str, _Plugin]: ...


# errors ------------------------------------------------------------------------


class ClientClosed(RealtimeBridgeError):
    """The client is closed, or is used outside its `async with connect(...)`."""


class DecodeError(RealtimeBridgeError):
    """An event's payload (or a snapshot's record) does not fit the model given for it.

    The subscription goes on; `frame` is the event as received (for a
    snapshot, the record).
    """

    def __init__(self, message: str, frame: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.frame = frame


def misfit(
    what: str, model: type[BaseModel], exc: ValidationError, frame: Mapping[str, Any]
) -> DecodeError:
    """The `DecodeError` for `what` (an event, a record) that `model` did not validate."""
    return DecodeError(
        f"{what} does not fit {model.__name__}: {exc.error_count()} error(s), first: "
        f"{exc.errors(include_url=False)[0].get('msg')}",
        frame,
    )


class Refused(ClientError):
    """The bridge refused a subscribe, the handshake or a token; `code` says why."""


class Unauthorized(Refused, errors.Unauthorized):
    """No, or a bad, key or token; or one that may not read this channel."""

    code = "unauthorized"


class TokenExpired(Unauthorized, errors.TokenExpired):
    """The token expired and there is no (working) `get_access_token` to renew it."""

    code = TOKEN_EXPIRED


class UnknownChannel(Refused, errors.UnknownChannel):
    """No plugin channel or table channel by that name."""

    code = "unknown_channel"


class UnknownTable(UnknownChannel, errors.UnknownTable):
    """The table is not tracked by the bridge."""

    code = "unknown_table"


class InvalidFilter(Refused, errors.InvalidFilter):
    """The filter does not parse, or names an unknown column or operator."""

    code = "invalid_filter"


class ResyncRequired(ClientError):
    """`since` is older than the bridge's retained log: reload a snapshot.

    The subscription carries on live after it; iterate again.
    """

    code = errors.RESYNC_REQUIRED

    def __init__(self, message: str, *, channel: str, earliest_seq: int) -> None:
        super().__init__(message, channel=channel, earliest_seq=earliest_seq)
        self.channel = channel
        self.earliest_seq = earliest_seq


REFUSALS: dict[str, type[Refused]] = {
    "unauthorized": Unauthorized,
    "forbidden": Unauthorized,
    "origin_not_allowed": Unauthorized,
    TOKEN_EXPIRED: TokenExpired,
    "unknown_channel": UnknownChannel,
    "unknown_table": UnknownTable,
    "invalid_filter": InvalidFilter,
}


def refusal(code: str, message: str, **details: Any) -> Refused:
    """The client's exception for an error code from the bridge."""
    cls = REFUSALS.get(code, Refused)
    exc = cls(message, **details)
    exc.code = code
    return exc


def refusal_of(frame: Mapping[str, Any]) -> Refused:
    details = {k: v for k, v in frame.items() if k not in ("type", "code", "message")}
    return refusal(str(frame.get("code")), str(frame.get("message", "")), **details)


class _ErrorReply(Exception):
    """An error frame that answered a request (internal)."""

    def __init__(self, frame: dict[str, Any]) -> None:
        super().__init__(frame.get("message"))
        self.frame = frame
        self.code = str(frame.get("code"))


class _ConnectionLost(Exception):
    """The connection is gone, dead or refused for now: reconnect (internal)."""


# events ------------------------------------------------------------------------


class Event(Mapping[str, Any], Generic[D]):
    """One change delivered to a subscription.

    Read its fields as attributes (`event.seq`, `event.data`, ...), with
    `data` and `old` typed by the channel's model when the client knows it,
    or index it like the JSON frame (`event["data"]` is the raw dict).
    """

    __slots__ = ("_data", "_frame", "_old")

    def __init__(self, frame: dict[str, Any], data: D | None, old: D | None) -> None:
        self._frame = frame
        self._data = data
        self._old = old

    @property
    def seq(self) -> int:
        """The event's position in the bridge's global order."""
        return int(self._frame["seq"])

    @property
    def channel(self) -> str:
        return str(self._frame["channel"])

    @property
    def event(self) -> str:
        """The event name (`trade_update`, `row_change`, ...)."""
        return str(self._frame["event"])

    @property
    def operation(self) -> str:
        """`INSERT`, `UPDATE`, `DELETE`, or `BROADCAST` for published events."""
        return str(self._frame["operation"])

    @property
    def table(self) -> str | None:
        table = self._frame.get("table")
        return None if table is None else str(table)

    @property
    def record_id(self) -> Any:
        return self._frame.get("record_id")

    @property
    def user_id(self) -> Any:
        return self._frame.get("user_id")

    @property
    def subscription_id(self) -> str:
        """The bridge's id of the subscription that carried it (changes on resume)."""
        return str(self._frame["subscription_id"])

    @property
    def timestamp(self) -> datetime:
        """When the change was captured (timezone-aware)."""
        return datetime.fromisoformat(self._frame["timestamp"])

    @property
    def data(self) -> D | None:
        """The new row's payload (None for DELETE): a model instance, or the dict."""
        return self._data

    @property
    def old(self) -> D | None:
        """The old row's payload (UPDATE, DELETE), typed like `data`."""
        return self._old

    @property
    def frame(self) -> Mapping[str, Any]:
        """The `db_change` frame as received."""
        return self._frame

    def __getitem__(self, key: str) -> Any:
        return self._frame[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._frame)

    def __len__(self) -> int:
        return len(self._frame)

    def __repr__(self) -> str:
        return (
            f"Event(seq={self._frame.get('seq')}, channel={self._frame.get('channel')!r}, "
            f"operation={self._frame.get('operation')!r}, "
            f"record_id={self._frame.get('record_id')!r})"
        )


ResyncHandler = Callable[[ResyncRequired], Awaitable[None] | None]


@dataclass(frozen=True)
class Snapshot(Generic[D]):
    """A channel's current rows, the seq to subscribe after and its token: from `Client.snapshot`.

    `records` are the channel's payloads (instances of its model when the
    client knows it, dicts otherwise), in id order. Subscribe with
    `since=seq, snapshot_token=token`: every change numbered up to `seq` is in
    `records` and every later one arrives on the subscription exactly once,
    none that `records` already hold. `token` is None when the bridge has no
    database log (polling, hosted Supabase mode), and it is the first page's:
    without it, or for rows on later pages, a few changes after `seq` may be
    in `records` already, and applying each event as "this row is now `data`"
    (DELETE: "this row is gone") ends in the database's state.
    """

    seq: int
    records: list[D]
    token: str | None = None


# filters -----------------------------------------------------------------------

_COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def filter_string(filters: Mapping[str, Any] | str | None) -> str | None:
    """`subscribe`'s `filters` as the `filter` string the HTTP endpoints take.

    A string goes as it is; a map becomes Supabase's syntax with values
    quoted where needed: `{"user_id": "u1", "status": ["open", "x,y"],
    "qty": {"gte": 10}, "closed_at": None}` →
    `user_id=eq.u1,status=in.(open,"x,y"),qty=gte.10,closed_at=is.null`.
    Raises `InvalidFilter` for a map the bridge would refuse, or one the
    string syntax cannot spell (a `"` in a value, a null inside a list).
    """
    if filters is None or isinstance(filters, str):
        return filters or None
    try:
        parsed = parse_filter(filters)
        text = ",".join(_clause(condition) for condition in parsed.conditions)
        if parse_filter(text) != parsed:  # a safety net: _clause quotes what it must
            raise errors.InvalidFilter(f"the filter {dict(filters)!r} has no string form")
    except errors.InvalidFilter as exc:
        raise refusal(InvalidFilter.code, exc.message, **exc.details) from None
    return text or None


def _clause(condition: Condition) -> str:
    column = condition.column
    if not _COLUMN.fullmatch(column):
        raise errors.InvalidFilter(
            f"column {column!r} cannot be named in a filter string", column=column
        )
    op = f"not.{condition.op}" if condition.negated else condition.op
    if condition.op == "is":
        return f"{column}={op}.{condition.keys[0] or 'null'}"
    values = [_spell(column, key) for key in condition.keys]
    if condition.op == "in":
        return f"{column}={op}.({','.join(values)})"
    return f"{column}={op}.{values[0]}"


def _spell(column: str, key: str | None) -> str:
    """A value (in the bridge's canonical text form) as a filter string writes it."""
    if key is not None and '"' in key:
        raise errors.InvalidFilter(
            f"a filter string cannot carry a double quote (the value for {column!r})",
            column=column,
        )
    return spell(key)


class Subscription(Generic[D]):
    """One subscription: an async iterator of `Event`s, and an async context manager.

    `async with` waits until the bridge has accepted it (raising `Refused`
    otherwise) and unsubscribes on exit. Iterating without `async with`
    subscribes on the first step; the subscription then lasts until
    `aclose()` or the client's exit. Iteration ends (StopAsyncIteration)
    when either happens, and raises the error when the client fails.
    """

    def __init__(
        self,
        client: Client,
        channel: str,
        *,
        filters: Mapping[str, Any] | str | None,
        since: int | None,
        snapshot_token: str | None,
        model: type[BaseModel] | None,
        on_resync: ResyncHandler | None,
        max_queue: int,
    ) -> None:
        if since is not None and since < 0:
            raise ValueError(f"since must be a seq (>= 0), got {since}")
        if snapshot_token is not None and since is None:
            raise ValueError("snapshot_token needs since (the seq of the snapshot it came with)")
        if max_queue < 2:
            raise ValueError(f"max_queue must be at least 2, got {max_queue}")
        self.channel = channel
        self.filters = filters
        self._client = client
        self._model = model
        self._on_resync = on_resync
        self._max_queue = max_queue
        self._queue: deque[dict[str, Any] | ResyncRequired] = deque()
        self._wakeup = asyncio.Event()
        self._ready = asyncio.Event()
        self._started = False
        self._closed = False
        self._failure: BaseException | None = None
        self._last_seq = since
        # Sent with every subscribe until a resync voids it.
        self._snapshot_token = snapshot_token
        self._server_id: str | None = None
        self._subscribing = False
        self._lagging = False
        self._retry_at = 0.0

    @property
    def id(self) -> str | None:
        """The bridge's id for this subscription on the current connection (None between)."""
        return self._server_id

    @property
    def last_seq(self) -> int | None:
        """The seq it resumes after: the last event queued (or the head when it started)."""
        return self._last_seq

    async def __aenter__(self) -> Subscription[D]:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription[D]:
        return self

    async def __anext__(self) -> Event[D]:
        if not self._started:
            await self._start()
        while True:
            if self._queue:
                item = self._queue.popleft()
                if self._lagging and len(self._queue) <= self._max_queue // 2:
                    self._lagging = False
                    self._client._dirty.set()
                if isinstance(item, ResyncRequired):
                    if self._on_resync is None:
                        raise item
                    result = self._on_resync(item)
                    if inspect.isawaitable(result):
                        await result
                    continue
                return self._decode(item)
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def snapshot(self, *, limit: int = SNAPSHOT_LIMIT) -> Snapshot[D]:
        """The current rows this subscription covers: its channel and filters, typed like `data`.

        What to reload on `ResyncRequired` (or in `on_resync`), then iterate
        on: the subscription went on live, and an event with a seq at or
        below the snapshot's `seq` is already in its records (skip it, or
        apply it: the rows end the same). Its `token` does not apply to this
        subscription, which was started before it. See `Client.snapshot`.
        """
        snap: Snapshot[D] = await self._client._snapshot(
            self.channel, filters=self.filters, limit=limit, model=self._model
        )
        return snap

    async def aclose(self) -> None:
        """Unsubscribe and end the iteration."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        self._client._unregister(self)
        self._ready.set()
        self._wakeup.set()

    async def _start(self) -> None:
        if not self._started:
            self._started = True
            self._client._register(self)
        await self._ready.wait()
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise ClientClosed("the subscription or its client was closed before it started")

    def _decode(self, frame: dict[str, Any]) -> Event[D]:
        model = self._model or self._client._model_for(str(frame.get("channel")))
        event: Event[Any]
        if model is None:
            event = Event(frame, frame.get("data"), frame.get("old"))
            return event
        try:
            data = None if frame.get("data") is None else model.model_validate(frame["data"])
            old = None if frame.get("old") is None else model.model_validate(frame["old"])
        except ValidationError as exc:
            what = f"event {frame.get('seq')} on {frame.get('channel')!r}"
            raise misfit(what, model, exc, frame) from exc
        event = Event(frame, data, old)
        return event

    # called by the connection ------------------------------------------------------

    def _subscribe_frame(self, client_id: str | None) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel}
        if isinstance(self.filters, str):
            frame["filter"] = self.filters
        elif self.filters is not None:
            frame["filters"] = dict(self.filters)
        if self._last_seq is not None:
            frame["since"] = self._last_seq
            if self._snapshot_token is not None:
                frame["snapshot_token"] = self._snapshot_token
        if client_id is not None:
            frame["client_id"] = client_id
        return frame

    def _wants_feed(self, now: float) -> bool:
        return (
            not self._closed
            and self._failure is None
            and self._server_id is None
            and not self._subscribing
            and not self._lagging
            and self._retry_at <= now
        )

    def _subscribed(self, reply: Mapping[str, Any]) -> None:
        head = int(reply.get("seq", 0))
        # Live from the head the bridge was at: resuming after it loses nothing.
        self._last_seq = head if self._last_seq is None else self._last_seq
        self._ready.set()

    def _offer(self, frame: dict[str, Any]) -> bool:
        """Queue an event; False when the queue is full (the feed must stop)."""
        seq = frame.get("seq")
        if not isinstance(seq, int) or (self._last_seq is not None and seq <= self._last_seq):
            return True  # a duplicate from an overlapping resume
        if len(self._queue) >= self._max_queue:
            self._lagging = True
            return False
        self._queue.append(frame)
        self._last_seq = seq
        self._wakeup.set()
        return True

    def _resync(self, frame: Mapping[str, Any], head: int | None) -> None:
        earliest = int(frame.get("earliest_seq", 0))
        # The token no longer applies (the bridge has dropped it too).
        self._snapshot_token = None
        if head is not None and self._last_seq is not None:
            # The bridge continues live from (at least) that head; do not ask again.
            self._last_seq = max(self._last_seq, head)
        self._queue.append(
            ResyncRequired(
                f"events before seq {earliest} on {self.channel!r} are no longer kept; "
                "reload a snapshot (the subscription continues live)",
                channel=str(frame.get("channel", self.channel)),
                earliest_seq=earliest,
            )
        )
        self._wakeup.set()

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None and not self._closed:
            self._failure = exc
        self._server_id = None
        self._ready.set()
        self._wakeup.set()

    def _end(self) -> None:
        self._closed = True
        self._server_id = None
        self._ready.set()
        self._wakeup.set()


# the connection ----------------------------------------------------------------


@dataclass
class _Request:
    kind: str
    future: asyncio.Future[dict[str, Any]]
    sub: Subscription[Any] | None = None
    # A token_expired error seen while waiting: this request's reply, or the
    # bridge's own notice. A ping sent after it tells which (see _on_error).
    expired: dict[str, Any] | None = None


class _Connection:
    """One open WebSocket: its reader, heartbeat and the loop that sends requests."""

    def __init__(self, client: Client, ws: ClientConnection) -> None:
        self.client = client
        self.ws = ws
        self.subs: dict[str, Subscription[Any]] = {}
        self.heads: dict[str, int] = {}
        self.request: _Request | None = None
        self.barriers = 0
        self.lock = asyncio.Lock()
        self.unsubscribes: deque[str] = deque()
        self.token_stale = False
        self.answered = False
        self.dead = False
        self._tokens = client._rate
        self._refilled = asyncio.get_running_loop().time()

    async def run(self) -> str:
        """Serve until the connection ends; return why. Raises for a fatal error."""
        tasks = [
            asyncio.create_task(self._read(), name="realtime-bridge-client-reader"),
            asyncio.create_task(self._heartbeat(), name="realtime-bridge-client-heartbeat"),
            asyncio.create_task(self._sync(), name="realtime-bridge-client-sync"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if isinstance(exc, _ConnectionLost):
                self.dead = True
                return str(exc)
            if isinstance(exc, ConnectionClosed | OSError):
                return describe_close(self.ws)
            if exc is not None:
                raise exc
        return describe_close(self.ws)

    async def close(self) -> None:
        if self.dead:
            self.ws.transport.abort()
            return
        with contextlib.suppress(Exception):
            await self.ws.close()

    # reading -----------------------------------------------------------------------

    async def _read(self) -> None:
        async for raw in self.ws:
            try:
                frame = orjson.loads(raw)
            except orjson.JSONDecodeError:
                logger.warning("ignoring a frame that is not JSON: %.200r", raw)
                continue
            if isinstance(frame, dict):
                await self._route(frame)
            elif isinstance(frame, list):  # a batch frame (batch=1): its frames, in order
                for item in frame:
                    if isinstance(item, dict):
                        await self._route(item)

    async def _route(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "db_change":
            sub = self.subs.get(str(frame.get("subscription_id")))
            if sub is not None and not sub._offer(frame):
                self._stop_feed(sub)
            return
        if kind == "resync_required":
            sid = str(frame.get("subscription_id"))
            sub = self.subs.get(sid)
            if sub is not None:
                sub._resync(frame, self.heads.get(sid))
            return
        if kind == "error":
            await self._on_error(frame)
            return
        self.answered = True
        request = self.request if self.request and not self.request.future.done() else None
        if kind == "pong" and self.barriers:
            self.barriers -= 1
            if request is not None and request.expired is not None:
                # The ping sent after a token_expired came back before any
                # other reply: that token_expired was the request's reply.
                request.future.set_result(request.expired)
            return
        if request is None or REPLIES.get(request.kind) != kind:
            logger.debug("ignoring an unexpected %r frame", kind)
            return
        if kind == "subscribed" and request.sub is not None:
            self._attach(request.sub, frame)
        request.future.set_result(frame)

    def _attach(self, sub: Subscription[Any], reply: dict[str, Any]) -> None:
        # Registered here, before the next frame is read: events follow the reply.
        sid = str(reply["subscription_id"])
        if sub._closed or sub._failure is not None:
            self.unsubscribes.append(sid)
            self.client._dirty.set()
            return
        self.subs[sid] = sub
        self.heads[sid] = int(reply.get("seq", 0))
        sub._server_id = sid
        sub._subscribed(reply)

    async def _on_error(self, frame: dict[str, Any]) -> None:
        code = str(frame.get("code"))
        message = frame.get("message")
        sid = frame.get("subscription_id")
        request = self.request if self.request and not self.request.future.done() else None
        if code == errors.SLOW_CONSUMER:
            # Not a reply: the bridge is closing the connection; we resume after it.
            logger.warning("the bridge is closing the connection: %s", message)
            return
        if code == "unknown_subscription":
            # An unsubscribe of a subscription the bridge had already ended.
            if request is not None and request.kind == "unsubscribe":
                request.future.set_result(frame)
            return
        if sid is not None:
            self._on_subscription_error(str(sid), code, frame)
            return
        if code == TOKEN_EXPIRED:
            self.token_stale = True
            self.client._dirty.set()
            if request is not None and request.kind in ("subscribe", "access_token"):
                if request.expired is None:
                    # Ambiguous: the reply to this request, or the bridge's notice
                    # that the token ran out. The bridge answers in order, so a
                    # ping sent now settles it (see _route).
                    request.expired = frame
                    self.barriers += 1
                    await self.ws.send(PING)
                return
            logger.info("the access token expired; subscriptions are paused")
            return
        if request is not None:
            request.future.set_result(frame)  # errors name no request: it is this one
        else:
            logger.warning("error from the bridge: %s: %s", code, message)

    def _on_subscription_error(self, sid: str, code: str, frame: dict[str, Any]) -> None:
        """The bridge ended one subscription (replay_failed, or a token change)."""
        sub = self.subs.pop(sid, None)
        if sub is None:
            return
        sub._server_id = None
        if code == "replay_failed":
            logger.warning("%s on %r; subscribing again with since", code, sub.channel)
            self.client._retry_later(sub)
        else:
            sub._fail(refusal_of(frame))
            self.client._subs.pop(id(sub), None)

    def _stop_feed(self, sub: Subscription[Any]) -> None:
        sid = sub._server_id
        sub._server_id = None
        if sid is not None:
            self.subs.pop(sid, None)
            self.unsubscribes.append(sid)
            self.client._dirty.set()

    # requests ----------------------------------------------------------------------

    async def _request(
        self, frame: dict[str, Any], sub: Subscription[Any] | None = None
    ) -> dict[str, Any]:
        """Send a frame and wait for its reply; one request is in flight at a time."""
        timeout = self.client._heartbeat_timeout
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout), self.lock:
                await self._pace()
                request = _Request(str(frame["type"]), loop.create_future(), sub)
                self.request = request
                try:
                    await self.ws.send(orjson.dumps(frame).decode())
                    reply = await request.future
                finally:
                    self.request = None
        except TimeoutError:
            raise _ConnectionLost(f"no answer to {frame['type']!r} within {timeout:g} s") from None
        if reply.get("type") == "error":
            raise _ErrorReply(reply)
        return reply

    async def _pace(self) -> None:
        rate = self.client._rate
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._tokens = min(rate, self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / rate)
            self._tokens = 1
            self._refilled = loop.time()
        self._tokens -= 1

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.client._heartbeat_interval)
            # Any answer, even rate_limited, shows the bridge's session is alive.
            with contextlib.suppress(_ErrorReply):
                await self._request({"type": "ping"})

    async def _sync(self) -> None:
        """Bring the bridge in line with the client: token, unsubscribes, subscribes."""
        client = self.client
        loop = asyncio.get_running_loop()
        while True:
            await client._dirty.wait()
            client._dirty.clear()
            if self.token_stale:
                await self._refresh_token()
                continue
            while self.unsubscribes:
                sid = self.unsubscribes.popleft()
                with contextlib.suppress(_ErrorReply):
                    await self._request({"type": "unsubscribe", "subscription_id": sid})
            for sub in list(client._subs.values()):
                if self.token_stale:
                    client._dirty.set()
                    break
                if sub._wants_feed(loop.time()):
                    await self._subscribe(sub)

    async def _subscribe(self, sub: Subscription[Any]) -> None:
        sub._subscribing = True
        try:
            await self._request(sub._subscribe_frame(self.client._client_id), sub)
        except _ErrorReply as exc:
            if exc.code == TOKEN_EXPIRED and self.client._get_access_token is not None:
                self.token_stale = True
                self.client._dirty.set()
            elif exc.code == RATE_LIMITED:
                self.client._retry_later(sub)
            else:
                sub._fail(refusal_of(exc.frame))
                self.client._subs.pop(id(sub), None)
        finally:
            sub._subscribing = False

    async def _refresh_token(self) -> None:
        client = self.client
        if client._get_access_token is None:
            raise TokenExpired(
                "the access token expired and connect() was given no get_access_token"
            )
        token = await client._fresh_token()
        client._access_token = token
        try:
            await self._request({"type": "access_token", "token": token})
        except _ErrorReply as exc:
            if exc.code == RATE_LIMITED:
                client._retry_later(None)
                return
            raise refusal_of(exc.frame) from None
        self.token_stale = False
        client._dirty.set()
        logger.info("access token renewed")


def describe_close(ws: ClientConnection) -> str:
    if ws.close_code is None:
        return "the connection was lost"
    return f"closed by the bridge ({ws.close_code} {ws.close_reason or ''})".strip()


# the client --------------------------------------------------------------------


class ConnectionState(enum.Enum):
    """Where a client is: IDLE → CONNECTING ⇄ OPEN → CLOSED."""

    IDLE = "idle"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


def websocket_url(url: str, api_key: str | None) -> str:
    """`http(s)://host/prefix` → `ws(s)://host/prefix/ws/db_subscriptions?apikey=...&batch=1`."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"url must be the bridge's http(s):// address, got {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(ENDPOINT):
        path += ENDPOINT
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("apikey", "batch")]
    if api_key:
        query.append(("apikey", api_key))
    # Frames queued together arrive as one JSON array (see `_read`).
    query.append(("batch", "1"))
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


def http_url(url: str, path: str, query: Mapping[str, str]) -> str:
    """`http(s)://host/prefix` (or its `ws(s)://` endpoint) → `http(s)://host/prefix{path}?query`."""
    parts = urlsplit(url)
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"url must be the bridge's http(s):// address, got {url!r}")
    prefix = parts.path.rstrip("/").removesuffix(ENDPOINT)
    params = [(k, v) for k, v in parse_qsl(parts.query) if k != "apikey"]
    params.extend(query.items())
    return urlunsplit((scheme, parts.netloc, prefix + path, urlencode(params), ""))


class Client:
    """A connection to a bridge shared by all its subscriptions. Made by `connect`."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        access_token: str | None = None,
        get_access_token: Callable[[], Awaitable[str]] | None = None,
        models: Mapping[str, type[BaseModel]] | None = None,
        registry: PluginRegistry | None = None,
        client_id: str | None = None,
        reconnect_base: float = 3.0,
        reconnect_max: float = 30.0,
        heartbeat_interval: float = 25.0,
        heartbeat_timeout: float = 10.0,
        open_timeout: float = 10.0,
        max_messages_per_second: float = 20.0,
    ) -> None:
        for name, value in (
            ("reconnect_base", reconnect_base),
            ("heartbeat_interval", heartbeat_interval),
            ("heartbeat_timeout", heartbeat_timeout),
            ("open_timeout", open_timeout),
            ("max_messages_per_second", max_messages_per_second),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if reconnect_max < reconnect_base:
            raise ValueError(
                f"reconnect_max ({reconnect_max}) must be at least reconnect_base "
                f"({reconnect_base})"
            )
        self.url = url
        self._ws_url = websocket_url(url, api_key)
        self._api_key = api_key
        self._access_token = access_token
        self._get_access_token = get_access_token
        self._models: dict[str, type[BaseModel]] = {}
        if registry is not None:
            self._models.update({p.channel: p.model for p in registry.by_channel.values()})
        self._models.update(models or {})
        self._client_id = client_id
        self._reconnect_base = reconnect_base
        self._reconnect_max = reconnect_max
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._open_timeout = open_timeout
        self._rate = max_messages_per_second
        self._state = ConnectionState.IDLE
        self._subs: dict[int, Subscription[Any]] = {}
        self._dirty = asyncio.Event()
        self._conn: _Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._failure: BaseException | None = None
        self._connections = 0

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def connections(self) -> int:
        """How many connections this client has opened (1 + the reconnects)."""
        return self._connections

    @property
    def failure(self) -> BaseException | None:
        """The error that ended the client (a refused key or token), if any."""
        return self._failure

    async def __aenter__(self) -> Client:
        self._transition({ConnectionState.IDLE}, ConnectionState.CONNECTING)
        self._task = asyncio.create_task(self._run(), name="realtime-bridge-client")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the socket and end every subscription's iteration."""
        self._state = ConnectionState.CLOSED
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sub in self._subs.values():
            sub._end()
        self._subs.clear()

    @overload
    def subscribe(
        self,
        channel: str,
        *,
        model: type[M],
        filters: Mapping[str, Any] | str | None = None,
        since: int | None = None,
        snapshot_token: str | None = None,
        on_resync: ResyncHandler | None = None,
        max_queue: int = 1000,
    ) -> Subscription[M]: ...

    @overload
    def subscribe(
        self,
        channel: str,
        *,
        model: None = None,
        filters: Mapping[str, Any] | str | None = None,
        since: int | None = None,
        snapshot_token: str | None = None,
        on_resync: ResyncHandler | None = None,
        max_queue: int = 1000,
    ) -> Subscription[Any]: ...

    def subscribe(
        self,
        channel: str,
        *,
        model: type[BaseModel] | None = None,
        filters: Mapping[str, Any] | str | None = None,
        since: int | None = None,
        snapshot_token: str | None = None,
        on_resync: ResyncHandler | None = None,
        max_queue: int = 1000,
    ) -> Subscription[Any]:
        """A subscription to a plugin channel (`trade-updates`) or a table (`public.x`).

        `filters` is an equality map (`{"status": ["open"]}`) or a Supabase
        filter string (`"user_id=eq.u1"`). `since` replays every matching
        event after that seq first. `snapshot_token` is the `token` of the
        snapshot whose `seq` is `since`: the bridge then skips the changes the
        snapshot's records already hold, on this subscribe and every resubscribe
        (until a resync, after which it no longer applies); without `since` it
        raises `ValueError`, and None sends nothing. `model` types `data` / `old` (else the
        client's `models` / `registry`, else dicts). `on_resync` is called
        (sync or async) instead of raising `ResyncRequired`. At most
        `max_queue` events wait for the consumer (see the module docstring).
        """
        return Subscription(
            self,
            channel,
            filters=filters,
            since=since,
            snapshot_token=snapshot_token,
            model=model,
            on_resync=on_resync,
            max_queue=max_queue,
        )

    @overload
    async def snapshot(
        self,
        channel: str,
        *,
        model: type[M],
        filters: Mapping[str, Any] | str | None = None,
        limit: int = SNAPSHOT_LIMIT,
    ) -> Snapshot[M]: ...

    @overload
    async def snapshot(
        self,
        channel: str,
        *,
        model: None = None,
        filters: Mapping[str, Any] | str | None = None,
        limit: int = SNAPSHOT_LIMIT,
    ) -> Snapshot[Any]: ...

    async def snapshot(
        self,
        channel: str,
        *,
        model: type[BaseModel] | None = None,
        filters: Mapping[str, Any] | str | None = None,
        limit: int = SNAPSHOT_LIMIT,
    ) -> Snapshot[Any]:
        """The channel's current rows, the seq to subscribe after and its token.

        Reads `GET /api/channels/{channel}/snapshot` over HTTP, following
        every page (`limit` rows each, 1 to 10,000) from the first page's
        seq, with the client's key and access token (renewed through
        `get_access_token` when the bridge says `token_expired`). `filters`
        and `model` are those of `subscribe`, and so are the rows: a user's
        token gets that user's rows only. A refusal raises like a refused
        subscribe (`Unauthorized`, `UnknownChannel`, `InvalidFilter`, or
        `Refused` with its `.code`, e.g. `unavailable`); a record that does
        not fit the model raises `DecodeError`. Then subscribe with
        `since=snapshot.seq, snapshot_token=snapshot.token` and each change
        arrives exactly once; with no token (None), apply each event as
        "this row is now `data`" (DELETE: "is gone"); see the module
        docstring's example.
        """
        return await self._snapshot(channel, filters=filters, limit=limit, model=model)

    # internals ---------------------------------------------------------------------

    def _transition(self, expected: set[ConnectionState], to: ConnectionState) -> None:
        if self._state not in expected:
            names = " or ".join(sorted(s.name for s in expected))
            raise RuntimeError(
                f"cannot go {self._state.name} → {to.name}: expected the client to be {names}"
            )
        self._state = to

    def _model_for(self, channel: str) -> type[BaseModel] | None:
        return self._models.get(channel)

    def _ensure_usable(self, what: str) -> None:
        if self._failure is not None:
            raise self._failure
        if self._state is ConnectionState.IDLE:
            raise ClientClosed(f"{what} inside `async with connect(...) as client:`")
        if self._state is ConnectionState.CLOSED:
            raise ClientClosed("the client is closed")

    def _register(self, sub: Subscription[Any]) -> None:
        self._ensure_usable("subscribe")
        self._subs[id(sub)] = sub
        self._dirty.set()

    async def _snapshot(
        self,
        channel: str,
        *,
        filters: Mapping[str, Any] | str | None,
        limit: int,
        model: type[BaseModel] | None,
    ) -> Snapshot[Any]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._ensure_usable("take a snapshot")
        query: dict[str, str] = {"limit": str(limit)}
        spec = filter_string(filters)
        if spec is not None:
            query["filter"] = spec
        path = f"/api/channels/{quote(channel, safe='')}/snapshot"
        timeout = httpx.Timeout(SNAPSHOT_TIMEOUT, connect=self._open_timeout)
        async with httpx.AsyncClient(timeout=timeout) as http:
            page = await self._get(http, http_url(self.url, path, query))
            # The first page's seq and token: later pages go on from them.
            seq = int(page["seq"])
            given = page.get("snapshot_token")
            token = given if isinstance(given, str) else None
            records: list[Any] = list(page["records"])
            while page.get("next_cursor") is not None:
                cursor = {**query, "cursor": str(page["next_cursor"])}
                page = await self._get(http, http_url(self.url, path, cursor))
                records.extend(page["records"])
        resolved = str(page.get("channel") or channel)
        model = model or self._model_for(resolved)
        if model is None:
            return Snapshot(seq, records, token)
        typed: list[BaseModel] = []
        for index, record in enumerate(records):
            try:
                typed.append(model.model_validate(record))
            except ValidationError as exc:
                what = f"snapshot record {index} of {resolved!r}"
                raise misfit(what, model, exc, record) from exc
        return Snapshot(seq, typed, token)

    async def _get(self, http: httpx.AsyncClient, url: str) -> dict[str, Any]:
        """GET a JSON object with the client's key and token; a refusal raises `Refused`."""
        renewed = False
        while True:
            if self._access_token is None and self._get_access_token is not None:
                self._access_token = await self._fresh_token()
            sent = self._access_token
            headers = {}
            if self._api_key:
                headers["apikey"] = self._api_key
            if sent:
                headers["Authorization"] = f"Bearer {sent}"
            response = await http.get(url, headers=headers)
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                body = None
            if response.status_code == 200 and isinstance(body, dict):
                return body
            if isinstance(body, dict) and body.get("code"):
                refused = refusal_of(body)
            else:
                refused = refusal(*denial(response.content, response.status_code))
            if refused.code == TOKEN_EXPIRED and self._get_access_token is not None and not renewed:
                if self._access_token == sent:  # not renewed meanwhile by the socket
                    self._access_token = await self._fresh_token()
                renewed = True
                continue
            raise refused

    def _unregister(self, sub: Subscription[Any]) -> None:
        self._subs.pop(id(sub), None)
        if self._conn is not None and sub._server_id is not None:
            self._conn._stop_feed(sub)
        sub._server_id = None

    def _retry_later(self, sub: Subscription[Any] | None, delay: float = 1.0) -> None:
        loop = asyncio.get_running_loop()
        if sub is not None:
            sub._retry_at = loop.time() + delay
        self._timers = {t for t in self._timers if t.when() > loop.time()}
        self._timers.add(loop.call_later(delay, self._dirty.set))

    def _delay(self, attempt: int) -> float:
        ceiling = min(self._reconnect_max, self._reconnect_base * 2 ** min(attempt, 32))
        return random.uniform(ceiling / 2, ceiling)

    async def _fresh_token(self) -> str:
        assert self._get_access_token is not None
        for attempt in itertools.count():
            try:
                token = await self._get_access_token()
            except Exception:
                delay = self._delay(attempt)
                logger.warning(
                    "get_access_token failed; trying again in %.1f s", delay, exc_info=True
                )
                await asyncio.sleep(delay)
                continue
            if not isinstance(token, str) or not token:
                raise TypeError(f"get_access_token must return a token string, got {token!r}")
            return token
        raise AssertionError("unreachable")

    async def _open(self) -> ClientConnection:
        renewed = False
        while True:
            if self._access_token is None and self._get_access_token is not None:
                self._access_token = await self._fresh_token()
            headers = {}
            if self._access_token:
                headers["Authorization"] = f"Bearer {self._access_token}"
            try:
                return await open_websocket(
                    self._ws_url,
                    additional_headers=headers,
                    open_timeout=self._open_timeout,
                    ping_interval=None,
                    ping_timeout=None,
                    close_timeout=2,
                    # The bridge decides how large a row is; refusing one would
                    # only fetch the same event again on every reconnect.
                    max_size=None,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                code, message = denial(exc.response.body, status)
                if code == TOKEN_EXPIRED and self._get_access_token is not None and not renewed:
                    self._access_token = await self._fresh_token()
                    renewed = True
                    continue
                if 400 <= status < 500 and status not in (408, 429):
                    raise refusal(code, f"the bridge refused the connection: {message}") from exc
                raise _ConnectionLost(f"HTTP {status} {code}: {message}") from exc
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                raise _ConnectionLost(str(exc) or type(exc).__name__) from exc

    async def _run(self) -> None:
        attempt = 0
        try:
            while True:
                self._state = ConnectionState.CONNECTING
                try:
                    ws = await self._open()
                except _ConnectionLost as exc:
                    delay = self._delay(attempt)
                    attempt += 1
                    logger.warning(
                        "cannot connect to %s (%s); retrying in %.1f s", self.url, exc, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                conn = self._conn = _Connection(self, ws)
                self._connections += 1
                self._state = ConnectionState.OPEN
                self._dirty.set()
                logger.info("connected to %s", self.url)
                try:
                    reason = await conn.run()
                finally:
                    self._conn = None
                    for sub in self._subs.values():
                        sub._server_id = None
                    await conn.close()
                if conn.answered:
                    attempt = 0
                delay = self._delay(attempt)
                attempt += 1
                logger.warning("%s; reconnecting in %.1f s", reason, delay)
                self._state = ConnectionState.CONNECTING
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Refused as exc:
            logger.error("the bridge at %s refused this client: %s", self.url, exc)
            self._fail(exc)
        except Exception as exc:
            logger.exception("the client for %s failed", self.url)
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        self._state = ConnectionState.CLOSED
        for sub in self._subs.values():
            sub._fail(exc)
        self._subs.clear()


def denial(body: bytes | None, status: int) -> tuple[str, str]:
    """The code and message of a refused handshake's JSON body."""
    try:
        parsed = orjson.loads(body or b"")
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and parsed.get("code"):
        return str(parsed["code"]), str(parsed.get("message", ""))
    text = (body or b"").decode(errors="replace").strip()
    return ("unauthorized" if status in (401, 403) else f"http_{status}"), text or f"HTTP {status}"


def connect(
    url: str,
    api_key: str | None = None,
    *,
    access_token: str | None = None,
    get_access_token: Callable[[], Awaitable[str]] | None = None,
    models: Mapping[str, type[BaseModel]] | None = None,
    registry: PluginRegistry | None = None,
    client_id: str | None = None,
    reconnect_base: float = 3.0,
    reconnect_max: float = 30.0,
    heartbeat_interval: float = 25.0,
    heartbeat_timeout: float = 10.0,
    open_timeout: float = 10.0,
    max_messages_per_second: float = 20.0,
) -> Client:
    """A client for the bridge at `url` (its http(s) base URL); use it with `async with`.

    `api_key` is the anon or service key (sent as `?apikey=`); `access_token`
    a user's token (sent as `Authorization: Bearer`), renewed through
    `get_access_token` when it expires. `models` maps channels to pydantic
    models for typed `data`; `registry` (a `PluginRegistry`) supplies the
    plugins' models. `client_id` labels every subscription on the bridge.
    The rest tune reconnects, heartbeats and pacing (module docstring).
    """
    return Client(
        url,
        api_key,
        access_token=access_token,
        get_access_token=get_access_token,
        models=models,
        registry=registry,
        client_id=client_id,
        reconnect_base=reconnect_base,
        reconnect_max=reconnect_max,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        open_timeout=open_timeout,
        max_messages_per_second=max_messages_per_second,
    )
