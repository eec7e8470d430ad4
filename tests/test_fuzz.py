"""Fuzzing the WebSocket edge: any frame gets a known answer, and the server stays up."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from realtime_bridge.testing import RunningBridge, TestDatabase, run_bridge
from tests.conftest import BridgeFactory, make_settings
from tests.helpers import http, insert_position, seq_of
from tests.test_supabase_protocol import Msg, Phx, phx


def nest(depth: int, kind: str = "list") -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


@dataclass(frozen=True)
class Deep:
    """A value nested too deep for any JSON encoder: `encode` writes it as text."""

    depth: int
    kind: str = "list"

    def text(self) -> str:
        if self.kind == "list":
            return "[" * self.depth + "0" + "]" * self.depth
        return '{"a":' * self.depth + "0" + "}" * self.depth


def encode(value: Any) -> str:
    """JSON text of `value`, `Deep` values included."""
    deep: list[Deep] = []

    def placeholder(item: Any) -> str:
        if not isinstance(item, Deep):
            raise TypeError(item)
        deep.append(item)
        return f"@deep-{len(deep) - 1}@"

    text = json.dumps(value, default=placeholder)
    for index, item in enumerate(deep):
        text = text.replace(f'"@deep-{index}@"', item.text(), 1)
    return text


class LoggedErrors(logging.Handler):
    """Records logged at ERROR or with a traceback, by us or by uvicorn."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)

    def summary(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()} {r.exc_info!r}" for r in self.records]


@contextlib.contextmanager
def logged_errors() -> Iterator[LoggedErrors]:
    """Watch the root logger and uvicorn's (which does not propagate).

    Enter it after the bridge started: uvicorn's dictConfig drops handlers.
    """
    handler = LoggedErrors()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


