"""`GET /sse/{channel}`: Server-Sent Events.

`id:` is the seq (so the browser's automatic `Last-Event-ID` resumes
exactly), `event:` the event name, `data:` the same JSON as a `db_change`
WebSocket frame. A comment line every `SSE_HEARTBEAT` seconds keeps proxies
from closing an idle stream. On shutdown the last event is `reconnect`, with
a `retry:` and, as its `id:`, the seq to resume after; then the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import BadMessage, ClientError, SinceAhead
from realtime_bridge.events import Event, Frame, subscription_prefix
from realtime_bridge.hub import AHEAD_GRACE, Subscription
from realtime_bridge.pgsnapshot import PgSnapshot
from realtime_bridge.protocols.common import (
    client_error_response,
    client_ip,
    refuse_http,
    request_target,
)
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.shutdown import SERVICE_RESTART, retry_after_ms

# Characters some line readers split on besides CR and LF (Python's str.splitlines,
# httpx's aiter_lines): inside JSON strings they may be escaped, so they are.
_LINE_BREAKERS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def line_safe(text: str) -> str:
    """`text` with no character that a line reader could take for a line end."""
    if "\x85" in text or "\u2028" in text or "\u2029" in text:
        return text.translate(_LINE_BREAKERS)
    return text


def _field(text: str | None) -> str:
    """A one-line SSE field value (an event name is any text a publisher chose)."""
    return line_safe(str(text)).replace("\r", " ").replace("\n", " ")


def render_sse(event: Event, prefix: str) -> Frame:
    return (
        f"id: {event.seq}\nevent: {_field(event.event)}\ndata: {prefix}",
        line_safe(event.body),
        "\n\n",
    )


def parse_since(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        since = int(value)
    except ValueError:
        raise BadMessage(f"{name} must be a non-negative integer seq, got {value!r}") from None
    if since < 0:
        raise BadMessage(f"{name} must be a non-negative integer seq, got {value!r}")
    return since


def parse_snapshot_token(value: str | None, since: int | None) -> PgSnapshot | None:
    """The `snapshot_token` query parameter (a snapshot's token, given with its seq)."""
    if value is None or value == "":
        return None
    if since is None:
        raise BadMessage("snapshot_token needs since (the snapshot's seq)")
    return PgSnapshot.parse(value)


def _refused_stream(bridge: Bridge, exc: ClientError) -> Response:
    """A stream of one `error` event: an EventSource shows it (it cannot read a 4xx body)."""
    bridge.counters.error(exc.code)
    body = orjson.dumps(exc.frame()).decode()
    return Response(
        f"event: error\ndata: {body}\n\n",
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def sse_stream(request: Request) -> Response:
    bridge: Bridge = request.app.state.bridge
    try:
        principal, target = await request_target(bridge, request)
        channel = target.channel
        since = parse_since(request.headers.get("last-event-id"), "Last-Event-ID")
        if since is None:
            since = parse_since(request.query_params.get("since"), "since")
        seen = parse_snapshot_token(request.query_params.get("snapshot_token"), since)
    except ClientError as exc:
        bridge.counters.error(exc.code)
        return client_error_response(exc)
    refused = refuse_http(bridge, request, principal)
    if refused is not None:
        return refused
    try:
        await bridge.hub.check_since(since, AHEAD_GRACE)
    except SinceAhead as exc:
        return _refused_stream(bridge, exc)
    ip = client_ip(request)

    hub = bridge.hub
    outlet = QueueOutlet(
        bridge.settings.send_queue_max,
        stall_timeout=bridge.settings.slow_consumer_timeout,
        on_take=bridge.histograms.queue_depth.observe,
    )
    catching_up: set[asyncio.Task[None]] = set()

    def resync(sub: Subscription, earliest: int) -> None:
        body = orjson.dumps(
            {
                "type": "resync_required",
                "subscription_id": sub.id,
                "channel": channel,
                "earliest_seq": earliest,
                "next_seq": sub.last_seq,
            }
        ).decode()
        outlet.offer((f"event: resync_required\ndata: {body}\n\n",))

    def catch_up(sub: Subscription) -> None:
        task = asyncio.create_task(hub.catch_up(sub, on_resync=functools.partial(resync, sub)))
        catching_up.add(task)
        task.add_done_callback(catching_up.discard)

    heartbeat = bridge.settings.sse_heartbeat

    async def restart(sub: Subscription) -> None:
        """On shutdown: stop, then queue the final event behind what is queued and end."""
        await bridge.shutdown.wait()
        for task in list(catching_up):
            task.cancel()  # before reading the position it would move
        hub.unsubscribe(sub)
        body = orjson.dumps(
            {
                "type": "reconnect",
                "code": SERVICE_RESTART,
                "message": "the server is restarting; reconnect (Last-Event-ID resumes after "
                "this event's id)",
                "last_event_id": sub.last_seq,
            }
        ).decode()
        # `id:` moves the browser's Last-Event-ID to where this stream really
        # stopped, past events the filter left out; `retry:` is when to come back.
        outlet.end(
            (f"id: {sub.last_seq}\nretry: {retry_after_ms()}\nevent: reconnect\ndata: {body}\n\n",)
        )

    async def stream() -> AsyncIterator[str]:
        # Held from the first byte to the last: the shutdown drain waits for it.
        with bridge.shutdown.hold():
            bridge.limits.connected(ip, principal.user_id)
            bridge.counters.connections_open += 1
            bridge.counters.connections_total += 1
            sub = target.subscribe(
                hub,
                outlet,
                since=since,
                render=render_sse,
                prefix_for=subscription_prefix,
                on_lag=catch_up,
                seen=seen,
            )
            catch_up(sub)
            restarting = asyncio.create_task(restart(sub), name="sse-restart")
            try:
                # Tells the client the stream is live and which seq it starts after.
                yield f": subscribed {sub.id} at seq {hub.head}\nretry: 3000\n\n"
                while True:
                    left = principal.seconds_left()
                    if left is not None and left <= 0:
                        bridge.counters.error("token_expired")
                        body = orjson.dumps(
                            {
                                "type": "error",
                                "code": "token_expired",
                                "message": "your token expired; reconnect with a fresh one "
                                "(Last-Event-ID resumes where this stream stopped)",
                            }
                        ).decode()
                        yield f"event: error\ndata: {body}\n\n"
                        return
                    try:
                        wait = heartbeat if left is None else min(heartbeat, left)
                        frames = await asyncio.wait_for(outlet.take(), wait)
                    except TimeoutError:
                        if left is None or left > heartbeat:
                            yield ": heartbeat\n\n"
                        continue
                    if not frames:
                        if outlet.overflowed:
                            hub.stats.slow_consumers += 1
                            body = orjson.dumps(
                                {
                                    "type": "error",
                                    "code": outlet.overflowed,
                                    "message": "the stream fell too far behind; "
                                    "reconnect to resume",
                                }
                            ).decode()
                            yield f"event: error\ndata: {body}\n\n"
                        return
                    yield "".join(frames)
            finally:
                restarting.cancel()
                bridge.limits.disconnected(ip, principal.user_id)
                bridge.counters.connections_open -= 1
                hub.unsubscribe(sub)
                for task in list(catching_up):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
