"""`/realtime/v1/websocket` (and `/socket/websocket`): the Supabase Realtime protocol.

Phoenix channels as `@supabase/supabase-js` and the Python `realtime`
client speak them, so apps written for hosted Supabase connect unchanged.
One socket carries many channels, each joined on a topic
``realtime:<name>`` with a config saying what it wants:

* ``postgres_changes`` bindings: row changes of tracked tables, from the
  hub, filtered and authorized like every other subscription
  (`phoenix_changes`);
* broadcasts: between the members of the topic (`phoenix_rooms`), and, on a
  topic named after a plugin channel, that channel's typed events;
* presence: `presence_state` once, then `presence_diff`.

A private topic (``config.private``) that is not a plugin channel is
authorized as on Supabase, by the RLS policies of ``realtime.messages``
(`topic_policies`): SELECT to receive (checked at join and on every new
token), INSERT to send or track (checked on first use). The answers are
kept per channel, i.e. per (connection, topic), until the token changes.

Each channel has its own token (the join's ``access_token``, else the
socket's ``apikey``). When it expires, or a new token may no longer read
the topic, the channel is closed as Supabase closes it (a system error,
then ``phx_close``), which the official clients do not retry. A join
refused for its token or its permissions is answered with the error and
``phx_close`` too, so clients stop instead of rejoining in a loop. What a
closed channel had been served is kept for the socket: joining the topic
again with a valid token (same user) resumes from there, nothing lost; a
rejoin of a live channel carries the position over the same way.

Handshake refusals are HTTP responses with a JSON body
``{"error", "code", "message"}``; problems with one message are answered on
the channel, Supabase's way, and the socket stays up. A message over
``MAX_MESSAGE_BYTES`` (256 KiB, as Supabase) is refused on its channel
(``payload_size_exceeded``) and the socket stays up; only a frame beyond the
WebSocket limit (twice that, at least 1 MiB) closes it (1009). A client
that lets its queue sit full is cut off (1008, ``slow_consumer``).
On shutdown the socket is closed with 1012 (service restart) after what was
queued, without ``phx_close``: that is what Phoenix's socket drainer does,
and the clients then rejoin every channel once reconnected (a ``phx_close``
would make them drop it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.websockets import WebSocket

from realtime_bridge.auth import Principal, Role, TokenExpired, Unauthorized
from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ClientError, PublishError
from realtime_bridge.events import Frame
from realtime_bridge.hub import Subscription, SubscriptionState
from realtime_bridge.limits import RateLimited, TooManyConnections
from realtime_bridge.protocols.common import (
    Refusal,
    Target,
    admit_socket,
    request_token,
    resolve_target,
)
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.protocols.phoenix_changes import (
    Binding,
    BindingError,
    ColumnTypes,
    EncodeCache,
    binding_ids,
    changes_renderer,
    plugin_renderer,
    replay_start,
    resolve_bindings,
    seq_since,
)
from realtime_bridge.protocols.phoenix_messages import (
    AccessTokenPush,
    BroadcastPush,
    JoinConfig,
    PresencePush,
    parse_join,
)
from realtime_bridge.protocols.phoenix_rooms import Room, Rooms, generated_presence_key
from realtime_bridge.protocols.phoenix_wire import (
    JSON_ENCODING,
    RAW_ENCODING,
    BadFrame,
    BadPayload,
    Inbound,
    Vsn,
    binary_bytes,
    decode,
    decode_envelope,
    is_binary,
    message,
    reply,
)
from realtime_bridge.protocols.session import SocketSession
from realtime_bridge.protocols.wire import ENCODER, write_frames
from realtime_bridge.row_security import Viewer
from realtime_bridge.topic_policies import Extension, PoliciesUnavailable

logger = logging.getLogger(__name__)

TOPIC_PREFIX = "realtime:"
MAX_TOPIC_BYTES = 255
CLOSE_POLICY = 1008
CLOSE_TOO_LARGE = 1009


@dataclass
class PhoenixState:
    """What the Supabase endpoints of one app share: rooms and encodings."""

    rooms: Rooms = field(default_factory=Rooms)
    columns: ColumnTypes = field(default_factory=ColumnTypes)
    cache: EncodeCache = field(default_factory=EncodeCache)


def phoenix_state(app: Starlette) -> PhoenixState:
    """This app's shared state, made on first use."""
    state: PhoenixState | None = getattr(app.state, "phoenix", None)
    if state is None:
        bridge: Bridge | None = getattr(app.state, "bridge", None)
        state = PhoenixState(Rooms(bridge.backplane if bridge is not None else None))
        app.state.phoenix = state
    return state