ROOM = "realtime:room"
PHOENIX_EVENTS = {
    "phx_reply",
    "phx_close",
    "system",
    "presence_state",
    "presence_diff",
    "broadcast",
    "postgres_changes",
}

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
    "too_deep",
    "too_long",
    "since_ahead",
    "too_many_connections",
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
hostile_values = st.one_of(
    st.builds(Deep, st.integers(min_value=60, max_value=1200), st.sampled_from(["list", "map"])),
    st.integers(min_value=1_000, max_value=11_000).map(lambda n: [0] * n),
    st.dictionaries(st.text(min_size=250, max_size=300), scalars, min_size=1, max_size=2),
    st.integers(min_value=10, max_value=4000).map(lambda n: "9" * n),
    st.integers(min_value=10, max_value=4000).map(lambda n: "user_id=eq." + "9" * n),
)
field_values = st.one_of(
    json_values,
    hostile_values,
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
    messages.map(encode),
    json_values.map(encode),
    hostile_values.map(encode),
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


def longest_key(frame: str | bytes) -> int:
    """The longest object key anywhere in `frame` (0 if it does not parse)."""
    try:
        value = json.loads(frame)
    except ValueError:
        return 0
    longest = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            longest = max([longest, *(len(k) for k in item)])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return longest


def json_depth(frame: str | bytes) -> int:
    """How deep arrays and objects nest in JSON text (0 for bytes)."""
    if isinstance(frame, bytes):
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in frame:
        if in_string:
            escaped = not escaped and char == "\\"
            if char == '"' and not escaped:
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parses(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


@pytest.fixture(scope="module")
def threaded_errors(threaded_bridge: RunningBridge) -> Iterator[LoggedErrors]:
    with logged_errors() as handler:
        yield handler


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames)
def test_any_frame_gets_a_known_answer_and_the_server_stays_up(
    threaded_bridge: RunningBridge, threaded_errors: LoggedErrors, frame: str | bytes
) -> None:
    replies = exchange(threaded_bridge, frame)
    depth = json_depth(frame)
    if isinstance(frame, str) and len(frame.encode()) <= 4096 and depth > 64 and parses(frame):
        # A frame both too deep and with a key too long may be refused for either.
        allowed = (["too_deep"], ["too_long"]) if longest_key(frame) > 256 else (["too_deep"],)
        assert [r["code"] for r in replies] in allowed, (depth, replies)
    for reply in replies:
        assert reply["type"] in KNOWN_REPLIES | {"db_change", "resync_required"}, reply
        if reply["type"] == "error":
            assert reply["code"] in KNOWN_CODES, reply
            assert isinstance(reply["message"], str)
            assert reply["message"]
    # And the server still answers a fresh connection.
    assert exchange(threaded_bridge, '{"type":"ping"}') == []
    assert threaded_errors.summary() == []


phoenix_configs = st.fixed_dictionaries(
    {},
    optional={
        "broadcast": st.one_of(
            field_values,
            st.fixed_dictionaries(
                {}, optional=dict.fromkeys(("self", "ack", "replay"), field_values)
            ),
        ),
        "presence": st.one_of(
            field_values,
            st.fixed_dictionaries({}, optional=dict.fromkeys(("key", "enabled"), field_values)),
        ),
        "postgres_changes": st.one_of(
            field_values,
            st.lists(
                st.fixed_dictionaries(
                    {},
                    optional=dict.fromkeys(
                        ("event", "schema", "table", "filter", "select"), field_values
                    ),
                ),
                max_size=2,
            ),
        ),
        "private": field_values,
    },
)
phoenix_payloads = st.fixed_dictionaries(
    {},
    optional={
        "type": field_values,
        "event": st.one_of(st.sampled_from(["track", "untrack", "e"]), field_values),
        "payload": field_values,
        "config": st.one_of(phoenix_configs, field_values),
        "access_token": field_values,
    },
)
phoenix_pushes = st.one_of(
    st.fixed_dictionaries(
        {
            "topic": st.just(ROOM),
            "event": st.just("presence"),
            "payload": st.fixed_dictionaries(
                {"event": st.sampled_from(["track", "untrack"]), "payload": field_values}
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "topic": st.just(ROOM),
            "event": st.just("broadcast"),
            "payload": st.fixed_dictionaries(
                {"type": st.just("broadcast"), "event": st.just("e"), "payload": field_values}
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "topic": st.just("realtime:other"),
            "event": st.just("phx_join"),
            "payload": st.fixed_dictionaries({"config": phoenix_configs}),
        }
    ),
).map(lambda push: encode({**push, "ref": "1", "join_ref": "j"}))
phoenix_frames = st.fixed_dictionaries(
    {
        "topic": st.one_of(st.sampled_from(["phoenix", ROOM, "realtime:other"]), field_values),
        "event": st.one_of(
            st.sampled_from(
                ["phx_join", "phx_leave", "heartbeat", "broadcast", "presence", "access_token"]
            ),
            field_values,
        ),
        "payload": st.one_of(phoenix_payloads, field_values),
        "ref": st.one_of(st.just("1"), field_values),
    },
    optional={"join_ref": field_values},
).map(encode)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=st.one_of(phoenix_pushes, phoenix_frames, st.text(max_size=100)))
def test_any_phoenix_frame_leaves_the_socket_answering(
    threaded_bridge: RunningBridge, threaded_errors: LoggedErrors, frame: str
) -> None:
    bridge = threaded_bridge
    url = f"ws://127.0.0.1:{bridge.port}/realtime/v1/websocket?apikey={bridge.service_key}"
    heartbeat = '{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"beat"}'
    join = {"topic": ROOM, "event": "phx_join", "payload": {"config": {}}, "ref": "j"}
    if len(frame.encode()) > 4096:
        frame = frame[:10]  # past MAX_FRAME_BYTES the socket closes (1009) by design
    with connect(url, open_timeout=5) as ws:
        ws.send(orjson.dumps({**join, "join_ref": "j"}).decode())
        with contextlib.suppress(ConnectionClosed):
            ws.send(frame)
            ws.send(heartbeat)
        while True:
            reply = orjson.loads(ws.recv(timeout=5))  # ConnectionClosed fails the test
            if reply["topic"] == "phoenix" and reply["ref"] == "beat":
                break
            assert reply["event"] in PHOENIX_EVENTS, reply
    assert threaded_errors.summary() == []


def test_oversized_and_binary_garbage_do_not_hurt(threaded_bridge: RunningBridge) -> None:
    replies = exchange(threaded_bridge, "x" * 10_000)
    assert [r["code"] for r in replies] == ["too_large"]
    replies = exchange(threaded_bridge, b"\xff\xfe\x00garbage")
    assert [r["code"] for r in replies] == ["bad_message"]
    assert exchange(threaded_bridge, '{"type":"ping"}') == []


# -- hostile frames, field by field -----------------------------------------------
#
# Every inbound message type of every protocol, each field replaced in turn by a
# value of the wrong type or a hostile shape (nesting past the depth limit, arrays
# past the length limit, long keys). Each must get the protocol's error (or its
# ordinary answer), never a traceback, and the connection must keep working.

TOO_DEEP = {"too_deep"}
TOO_LONG = {"too_long"}


HOSTILE: list[tuple[str, Any, set[str] | None]] = [
    ("deep list", Deep(65), TOO_DEEP),
    ("deep map", Deep(65, "map"), TOO_DEEP),
    ("past orjson's dumps limit", Deep(300), TOO_DEEP),
    ("past orjson's loads limit", Deep(1100), {"bad_message", "too_deep"}),
    ("long array", [0] * 10_001, TOO_LONG),
    ("long key", {"k" * 300: 1}, TOO_LONG),
]
WRONG: list[tuple[str, Any, set[str] | None]] = [
    ("null", None, None),
    ("true", True, None),
    ("zero", 0, None),
    ("negative", -1, None),
    ("float", 1.5, None),
    ("past int64", 2**64, None),
    ("empty", "", None),
    ("long text", "x" * 300, None),
    ("huge number", "9" * 5000, None),
    ("huge filter", "user_id=eq." + "9" * 5000, None),
    ("empty list", [], None),
    ("list", [1, "a"], None),
    ("empty map", {}, None),
    ("map", {"a": {"b": 1}}, None),
    ("just deep enough", nest(60), None),
]
VALUES = HOSTILE + WRONG
Path = tuple[str | int, ...]


def variants(base: Any, paths: list[Path]) -> Iterator[tuple[str, Any, set[str] | None]]:
    """`base` with the value at each path replaced by each of VALUES in turn."""
    for path in paths:
        for label, value, codes in VALUES:
            frame = copy.deepcopy(base)
            if not path:
                yield f"<body>={label}", value, codes
                continue
            target = frame
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            yield f"{'.'.join(map(str, path))}={label}", frame, codes


@pytest.fixture
async def hostile_bridge(start_bridge: BridgeFactory) -> RunningBridge:
    """A bridge with room for hundreds of frames and channels per connection."""
    return await start_bridge(
        max_messages_per_second=100_000,
        max_subscriptions_per_connection=10_000,
        enable_testing_api=True,
    )


@pytest.fixture
def errors(hostile_bridge: RunningBridge) -> Iterator[LoggedErrors]:
    with logged_errors() as handler:
        yield handler


JSON_FRAMES: list[tuple[dict[str, Any], list[Path]]] = [
    (
        {"type": "subscribe", "channel": "position-updates", "filters": {"user_id": "u1"}},
        [
            ("type",),
            ("channel",),
            ("table",),
            ("filters",),
            ("filters", "user_id"),
            ("filter",),
            ("client_id",),
            ("since",),
            ("token",),
            ("extra",),
        ],
    ),
    ({"type": "unsubscribe", "subscription_id": "nope"}, [("subscription_id",), ("extra",)]),
    ({"type": "ping"}, [("type",), ("extra",)]),
    ({"type": "access_token", "token": "not-a-jwt"}, [("token",), ("extra",)]),
]


async def test_hostile_json_frames_get_an_error_frame_and_the_socket_keeps_working(
    hostile_bridge: RunningBridge, errors: LoggedErrors, db: asyncpg.Connection
) -> None:
    bridge = hostile_bridge
    cases = [case for base, paths in JSON_FRAMES for case in variants(base, paths)]
    async with bridge.websocket() as ws:
        for n, (label, frame, codes) in enumerate(cases):
            await ws.send(encode(frame))
            # A marker whose answer comes after everything `frame` caused.
            await ws.send({"type": "unsubscribe", "subscription_id": f"marker-{n}"})
            replies = []
            while (reply := await ws.recv())["type"] != "error" or reply.get(
                "subscription_id"
            ) != f"marker-{n}":
                replies.append(reply)
            for reply in replies:
                assert reply["type"] in KNOWN_REPLIES, (label, reply)
                if reply["type"] == "subscribed":
                    sub_id = reply["subscription_id"]
                    await ws.send({"type": "unsubscribe", "subscription_id": sub_id})
                    while (await ws.recv())["type"] != "unsubscribed":
                        pass
                if reply["type"] == "error":
                    assert reply["code"] in KNOWN_CODES, (label, reply)
                    assert isinstance(reply["message"], str), (label, reply)
                    assert reply["message"], (label, reply)
            if codes is not None:
                assert len(replies) == 1, (label, replies)
                assert replies[0]["code"] in codes, (label, replies)
        subscribed = await ws.subscribe(channel="position-updates")
        assert subscribed["type"] == "subscribed", subscribed
        await insert_position(db, "u1", "AFTER")
        [change] = await ws.changes(1)
        assert change["data"]["symbol"] == "AFTER"
    assert errors.summary() == []


TOKEN_TOPIC = "realtime:token"
JOIN_CONFIG: dict[str, Any] = {
    "config": {
        "broadcast": {"self": True, "ack": True, "replay": {"since": 0, "limit": 5}},
        "presence": {"key": "k", "enabled": True},
        "postgres_changes": [
            {
                "event": "*",
                "schema": "public",
                "table": "positions",
                "filter": "user_id=eq.u1",
                "select": ["id"],
            }
        ],
        "private": False,
    },
    "access_token": None,
}
BINDING: Path = ("config", "postgres_changes", 0)
PHOENIX_PUSHES: list[tuple[str, str, Any, list[Path]]] = [
    ("phoenix", "heartbeat", {}, [(), ("extra",)]),
    (
        "realtime:join-{n}",
        "phx_join",
        JOIN_CONFIG,
        [
            (),
            ("config",),
            ("config", "broadcast"),
            ("config", "broadcast", "self"),
            ("config", "broadcast", "ack"),
            ("config", "broadcast", "replay"),
            ("config", "broadcast", "replay", "since"),
            ("config", "broadcast", "replay", "limit"),
            ("config", "presence"),
            ("config", "presence", "key"),
            ("config", "presence", "enabled"),
            ("config", "postgres_changes"),
            BINDING,
            (*BINDING, "event"),
            (*BINDING, "schema"),
            (*BINDING, "table"),
            (*BINDING, "filter"),
            (*BINDING, "select"),
            ("config", "private"),
            ("access_token",),
            ("user_token",),
        ],
    ),
    ("realtime:never-joined", "phx_leave", {}, [()]),
    (
        ROOM,
        "broadcast",
        {"type": "broadcast", "event": "e", "payload": {"a": 1}},
        [(), ("type",), ("event",), ("payload",), ("payload", "a")],
    ),
    (
        ROOM,
        "presence",
        {"type": "presence", "event": "track", "payload": {"a": 1}},
        [(), ("event",), ("payload",), ("payload", "a")],
    ),
    (ROOM, "presence", {"type": "presence", "event": "untrack"}, [("event",), ("extra",)]),
    (TOKEN_TOPIC, "access_token", {"access_token": "not-a-jwt"}, [(), ("access_token",)]),
]


async def push(client: Phx, topic: str, event: str, payload: Any) -> str:
    """`client.push`, able to send `Deep` payloads."""
    ref = str(next(client.refs))
    join_ref = client.joins.get(topic)
    if client.vsn == "2.0.0":
        frame = encode([join_ref, ref, topic, event, payload])
    else:
        body = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        frame = encode({**body, "join_ref": join_ref} if join_ref is not None else body)
    await client.ws.send(frame)
    return ref


async def until_heartbeat(client: Phx) -> list[Msg]:
    """Everything the server sent before answering a heartbeat sent now."""
    ref = await client.push("phoenix", "heartbeat", {})
    seen = []
    while (msg := await client.recv()).topic != "phoenix" or msg.ref != ref:
        seen.append(msg)
    assert msg.payload == {"status": "ok", "response": {}}
    return seen


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_hostile_phoenix_pushes_get_an_error_reply_and_the_socket_keeps_working(
    hostile_bridge: RunningBridge, errors: LoggedErrors, db: asyncpg.Connection, vsn: str
) -> None:
    bridge = hostile_bridge
    room_config = {"presence": {"key": "me", "enabled": True}, "broadcast": {"self": True}}
    async with phx(bridge, vsn=vsn) as client, phx(bridge, vsn=vsn) as watcher:
        assert (await watcher.join(ROOM, room_config)).payload["status"] == "ok"
        assert (await client.join(ROOM, room_config)).payload["status"] == "ok"
        n = 0
        for topic, event, base, paths in PHOENIX_PUSHES:
            for label, payload, codes in variants(base, paths):
                n += 1
                where = topic.format(n=n)
                if where == TOKEN_TOPIC:
                    # A bad token ends the channel (as in Supabase): start each case joined.
                    assert (await client.join(where)).payload["status"] == "ok"
                ref = await push(client, where, event, payload)
                seen = await until_heartbeat(client)
                for msg in seen:
                    assert msg.event in PHOENIX_EVENTS, (event, label, msg)
                    if msg.event == "phx_reply" and msg.payload["status"] == "error":
                        reason = msg.payload["response"].get("reason")
                        assert isinstance(reason, str), (event, label, msg)
                        assert reason, (event, label, msg)
                if codes is not None and "bad_message" not in codes:
                    # (What orjson cannot parse has no topic to answer on: it is dropped.)
                    [answer] = [m for m in seen if m.event == "phx_reply" and m.ref == ref]
                    assert answer.topic == where, (event, label, answer)
                    assert answer.payload["status"] == "error", (event, label, answer)
                    reason = answer.payload["response"]["reason"]
                    assert reason.split(":")[0] in codes, (event, label, answer)
        # Envelopes of the wrong shape are dropped, as Supabase does.
        for _label, value, _codes in VALUES:
            for position in range(5):
                fields: list[Any] = [None, "1", "phoenix", "heartbeat", {}]
                fields[position] = value
                if vsn == "2.0.0":
                    await client.ws.send(encode(fields))
                else:
                    keys = ["join_ref", "ref", "topic", "event", "payload"]
                    await client.ws.send(encode(dict(zip(keys, fields, strict=True))))
            await until_heartbeat(client)
        if vsn == "2.0.0":
            for label, value, codes in HOSTILE[:3]:
                ref = await client.push_binary(ROOM, "e", encode({"a": value}).encode())
                seen = await until_heartbeat(client)
                [answer] = [m for m in seen if m.event == "phx_reply" and m.ref == ref]
                assert answer.payload["status"] == "error", (label, answer)
                assert codes is not None
                assert answer.payload["response"]["reason"].split(":")[0] in codes
        # The socket, the room and postgres_changes all still work.
        ref = await client.push(ROOM, "presence", {"event": "track", "payload": {"after": True}})
        assert [m.payload["status"] for m in await until_heartbeat(client) if m.ref == ref] == [
            "ok"
        ]
        while True:  # past the diffs the fuzzing caused
            diff = await watcher.next("presence_diff")
            if diff.payload["joins"].get("me", {}).get("metas", [{}])[0].get("after"):
                break
        binding = {"event": "INSERT", "schema": "public", "table": "positions"}
        assert (await client.join("realtime:db", {"postgres_changes": [binding]})).payload[
            "status"
        ] == "ok"
        assert (await client.next("system")).payload["status"] == "ok"
        await insert_position(db, "u1", "AFTER")
        change = await client.next("postgres_changes")
        while change.topic != "realtime:db":  # the fuzzed joins that bound positions too
            change = await client.next("postgres_changes")
        assert change.payload["data"]["record"]["symbol"] == "AFTER"
    assert errors.summary() == []


POSITION = {"id": 7, "user_id": "u1", "symbol": "NVDA", "quantity": 4, "entry_price": 50}
SIGNAL = {"symbol": "NVDA", "signal_type": "BUY", "entry_price": 50, "user_id": "u9"}
REST_BODIES: list[tuple[str, Any, list[Path]]] = [
    (
        "/api/broadcast",
        {"channel": "position-updates", "event": "e", "payload": POSITION},
        [(), ("channel",), ("event",), ("payload",), ("payload", "symbol"), ("payload", "x")],
    ),
    (
        "/realtime/v1/api/broadcast",
        {"messages": [{"topic": "room", "event": "e", "payload": {"a": 1}, "id": "1"}]},
        [
            (),
            ("messages",),
            ("messages", 0),
            *(("messages", 0, key) for key in ("topic", "event", "payload", "private", "id")),
            ("messages", 0, "payload", "a"),
        ],
    ),
    ("/realtime/v1/api/broadcast/room/events/e", {"a": 1}, [(), ("a",)]),
    ("/realtime/v1/api/broadcast/position-updates/events/e", POSITION, [(), ("symbol",)]),
    ("/api/testing/simulate-signal", SIGNAL, [(), *((key,) for key in SIGNAL)]),
]
WIDE_MAP = {str(i): i for i in range(10_001)}


def assert_json_error(response: httpx.Response, codes: set[str] | None, label: str) -> None:
    assert response.status_code < 500, (label, response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body["code"], str), (label, body)
        assert body["code"], (label, body)
        assert isinstance(body["message"], str), (label, body)
        assert body["message"], (label, body)
    if codes is not None:
        assert response.status_code in (400, 413, 422), (label, response.text)
        assert response.json()["code"] in codes, (label, response.text)


async def test_hostile_rest_bodies_get_a_json_error(
    hostile_bridge: RunningBridge, errors: LoggedErrors, db: asyncpg.Connection
) -> None:
    bridge = hostile_bridge
    async with http(bridge) as client:
        for path, base, paths in REST_BODIES:
            cases = [*variants(base, paths), ("<body>=wide map", WIDE_MAP, TOO_LONG)]
            for label, body, codes in cases:
                response = await client.post(path, content=encode(body))
                assert_json_error(response, codes, f"{path} {label}")
            for raw in (b"", b"{", b"\xff", b"[" * 2000):
                response = await client.post(path, content=raw)
                assert_json_error(response, None, f"{path} {raw[:5]!r}")
                assert response.status_code in (400, 422), (path, raw[:5], response.text)
        # Still publishing.
        response = await client.post(
            "/api/broadcast", json={"channel": "position-updates", "payload": POSITION}
        )
        assert response.status_code == 202, response.text
    assert errors.summary() == []


QUERY_VALUES = [
    "",
    "x",
    "-1",
    "1e999",
    "nan",
    "inf",
    "9" * 5000,
    "user_id=eq." + "9" * 5000,
    "user_id=eq." + "x" * 20_000,
    "(" * 5000,
    "user_id=in.(" + ",".join(["a"] * 5000) + ")",
    "user_id=eq.u1," * 100,
    '{"user_id": "u1"}',
    "\x00",
]
QUERY_PATHS = [
    "/sse/position-updates",
    "/api/channels/position-updates/events",
    "/api/channels/position-updates/snapshot",
]


async def test_hostile_query_parameters_get_a_json_error(
    hostile_bridge: RunningBridge, errors: LoggedErrors, db: asyncpg.Connection
) -> None:
    bridge = hostile_bridge
    async with http(bridge) as client:
        for path in QUERY_PATHS:
            for param in ("filter", "since", "limit", "wait", "cursor"):
                for value in QUERY_VALUES:
                    if param == "wait" and value == "":
                        continue  # the default: a 25-second long-poll
                    params = {"wait": "0", param: value}
                    label = f"{path}?{param}={value[:20]}"
                    async with client.stream("GET", path, params=params) as response:
                        if response.headers["content-type"].startswith("text/event-stream"):
                            assert response.status_code == 200, label
                            continue
                        await response.aread()
                    assert_json_error(response, None, label)
                    if param == "filter" and len(value) > 4000:
                        assert response.status_code == 400, (label, response.text)
                        assert response.json()["code"] == "invalid_filter", label
        for value in QUERY_VALUES:
            headers = {"Last-Event-ID": value.replace("\x00", "0")}
            async with client.stream("GET", QUERY_PATHS[0], headers=headers) as response:
                if response.headers["content-type"].startswith("text/event-stream"):
                    continue
                await response.aread()
            assert_json_error(response, None, f"Last-Event-ID: {value[:20]}")
        row_id = await insert_position(db, "u1", "AFTER")
        seq = await seq_of(db, row_id)
        response = await client.get(
            "/api/channels/position-updates/events", params={"since": seq - 1, "wait": 5}
        )
        assert [e["data"]["symbol"] for e in response.json()["events"]] == ["AFTER"]
    assert errors.summary() == []
