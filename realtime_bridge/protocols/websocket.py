"""`/ws/db_subscriptions`: the bridge's own JSON WebSocket protocol.

With `?batch=1` in the URL, frames queued together are sent as one JSON
array frame (in order); a lone frame is still a plain object.

Client frames: subscribe, unsubscribe, ping. Server frames: subscribed,
db_change, unsubscribed, pong, resync_required, error, reconnect. Errors keep
the connection open, except `too_large` and `slow_consumer`, which close it
(close code 1009 and 1008, reason = the code). On shutdown the last frame is
`reconnect`, carrying each subscription's `since`, then close code 1012.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.websockets import WebSocket

from realtime_bridge.auth import TokenExpired
from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import BadMessage, ClientError, UnknownSubscription
from realtime_bridge.events import Frame, subscription_prefix
from realtime_bridge.hub import AHEAD_GRACE, Subscription, SubscriptionState
from realtime_bridge.limits import TooManySubscriptions
from realtime_bridge.market import PRICE_CHANNEL, PriceWatch
from realtime_bridge.pgsnapshot import PgSnapshot
from realtime_bridge.protocols import bounds
from realtime_bridge.protocols.common import (
    Refusal,
    admit_socket,
    request_token,
    resolve_target,
    validation_message,
)
from realtime_bridge.protocols.messages import (
    CLIENT_MESSAGE,
    MESSAGE_TYPES,
    AccessToken,
    Ping,
    Subscribe,
    Unsubscribe,
)
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.protocols.prices import max_rate_of, price_subscription_id, symbols_of
from realtime_bridge.protocols.session import SocketSession
from realtime_bridge.protocols.wire import ENCODER, write_batches, write_frames
from realtime_bridge.row_security import Viewer
from realtime_bridge.shutdown import SERVICE_RESTART, retry_after_ms

logger = logging.getLogger(__name__)

CLOSE_TOO_LARGE = 1009
CLOSE_POLICY = 1008
BATCH_VALUES = {"1": True, "true": True, "0": False, "false": False}


def dumps(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


class WebSocketSession(SocketSession):
    """One client connection: its reader loop, its writer and its subscriptions."""

    def __init__(self, bridge: Bridge, websocket: WebSocket) -> None:
        super().__init__(bridge, websocket)
        self.outlet = QueueOutlet(
            bridge.settings.send_queue_max,
            on_overflow=self._on_overflow,
            stall_timeout=bridge.settings.slow_consumer_timeout,
            on_take=bridge.histograms.queue_depth.observe,
        )
        self.subscriptions: dict[str, Subscription] = {}
        # price-updates: conflated, outside the hub (see `market`).
        self.price_watches: dict[str, PriceWatch] = {}
        self._expiry: asyncio.TimerHandle | None = None
        # Negotiated with `?batch=1`: frames queued together go out as one JSON array.
        self.batch = False

    async def _admit(self) -> Refusal | None:
        batch = self.websocket.query_params.get("batch", "0")
        if batch not in BATCH_VALUES:
            return Refusal(400, "bad_message", "batch must be 1 (array frames) or 0")
        self.batch = BATCH_VALUES[batch]
        admitted = await admit_socket(self.bridge, self.websocket, request_token(self.websocket))
        if isinstance(admitted, Refusal):
            return admitted
        self.principal = admitted
        return None

    def _opened(self) -> None:
        self._watch_expiry()

    def _closed(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for sub in self.subscriptions.values():
            self.bridge.hub.unsubscribe(sub)
        for watch in self.price_watches.values():
            self.bridge.market.unwatch(watch)

    def _close_outlet(self) -> None:
        self.outlet.close()

    def _release(self) -> None:
        super()._release()
        for sub in self.subscriptions.values():
            sub.on_lag = None  # the bound `_catch_up`: a cycle back to this session
        self.subscriptions.clear()
        self._expiry = None

    def _goodbye(self) -> Frame:
        """`reconnect`: where each subscription stopped, to subscribe again with as `since`."""
        positions = []
        for sub in self.subscriptions.values():
            self.bridge.hub.unsubscribe(sub)  # its last_seq is final from here on
            position: dict[str, Any] = {
                "subscription_id": sub.id,
                "channel": sub.channel,
                "since": sub.last_seq,
            }
            if sub.seen is not None:
                position["snapshot_token"] = sub.seen.text()
            if sub.client_id is not None:
                position["client_id"] = sub.client_id
            positions.append(position)
        frame = {
            "type": "reconnect",
            "code": SERVICE_RESTART,
            "message": "the server is restarting; reconnect and subscribe again, each "
            "subscription with its 'since' to miss nothing",
            "retry_after_ms": retry_after_ms(),
            "subscriptions": positions,
        }
        return (dumps(frame),)

    async def _read(self) -> None:
        while True:
            payload = await self._receive()
            if payload is None:
                return
            size = self._oversize(payload)
            if size is not None:
                limit = self.bridge.settings.max_frame_bytes
                await self._fatal(
                    "too_large",
                    f"frame of {size} bytes exceeds the {limit}-byte limit",
                    CLOSE_TOO_LARGE,
                )
                return
            try:
                self._rate.take()
                await self._handle(payload)
            except ClientError as exc:
                self._send(exc.frame())
                self.bridge.counters.error(exc.code)
            if self.outlet.closed:
                return

    async def _handle(self, payload: str | bytes) -> None:
        data = bounds.loads(payload, "frame")
        if not isinstance(data, dict):
            raise BadMessage("frame must be a JSON object with a 'type'")
        kind = data.get("type")
        if kind not in MESSAGE_TYPES:
            raise BadMessage(
                f"unknown message type {kind!r}; expected one of {', '.join(MESSAGE_TYPES)}"
                if kind is not None
                else "missing 'type'; expected one of " + ", ".join(MESSAGE_TYPES)
            )
        try:
            message = CLIENT_MESSAGE.validate_python(data)
        except ValidationError as exc:
            raise BadMessage(validation_message(exc), message_type=kind) from exc
        if isinstance(message, Subscribe):
            try:
                if message.token is not None:
                    await self._use_token(message.token, reply=False)
                await self._subscribe(message)
            except ClientError as exc:
                # Lets a client match the error to the subscribe it answers.
                if message.client_id is not None:
                    exc.details.setdefault("client_id", message.client_id)
                raise
        elif isinstance(message, Unsubscribe):
            self._unsubscribe(message)
        elif isinstance(message, Ping):
            self._send({"type": "pong"})
        elif isinstance(message, AccessToken):
            await self._use_token(message.token, reply=True)

    async def _subscribe(self, message: Subscribe) -> None:
        hub = self.bridge.hub
        if self.principal.expired():
            raise TokenExpired("the connection's token has expired; send an access_token frame")
        limit = self.bridge.settings.max_subscriptions_per_connection
        if len(self.subscriptions) + len(self.price_watches) >= limit:
            raise TooManySubscriptions(f"at most {limit} subscriptions per connection")
        if message.channel == PRICE_CHANNEL:
            self._subscribe_prices(message)
            return
        target = await resolve_target(
            self.bridge,
            self.principal,
            channel=message.channel,
            table=message.table,
            filter_spec=message.filter_spec,
        )
        channel, flt = target.channel, target.filter
        seen = PgSnapshot.parse(message.snapshot_token) if message.snapshot_token else None
        await hub.check_since(message.since, AHEAD_GRACE)
        sub = target.subscribe(
            hub,
            self.outlet,
            since=message.since,
            prefix_for=subscription_prefix,
            client_id=message.client_id,
            on_lag=self._catch_up,
            seen=seen,
        )
        self.subscriptions[sub.id] = sub
        reply: dict[str, Any] = {
            "type": "subscribed",
            "subscription_id": sub.id,
            "channel": channel,
            "seq": hub.head,
        }
        if message.client_id is not None:
            reply["client_id"] = message.client_id
        if flt.conditions:
            reply["filter"] = flt.describe()
        self._send(reply)
        self._catch_up(sub)

    def _subscribe_prices(self, message: Subscribe) -> None:
        """Watch some symbols: their current prices now, then the latest of each as it comes."""
        settings = self.bridge.settings
        symbols = symbols_of(message.filter_spec, settings.price_max_symbols)
        max_rate = max_rate_of(message.max_rate, settings.price_max_rate)
        sub_id = price_subscription_id()
        reply: dict[str, Any] = {
            "type": "subscribed",
            "subscription_id": sub_id,
            "channel": PRICE_CHANNEL,
            "seq": message.since or 0,
            "symbols": sorted(symbols),
            "max_rate": max_rate,
        }
        if message.client_id is not None:
            reply["client_id"] = message.client_id
        self._send(reply)  # before the first prices, which the writer pulls later
        watch = self.bridge.market.watch(
            symbols,
            prefix=subscription_prefix(sub_id),
            wake=self.outlet.wake,
            max_rate=max_rate,
            seq=message.since or 0,
        )
        self.price_watches[sub_id] = watch
        self.outlet.attach(watch)

    # tokens -----------------------------------------------------------------

    async def _use_token(self, token: str, *, reply: bool) -> None:
        """Switch the connection to a fresh token; resume what expiry paused."""
        principal = await self.bridge.auth.verify(token)
        # The connection counts for the user it acts for: moved first, so a
        # user at its limit is refused and the connection stays as it was.
        self.seat.switch(self.principal.user_id, principal.user_id)
        if principal.user_id != self.principal.user_id or principal.role != self.principal.role:
            # A different identity may not inherit row-scoped subscriptions.
            for sub in list(self.subscriptions.values()):
                if sub.owner is not None or sub.viewer is not None or not principal.is_service:
                    self._drop(sub, "the new token belongs to someone else")
        else:
            # The same user, new claims: row security asks with these from the next change.
            for sub in self.subscriptions.values():
                if sub.viewer is not None:
                    sub.viewer = Viewer.of(principal)
        self.principal = principal
        self._watch_expiry()
        for sub in self.subscriptions.values():
            if sub.state is SubscriptionState.PAUSED:
                self.bridge.hub.resume(sub)
                self._catch_up(sub)
        if reply:
            self._send({"type": "access_token", "status": "ok", "expires_at": principal.expires_at})

    def _drop(self, sub: Subscription, reason: str) -> None:
        self.subscriptions.pop(sub.id, None)
        self.bridge.hub.unsubscribe(sub)
        task = self.replays.pop(sub.id, None)
        if task is not None:
            task.cancel()
        self._send(
            {
                "type": "error",
                "code": "unauthorized",
                "message": f"subscription ended: {reason}",
                "subscription_id": sub.id,
            }
        )

    def _watch_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        left = self.principal.seconds_left()
        if left is not None:
            self._expiry = asyncio.get_running_loop().call_later(max(left, 0), self._expired)

    def _expired(self) -> None:
        self._expiry = None
        for sub in self.subscriptions.values():
            self.bridge.hub.pause(sub)
        self.bridge.counters.error("token_expired")
        self._send(
            {
                "type": "error",
                "code": "token_expired",
                "message": "your token expired; subscriptions are paused until you send "
                '{"type":"access_token","token":"..."}',
            }
        )

    def _catch_up(self, sub: Subscription) -> None:
        """Serve `sub` from the replay window until it is live (also after lagging)."""

        def resync(earliest: int) -> None:
            self._send(
                {
                    "type": "resync_required",
                    "subscription_id": sub.id,
                    "channel": sub.channel,
                    "earliest_seq": earliest,
                    "next_seq": sub.last_seq,
                }
            )

        previous = self.replays.get(sub.id)
        if previous is not None:
            # A catch-up still waiting for room (paused, then resumed): one
            # task per subscription, or events could be sent twice.
            previous.cancel()
        task = asyncio.create_task(
            self.bridge.hub.catch_up(sub, on_resync=resync), name=f"catch-up-{sub.id}"
        )
        self.replays[sub.id] = task
        task.add_done_callback(functools.partial(self._replay_done, sub.id))

    def _replay_done(self, sub_id: str, task: asyncio.Task[None]) -> None:
        if self.replays.get(sub_id) is task:
            del self.replays[sub_id]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("catching up %s failed", sub_id, exc_info=exc)
            self._send(
                {
                    "type": "error",
                    "code": "replay_failed",
                    "message": "could not read missed events; subscribe again with 'since'",
                    "subscription_id": sub_id,
                }
            )
            sub = self.subscriptions.pop(sub_id, None)
            if sub is not None:
                self.bridge.hub.unsubscribe(sub)

    def _unsubscribe(self, message: Unsubscribe) -> None:
        watch = self.price_watches.pop(message.subscription_id, None)
        if watch is not None:
            self.outlet.detach(watch)
            self.bridge.market.unwatch(watch)
            self._send(
                {
                    "type": "unsubscribed",
                    "subscription_id": message.subscription_id,
                    "channel": PRICE_CHANNEL,
                }
            )
            return
        sub = self.subscriptions.pop(message.subscription_id, None)
        if sub is None:
            raise UnknownSubscription(
                f"no subscription {message.subscription_id!r} on this connection",
                subscription_id=message.subscription_id,
            )
        self.bridge.hub.unsubscribe(sub)
        task = self.replays.pop(sub.id, None)
        if task is not None:
            task.cancel()
        self._send({"type": "unsubscribed", "subscription_id": sub.id, "channel": sub.channel})

    def _send(self, frame: dict[str, Any]) -> None:
        if not self.outlet.offer((dumps(frame),)):
            self.outlet.overflow("slow_consumer")

    def _buffers(self, frames: list[Frame], deflate: int | None) -> Iterator[bytes]:
        if self.batch:
            if deflate is None:
                return write_batches(ENCODER, frames)
            return write_batches(ENCODER, frames, deflate)
        if deflate is None:
            return write_frames(ENCODER, frames, shared=False)
        return write_frames(ENCODER, frames, shared=False, deflate=deflate)

    async def _send_frame(self, frame: Frame) -> None:
        await self.websocket.send_text("".join(frame))

    def _on_overflow(self, reason: str) -> None:
        self.bridge.hub.stats.slow_consumers += 1
        self.bridge.counters.error(reason)
        if self._closing is None:
            self._closing = asyncio.create_task(
                self._close_with(
                    reason,
                    "the connection fell too far behind; reconnect and resume with 'since'",
                    CLOSE_POLICY,
                )
            )

    async def _fatal(self, code: str, message: str, close_code: int) -> None:
        self.bridge.counters.error(code)
        self.outlet.close()
        await self._close_with(code, message, close_code)

    async def _close_with(self, code: str, message: str, close_code: int) -> None:
        frame = dumps({"type": "error", "code": code, "message": message})
        await self._shut(code, close_code, frame)


async def db_subscriptions(websocket: WebSocket) -> None:
    bridge: Bridge = websocket.app.state.bridge
    await WebSocketSession(bridge, websocket).run()