class PhoenixOutlet(QueueOutlet):
    """A connection queue where an empty frame means "nothing to send" (see `NOTHING`)."""

    def offer(self, frame: Frame) -> bool:
        return True if not frame else super().offer(frame)

    async def put(self, frame: Frame) -> None:
        if frame:
            await super().put(frame)


@dataclass
class Plan:
    """What a join (or a new token) resolved to, before anything is subscribed."""

    plugin: Target | None
    bindings: list[Binding]
    changes_error: BindingError | None
    replay_after: int | None = None
    # A private topic's read permissions (realtime.messages SELECT); None: not guarded.
    reads: dict[Extension, bool] | None = None


class TopicDenied(Unauthorized):
    """A private topic whose realtime.messages policies do not let this token read it."""

    def __init__(self, sub_topic: str, *, revoked: bool = False) -> None:
        if revoked:
            text = f"You no longer have permission to read from this Channel topic: {sub_topic}"
        else:
            text = f"You do not have permissions to read from this Channel topic: {sub_topic}"
        super().__init__(text, channel=sub_topic)


# Join refusals after which the client should stop, not retry (see `_refuse_join`).
FINAL_REFUSALS = ("unauthorized", "token_expired", "forbidden")


def identity(principal: Principal) -> tuple[Role, str | None]:
    return principal.role, principal.user_id


class Channel:
    """One joined topic on one socket (a room member)."""

    def __init__(
        self,
        session: PhoenixSession,
        topic: str,
        join_ref: str | None,
        config: JoinConfig,
        principal: Principal,
        token: str | None,
    ) -> None:
        self.session = session
        self.topic = topic
        self.sub_topic = topic[len(TOPIC_PREFIX) :]
        self.join_ref = join_ref
        self.config = config
        self.private = config.private
        self.principal = principal
        self.token = token
        self.presence_enabled = config.presence.enabled
        self.presence_key = config.presence.key or generated_presence_key()
        self.plugin: Target | None = None
        # A private topic authorized by realtime.messages policies (not a plugin channel):
        # what this token may read and write there, asked once per token.
        self.guarded = False
        self.reads: dict[Extension, bool] = {}
        self.writes: dict[Extension, bool] = {}
        self.subs: dict[str, Subscription] = {}
        self.room: Room | None = None
        self.expiry: asyncio.TimerHandle | None = None

    @property
    def vsn(self) -> Vsn:
        return self.session.vsn

    @property
    def receives_broadcast(self) -> bool:
        return not self.guarded or self.reads.get(Extension.BROADCAST, False)

    @property
    def receives_presence(self) -> bool:
        return not self.guarded or self.reads.get(Extension.PRESENCE, False)

    def send(self, frame: Frame) -> None:
        self.session.send(frame)

    def positions(self) -> dict[str, int]:
        """How far each subscription was served (to carry over to a replacement)."""
        return {key: sub.last_seq for key, sub in self.subs.items()}


