"""Fuzzing the WebSocket edge: any frame gets a known answer, and the server stays up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime_bridge.testing import RunningBridge, TestDatabase, run_bridge
from tests.conftest import make_settings

KNOWN_REPLIES = {"error", "subscribed", "pong", "unsubscribed", "access_token"}
KNOWN_CODES = {
    "bad_message",
    "unknown_channel",
    "unknown_table",
    "invalid_filter",
    "unknown_subscription",
    "unauthorized",
    "token_expired",
    "too_large",
    "too_many_subscriptions",
    "rate_limited",
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(
        [
            "position-updates",
            "public.positions",
            "positions",
            "user_id=eq.u1",
            "user_id=in.(a,b",
            "x=like.y",
            "",
        ]
    ),
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["subscribe", "unsubscribe", "ping", "access_token", "nope"])},
    optional={
        "channel": field_values,
        "table": field_values,
        "filters": field_values,
        "filter": field_values,
        "since": st.one_of(st.integers(min_value=-5, max_value=10**20), field_values),
        "subscription_id": field_values,
        "token": field_values,
        "client_id": field_values,
    },
)
frames = st.one_of(
    messages.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
)


@pytest.fixture(scope="module")
async def fuzz_dsn(databases: TestDatabase) -> str:
    return await databases.create()


@pytest.fixture(scope="module")
def threaded_bridge(fuzz_dsn: str) -> Iterator[RunningBridge]:
    """A bridge on its own thread and loop, so sync hypothesis tests can talk to it."""
    ready: queue.Queue[RunningBridge | BaseException] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with run_bridge(make_settings(fuzz_dsn, max_frame_bytes=4096)) as bridge:
                ready.put(bridge)
                await stop.wait()
        except BaseException as exc:  # surfaced to the test thread
            ready.put(exc)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started = ready.get(timeout=30)
    if isinstance(started, BaseException):
        raise started
    yield started
    loop.call_soon_threadsafe(stop.set)
    thread.join(timeout=15)


def exchange(bridge: RunningBridge, frame: str | bytes) -> list[dict[str, Any]]:
    """Send one frame, then a ping; return every frame received before the pong."""
    replies: list[dict[str, Any]] = []
    with connect(f"{bridge.ws_url}?apikey={bridge.service_key}", open_timeout=5) as ws:
        ws.send(frame)
        with contextlib.suppress(ConnectionClosed):
            # The server may already have answered `frame` and closed (too_large):
            # the ping then fails, but what arrived before the close is still read.
            ws.send('{"type":"ping"}')
        try:
            while True:
                reply = orjson.loads(ws.recv(timeout=5))
                if reply == {"type": "pong"}:
                    return replies
                replies.append(reply)
        except ConnectionClosed:
            return replies


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames)
def test_any_frame_gets_a_known_answer_and_the_server_stays_up(
    threaded_bridge: RunningBridge, frame: str | bytes
) -> None:
    replies = exchange(threaded_bridge, frame)
    for reply in replies:
        assert reply["type"] in KNOWN_REPLIES | {"db_change", "resync_required"}, reply
        if reply["type"] == "error":
            assert reply["code"] in KNOWN_CODES, reply
            assert isinstance(reply["message"], str)
            assert reply["message"]
    # And the server still answers a fresh connection.
    assert exchange(threaded_bridge, '{"type":"ping"}') == []


def test_oversized_and_binary_garbage_do_not_hurt(threaded_bridge: RunningBridge) -> None:
    replies = exchange(threaded_bridge, "x" * 10_000)
    assert [r["code"] for r in replies] == ["too_large"]
    replies = exchange(threaded_bridge, b"\xff\xfe\x00garbage")
    assert [r["code"] for r in replies] == ["bad_message"]
    assert exchange(threaded_bridge, '{"type":"ping"}') == []