class PhoenixSession(SocketSession):
    """One socket: its reader, its writer and its channels."""

    def __init__(self, bridge: Bridge, websocket: WebSocket, state: PhoenixState) -> None:
        super().__init__(bridge, websocket)
        self.state = state
        self.vsn = Vsn.V1
        self.outlet = PhoenixOutlet(
            bridge.settings.send_queue_max,
            on_overflow=self._on_overflow,
            stall_timeout=bridge.settings.slow_consumer_timeout,
            on_take=bridge.histograms.queue_depth.observe,
        )
        self.channels: dict[str, Channel] = {}
        self.owners: dict[str, Channel] = {}  # subscription id → its channel
        # Channels the server closed (expired or refused token), by topic: who they were
        # for and how far they were served, so a rejoin with a fresh token resumes there.
        self.parked: OrderedDict[str, tuple[tuple[Role, str | None], dict[str, int]]] = (
            OrderedDict()
        )

    # connection ----------------------------------------------------------------

    def _closed(self) -> None:
        for channel in list(self.channels.values()):
            self._close_channel(channel)

    def _close_outlet(self) -> None:
        self.outlet.close()

    def _release(self) -> None:
        super()._release()
        self.channels.clear()  # each channel refers back to this session
        self.owners.clear()

    def _goodbye(self) -> None:
        self._closed()

    async def _admit(self) -> Refusal | None:
        ws = self.websocket
        vsn = Vsn.parse(ws.query_params.get("vsn"))
        if vsn is None:
            return Refusal(400, "bad_message", "unsupported vsn; use 1.0.0 or 2.0.0")
        self.vsn = vsn
        # Supabase reads the `x-api-key` header first, then the `apikey` parameter.
        token = ws.headers.get("x-api-key") or ws.query_params.get("apikey") or request_token(ws)
        admitted = await admit_socket(self.bridge, ws, token)
        if isinstance(admitted, Refusal):
            return admitted
        self.principal = admitted
        return None

    async def _read(self) -> None:
        while True:
            data = await self._receive()
            if data is None:
                return
            size = len(data.encode()) if isinstance(data, str) else len(data)
            if size > self.bridge.settings.max_message_bytes:
                self._too_large(data, size)
                continue
            try:
                inbound = decode(data, self.vsn)
            except BadPayload as exc:
                # Out of bounds: refused on its topic and ref, before anything handles it.
                code = exc.error.code
                self._refuse_message(exc.inbound, code, f"{code}: {exc.error.message}")
                continue
            except BadFrame as exc:
                # Supabase drops a malformed frame and keeps the socket.
                logger.debug("dropped a malformed frame: %s", exc)
                self.bridge.counters.error("bad_message")
                continue
            await self._handle(inbound)
            if self.outlet.closed:
                return

    def _buffers(self, frames: list[Frame], deflate: int | None) -> Iterator[bytes]:
        # Broadcasts are one tuple shared by every member: built (and compressed) once,
        # header included.
        if deflate is None:
            return write_frames(ENCODER, frames, shared=True)
        return write_frames(ENCODER, frames, shared=True, deflate=deflate)

    async def _send_frame(self, frame: Frame) -> None:
        text = "".join(frame)
        if is_binary(text):
            await self.websocket.send_bytes(binary_bytes(text))
        else:
            await self.websocket.send_text(text)

    def send(self, frame: Frame) -> None:
        if not self.outlet.offer(frame):
            self.outlet.overflow("slow_consumer")

    def _on_overflow(self, reason: str) -> None:
        self.bridge.hub.stats.slow_consumers += 1
        self.bridge.counters.error(reason)
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason, CLOSE_POLICY))

    async def _close(self, reason: str, code: int) -> None:
        await self._shut(reason, code)

    # dispatch ------------------------------------------------------------------

    def _reply(self, inbound: Inbound, status: str, response: dict[str, Any] | None = None) -> None:
        self.send(
            reply(self.vsn, inbound.join_ref, inbound.ref, inbound.topic, status, response or {})
        )

    def _refuse_message(self, inbound: Inbound, code: str, reason: str) -> None:
        self.bridge.counters.error(code)
        self._reply(inbound, "error", {"reason": reason})

    def _too_large(self, data: str | bytes, size: int) -> None:
        """Refuse one oversized message on its channel; the socket and its channels stay."""
        self.bridge.counters.error("payload_size_exceeded")
        limit = self.bridge.settings.max_message_bytes
        try:
            inbound = decode_envelope(data, self.vsn)
        except BadFrame:
            return
        text = f"payload_size_exceeded: a message of {size} bytes exceeds the {limit}-byte limit"
        if inbound.ref is not None:
            self._reply(inbound, "error", {"reason": text})
        channel = self.channels.get(inbound.topic)
        if (
            channel is not None
            and inbound.event == "broadcast"
            and not channel.config.broadcast.ack
        ):
            # Without ack nobody waits for the reply: say it where listeners see it.
            self._system(channel, "broadcast", "error", text)

    async def _handle(self, inbound: Inbound) -> None:
        if inbound.topic == "phoenix":
            if inbound.event == "heartbeat":
                self._reply(inbound, "ok")
            return
        try:
            self._rate.take()
        except RateLimited as exc:
            prefix = "ClientJoinRateLimitReached" if inbound.event == "phx_join" else "RateLimited"
            self._refuse_message(inbound, exc.code, f"{prefix}: {exc.message}")
            return
        if inbound.event == "phx_join":
            try:
                await self._join(inbound)
            except Exception:
                # Supabase's answer when a join fails for a reason of its own (database down).
                logger.exception("joining %s failed", inbound.topic)
                self._refuse_message(inbound, "unavailable", "Unknown Error on Channel")
            return
        channel = self.channels.get(inbound.topic)
        if channel is None or (
            inbound.join_ref is not None and inbound.join_ref != channel.join_ref
        ):
            self._reply(inbound, "error", {"reason": "unmatched topic"})
            return
        try:
            if inbound.event == "phx_leave":
                self._leave(channel, inbound)
            elif inbound.event == "broadcast":
                await self._broadcast(channel, inbound)
            elif inbound.event == "presence":
                await self._presence(channel, inbound)
            elif inbound.event == "access_token":
                await self._access_token(channel, inbound)
            else:
                self._reply(inbound, "error", {"reason": f"unknown event {inbound.event!r}"})
        except Exception:
            # The channel "crashed": Phoenix tells the client with phx_error, the socket lives.
            logger.exception("channel %s failed on %s", channel.topic, inbound.event)
            self._close_channel(channel)
            self.send(
                message(
                    self.vsn, channel.join_ref, channel.join_ref, channel.topic, "phx_error", {}
                )
            )

    # joining -------------------------------------------------------------------

    async def _join(self, inbound: Inbound) -> None:
        topic = inbound.topic
        join_ref = inbound.join_ref or inbound.ref
        if not topic.startswith(TOPIC_PREFIX) or topic == TOPIC_PREFIX:
            self._refuse_message(
                inbound, "bad_message", "TopicNameRequired: You must provide a topic name"
            )
            return
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            self._refuse_message(
                inbound, "bad_message", f"InvalidTopic: topics are at most {MAX_TOPIC_BYTES} bytes"
            )
            return
        limit = self.bridge.settings.max_subscriptions_per_connection
        if topic not in self.channels and len(self.channels) >= limit:
            self._refuse_message(
                inbound, "too_many_subscriptions", "ChannelRateLimitReached: Too many channels"
            )
            return
        payload, problem = parse_join(inbound.payload)
        if problem is not None:
            logger.info("join of %s with an invalid payload (%s); using defaults", topic, problem)
        token = payload.token
        try:
            principal = await self.bridge.auth.verify(token) if token else self.principal
            if principal.expired():
                raise TokenExpired("token has expired; send a fresh one")
        except ClientError as exc:
            self._refuse_join(inbound, exc.code, f"InvalidJWTToken: {_token_problem(exc, token)}")
            return
        sub_topic = topic[len(TOPIC_PREFIX) :]
        try:
            plan = await self._plan(sub_topic, payload.config, principal)
        except TopicDenied as exc:
            self._refuse_join(inbound, exc.code, f"Unauthorized: {exc.message}")
            return
        except Unauthorized as exc:
            self._refuse_join(
                inbound,
                exc.code,
                "Unauthorized: You do not have permissions to read from this Channel topic: "
                f"{sub_topic} ({exc.message})",
            )
            return
        except PoliciesUnavailable as exc:
            logger.warning("authorizing %s failed: %s", topic, exc)
            self._refuse_message(
                inbound,
                "unavailable",
                "UnableToConnectToProject: Realtime was unable to connect to the project database",
            )
            return
        try:
            # The socket counts for each user it joins channels for (once per user).
            self.seat.hold(principal.user_id)
        except TooManyConnections as exc:
            self._refuse_message(inbound, exc.code, f"too_many_connections: {exc.message}")
            return
        resume: dict[str, int] = {}
        old = self.channels.get(topic)
        parked = self.parked.pop(topic, None)
        if old is not None:
            # A rejoin: the old channel goes (quietly: clients ignore a close for an old
            # join_ref, or worse, close the new one), its position carries over.
            if identity(old.principal) == identity(principal):
                resume = old.positions()
            self._close_channel(old)
        elif parked is not None and parked[0] == identity(principal):
            # The server closed this topic's channel (its token expired, say): resume it.
            resume = parked[1]
        channel = Channel(self, topic, join_ref, payload.config, principal, token)
        self.channels[topic] = channel
        if plan.reads is not None:
            channel.guarded = True
            channel.reads = plan.reads
        channel.room = self.state.rooms.join(channel.private, sub_topic, channel)
        self._subscribe(channel, plan, resume)
        raws = payload.config.postgres_changes
        ids = binding_ids(raws)
        echo = [{**raw, "id": binding_id} for raw, binding_id in zip(raws, ids, strict=True)]
        self._reply(inbound, "ok", {"postgres_changes": echo})
        if channel.presence_enabled and channel.receives_presence:
            channel.room.send_state(channel)
        if raws:
            self._changes_status(channel, plan)
            if channel is not self.channels.get(topic):
                return
        self._start(channel)

    def _refuse_join(self, inbound: Inbound, code: str, reason: str) -> None:
        """Refuse a join for its token or permissions, so that clients stop asking.

        The error reply is Supabase's; the ``phx_close`` after it is ours: both
        official clients retry a refused join forever (with the same token), and a
        close is what makes them stop (supabase-js reports CLOSED, realtime-py too).
        A live channel on the topic (this was a rejoin) is closed with it.
        """
        self._refuse_message(inbound, code, reason)
        if code not in FINAL_REFUSALS:
            return
        old = self.channels.get(inbound.topic)
        if old is not None:
            self._park(old)
            self._close_channel(old)
        join_ref = inbound.join_ref or inbound.ref
        self.send(message(self.vsn, join_ref, join_ref, inbound.topic, "phx_close", {}))

    async def _read_grants(
        self, sub_topic: str, config: JoinConfig, principal: Principal
    ) -> dict[Extension, bool]:
        """What `principal` may read on a private topic; `TopicDenied` when nothing."""
        wanted = [Extension.BROADCAST]
        if config.presence.enabled:
            wanted.append(Extension.PRESENCE)
        reads = await self.bridge.topic_policies.can_read(
            principal, sub_topic, wanted, self._headers()
        )
        if not any(reads.values()):
            raise TopicDenied(sub_topic)
        return reads

    def _headers(self) -> dict[str, str]:
        return dict(self.websocket.headers.items())

    async def _plan(self, sub_topic: str, config: JoinConfig, principal: Principal) -> Plan:
        """Resolve and authorize what a channel reads; raises `Unauthorized` for the topic."""
        bridge = self.bridge
        plugin: Target | None = None
        reads: dict[Extension, bool] | None = None
        if sub_topic in bridge.registry.by_channel or bridge.registry.room_for(sub_topic):
            # A plugin channel is authorized by its plugin (row scope included), a room by its
            # ownership check, private or not.
            plugin = await resolve_target(
                bridge, principal, channel=sub_topic, table=None, filter_spec=None
            )
        elif config.private:
            reads = await self._read_grants(sub_topic, config, principal)
        raws = config.postgres_changes
        bindings: list[Binding] = []
        error: BindingError | None = None
        try:
            bindings = await resolve_bindings(
                bridge, principal, raws, binding_ids(raws), self.state.columns
            )
        except BindingError as exc:
            error = exc
        plan = Plan(plugin, bindings, error, reads=reads)
        replay = config.broadcast.replay
        if plugin is not None and replay is not None:
            after = await seq_since(bridge, replay.since)
            if after is not None:
                plan.replay_after = await replay_start(bridge, plugin, after, replay.limit)
        return plan

    def _subscribe(self, channel: Channel, plan: Plan, resume: dict[str, int]) -> None:
        """Register the plan's hub subscriptions (no await: nothing is missed meanwhile)."""
        hub = self.bridge.hub
        channel.plugin = plan.plugin
        wanted: list[tuple[str, Target, Any, int | None]] = []
        if plan.plugin is not None:
            since = resume.get("plugin", plan.replay_after)
            replayed_upto = hub.head if plan.replay_after is not None else 0
            render = plugin_renderer(self.vsn, channel.topic, replayed_upto, self.state.cache)
            wanted.append(("plugin", plan.plugin, render, since))
        if plan.changes_error is None:
            for binding in plan.bindings:
                for source in binding.sources:
                    key = f"pg:{binding.id}:{source.target.channel}"
                    render = changes_renderer(
                        self.vsn, channel.topic, binding, source, self.state.cache
                    )
                    wanted.append((key, source.target, render, resume.get(key)))
        for key, target, render, since in wanted:
            sub = target.subscribe(
                hub, self.outlet, since=since, render=render, on_lag=self._catch_up
            )
            channel.subs[key] = sub
            self.owners[sub.id] = channel

    def _start(self, channel: Channel) -> None:
        for sub in channel.subs.values():
            self._catch_up(sub)
        self._watch_expiry(channel)

    def _changes_status(self, channel: Channel, plan: Plan) -> None:
        if plan.changes_error is not None:
            if plan.changes_error.code in FINAL_REFUSALS:
                # A table this token may not read: Supabase would just send nothing, we
                # say so; and close, since realtime-py rejoins on a system error forever.
                self.bridge.counters.error(plan.changes_error.code)
                self._system(channel, "postgres_changes", "error", plan.changes_error.message)
                self._park(channel)
                self._close_channel(channel)
                self._send_close(channel)
                return
            self.bridge.counters.error(plan.changes_error.code)
            self._system(channel, "postgres_changes", "error", plan.changes_error.message)
        else:
            self._system(channel, "postgres_changes", "ok", "Subscribed to PostgreSQL")

    def _system(self, channel: Channel, extension: str, status: str, text: str) -> None:
        payload = {
            "extension": extension,
            "status": status,
            "message": text,
            "channel": channel.sub_topic,
        }
        self.send(message(self.vsn, channel.join_ref, None, channel.topic, "system", payload))

    def _unsubscribe_all(self, channel: Channel) -> None:
        for sub in channel.subs.values():
            self.bridge.hub.unsubscribe(sub)
            self.owners.pop(sub.id, None)
            task = self.replays.pop(sub.id, None)
            if task is not None:
                task.cancel()
        channel.subs.clear()

    def _park(self, channel: Channel) -> None:
        """Remember how far a channel the server closes was served (see `parked`)."""
        if self.channels.get(channel.topic) is not channel or not channel.subs:
            return
        self.parked.pop(channel.topic, None)
        self.parked[channel.topic] = (identity(channel.principal), channel.positions())
        while len(self.parked) > self.bridge.settings.max_subscriptions_per_connection:
            self.parked.popitem(last=False)

    def _close_channel(self, channel: Channel) -> None:
        if self.channels.get(channel.topic) is channel:
            self.seat.release(channel.principal.user_id)
        self._unsubscribe_all(channel)
        if channel.expiry is not None:
            channel.expiry.cancel()
            channel.expiry = None
        self.state.rooms.leave(channel.private, channel.sub_topic, channel)
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]

    def _leave(self, channel: Channel, inbound: Inbound) -> None:
        self._reply(inbound, "ok")
        self._close_channel(channel)
        self._send_close(channel)

    def _send_close(self, channel: Channel) -> None:
        self.send(
            message(self.vsn, channel.join_ref, channel.join_ref, channel.topic, "phx_close", {})
        )

    # broadcast and presence -------------------------------------------------------

    async def _broadcast(self, channel: Channel, inbound: Inbound) -> None:
        try:
            push = BroadcastPush.model_validate(inbound.payload)
        except ValidationError as exc:
            reason = exc.errors(include_url=False)[0].get("msg", "invalid")
            self._refuse_message(inbound, "bad_message", f"bad_message: broadcast {reason}")
            return
        ack = channel.config.broadcast.ack
        if channel.guarded and not await self._may_write(channel, Extension.BROADCAST):
            # Supabase drops it without a word; with ack we say why (else it times out).
            self.bridge.counters.error("forbidden")
            if ack:
                self._reply(
                    inbound,
                    "error",
                    {
                        "reason": "Unauthorized: You do not have permissions to write to this "
                        f"Channel topic: {channel.sub_topic}"
                    },
                )
            return
        if channel is not self.channels.get(channel.topic):
            return
        if channel.plugin is not None:
            await self._publish(channel, inbound, push, ack)
            return
        if inbound.raw is not None:
            raw, encoding = inbound.raw, inbound.raw_encoding
        else:
            raw, encoding = orjson.dumps(push.payload), JSON_ENCODING
        assert channel.room is not None
        if ack:
            self._reply(inbound, "ok")
        self.state.rooms.broadcast(
            channel.private,
            channel.sub_topic,
            push.event,
            raw,
            encoding,
            sender=channel,
            include_sender=channel.config.broadcast.self_,
        )

    async def _publish(
        self, channel: Channel, inbound: Inbound, push: BroadcastPush, ack: bool
    ) -> None:
        """A broadcast on a plugin channel's topic goes into the log, for the service key only."""
        if not channel.principal.is_service:
            self._refuse_message(
                inbound,
                "forbidden",
                f"Unauthorized: only the service key may publish on {channel.sub_topic!r}, "
                "a channel backed by the database",
            )
            return
        if inbound.raw_encoding == RAW_ENCODING:
            self._refuse_message(
                inbound, "invalid_payload", "invalid_payload: binary payloads cannot be logged"
            )
            return
        try:
            await self.bridge.publish(channel.sub_topic, push.event, push.payload, wait=0)
        except ClientError as exc:
            self._refuse_message(inbound, exc.code, f"{exc.code}: {exc.message}")
            return
        except PublishError as exc:
            self._refuse_message(inbound, "unavailable", f"unavailable: {exc}")
            return
        if ack:
            self._reply(inbound, "ok")

    async def _may_write(self, channel: Channel, extension: Extension) -> bool:
        """The INSERT policy's answer for this channel's token, asked once per token."""
        known = channel.writes.get(extension)
        if known is not None:
            return known
        token = channel.token
        try:
            allowed = await self.bridge.topic_policies.can_write(
                channel.principal, channel.sub_topic, extension, self._headers()
            )
        except PoliciesUnavailable as exc:
            logger.warning("authorizing a write on %s failed: %s", channel.topic, exc)
            return False
        if channel.token == token:
            channel.writes[extension] = allowed
        return allowed

    async def _presence(self, channel: Channel, inbound: Inbound) -> None:
        try:
            push = PresencePush.model_validate(inbound.payload)
        except ValidationError as exc:
            reason = exc.errors(include_url=False)[0].get("msg", "invalid")
            self._refuse_message(inbound, "bad_message", f"bad_message: presence {reason}")
            return
        room = channel.room
        assert room is not None
        if push.event == "track":
            if not isinstance(push.payload, dict):
                self._reply(inbound, "error", {"reason": "Presence track payload must be a map"})
                return
            if channel.guarded:
                if not await self._may_write(channel, Extension.PRESENCE):
                    self.bridge.counters.error("forbidden")
                    self._reply(
                        inbound,
                        "error",
                        {
                            "reason": "Unauthorized: You do not have permissions to track "
                            f"presence on this Channel topic: {channel.sub_topic}"
                        },
                    )
                    return
                if Extension.PRESENCE not in channel.reads:
                    # Presence was off at join, so its read policy was not asked yet.
                    try:
                        reads = await self.bridge.topic_policies.can_read(
                            channel.principal, channel.sub_topic, [Extension.PRESENCE]
                        )
                    except PoliciesUnavailable:
                        reads = {Extension.PRESENCE: False}
                    channel.reads.update(reads)
                if channel is not self.channels.get(channel.topic):
                    return
            room.track(channel, channel.presence_key, push.payload)
            if not channel.presence_enabled:
                # Tracking turns presence on; the state comes first (clients buffer diffs).
                channel.presence_enabled = True
                if channel.receives_presence:
                    room.send_state(channel)
            self._reply(inbound, "ok")
        elif push.event == "untrack":
            room.untrack(channel)
            self._reply(inbound, "ok")
        else:
            self._refuse_message(
                inbound, "bad_message", "bad_message: presence event must be track or untrack"
            )

    # tokens ----------------------------------------------------------------------

    async def _access_token(self, channel: Channel, inbound: Inbound) -> None:
        try:
            token = AccessTokenPush.model_validate(inbound.payload).access_token
        except ValidationError:
            return
        # Supabase ignores opaque keys, nulls and repeats, and never replies.
        if not token or token.startswith("sb_") or token == channel.token:
            return
        try:
            principal = await self.bridge.auth.verify(token)
        except ClientError as exc:
            self._park(channel)
            self._end(channel, exc.code, _token_problem(exc, token))
            return
        if channel is not self.channels.get(channel.topic):
            return
        reads: dict[Extension, bool] | None = None
        if channel.guarded:
            # A new token is a new caller for the policies: asked again, as Supabase does.
            wanted = list(channel.reads) or [Extension.BROADCAST]
            try:
                reads = await self.bridge.topic_policies.can_read(
                    principal, channel.sub_topic, wanted, self._headers()
                )
            except PoliciesUnavailable as exc:
                logger.warning("re-authorizing %s failed: %s", channel.topic, exc)
                self._park(channel)
                self._end(
                    channel, "unavailable", "Realtime was unable to connect to the project database"
                )
                return
            if channel is not self.channels.get(channel.topic):
                return
            revoked = any(channel.reads.get(e) and not reads.get(e) for e in reads)
            if revoked or not any(reads.values()):
                self._park(channel)
                denied = TopicDenied(channel.sub_topic, revoked=revoked)
                self._end(channel, denied.code, denied.message)
                return
        if identity(principal) == identity(channel.principal):
            channel.token = token
            channel.principal = principal
            for sub in channel.subs.values():
                if sub.viewer is not None:
                    # Row security asks with the new claims from the next change on.
                    sub.viewer = Viewer.of(principal)
            if reads is not None:
                channel.reads, channel.writes = reads, {}
            self._watch_expiry(channel)
            return
        # Another identity: what it may read is decided again, from where the channel was.
        try:
            plan = await self._plan(channel.sub_topic, channel.config, principal)
        except Unauthorized as exc:
            self._park(channel)
            self._end(channel, exc.code, f"Unauthorized: {exc.message}")
            return
        except PoliciesUnavailable as exc:
            logger.warning("re-authorizing %s failed: %s", channel.topic, exc)
            self._end(
                channel, "unavailable", "Realtime was unable to connect to the project database"
            )
            return
        if channel is not self.channels.get(channel.topic):
            return
        try:
            self.seat.switch(channel.principal.user_id, principal.user_id)
        except TooManyConnections as exc:
            # Refused: the channel carries on as before, under its old token.
            self.bridge.counters.error(exc.code)
            self._system(channel, "system", "error", f"too_many_connections: {exc.message}")
            return
        channel.token = token
        resume = channel.positions()
        self._unsubscribe_all(channel)
        channel.principal = principal
        if plan.reads is not None:
            channel.reads, channel.writes = plan.reads, {}
        self._subscribe(channel, plan, resume)
        if plan.changes_error is not None:
            self._changes_status(channel, plan)
            if channel is not self.channels.get(channel.topic):
                return
        if channel.presence_enabled and channel.receives_presence and channel.room is not None:
            channel.room.send_state(channel)
        self._start(channel)

    def _end(self, channel: Channel, code: str, text: str) -> None:
        """A fatal channel error: a system message, then phx_close (Supabase's shutdown)."""
        self.bridge.counters.error(code)
        self._system(channel, "system", "error", text)
        self._close_channel(channel)
        self._send_close(channel)

    def _watch_expiry(self, channel: Channel) -> None:
        if channel.expiry is not None:
            channel.expiry.cancel()
            channel.expiry = None
        left = channel.principal.seconds_left()
        if left is not None:
            channel.expiry = asyncio.get_running_loop().call_later(
                max(left, 0), self._expired, channel
            )

    def _expired(self, channel: Channel) -> None:
        """The token ran out: closed as Supabase closes it; a fresh join resumes it."""
        channel.expiry = None
        if self.channels.get(channel.topic) is not channel:
            return
        expires_at = channel.principal.expires_at or time.time()
        ago = max(int(time.time() - expires_at), 0)
        self._park(channel)
        self._end(channel, "token_expired", f"Token has expired {ago} seconds ago")

    # catching up -----------------------------------------------------------------

    def _catch_up(self, sub: Subscription) -> None:
        """Serve `sub` from the replay window until it is live (also after lagging)."""
        if sub.state is not SubscriptionState.CATCHING_UP:
            return
        previous = self.replays.get(sub.id)
        if previous is not None:
            # A resumed subscription whose earlier catch-up is still waiting for room.
            previous.cancel()
        channel = self.owners.get(sub.id)

        def resync(earliest: int) -> None:
            if channel is not None:
                self._system(
                    channel,
                    "system",
                    "error",
                    f"resync_required: events before seq {earliest} are no longer kept; "
                    "reload a snapshot",
                )

        task = asyncio.create_task(
            self.bridge.hub.catch_up(sub, on_resync=resync), name=f"phoenix-catch-up-{sub.id}"
        )
        self.replays[sub.id] = task
        task.add_done_callback(functools.partial(self._replay_done, sub))

    def _replay_done(self, sub: Subscription, task: asyncio.Task[None]) -> None:
        if self.replays.get(sub.id) is task:
            del self.replays[sub.id]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        logger.error("catching up %s failed", sub.id, exc_info=exc)
        channel = self.owners.pop(sub.id, None)
        self.bridge.hub.unsubscribe(sub)
        if channel is not None:
            for key, value in list(channel.subs.items()):
                if value is sub:
                    del channel.subs[key]
            self.bridge.counters.error("replay_failed")
            self._system(
                channel,
                "system",
                "error",
                "replay_failed: missed events could not be read; join the channel again",
            )


def _token_problem(exc: ClientError, token: str | None) -> str:
    """Supabase's wording for a token it refuses."""
    if isinstance(exc, TokenExpired) and token:
        try:
            exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
        except jwt.PyJWTError:
            exp = None
        if isinstance(exp, int | float):
            return f"Token has expired {max(int(time.time() - exp), 0)} seconds ago"
        return "Token has expired"
    return exc.message


async def socket(websocket: WebSocket) -> None:
    bridge: Bridge = websocket.app.state.bridge
    await PhoenixSession(bridge, websocket, phoenix_state(websocket.app)).run()
