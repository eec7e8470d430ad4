"""The Supabase Realtime (Phoenix channels) protocol on the wire, corner by corner.

The official clients are exercised in test_supabase_js.py and
test_supabase_python_client.py; here a plain WebSocket client checks the
frames themselves (both serializers, binary broadcasts, refs, errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime_bridge.testing import RunningBridge
from tests.conftest import BridgeFactory

INSERT = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, $3, 100, 110) RETURNING id"
)


@dataclass
class Msg:
    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any
    binary: bytes | None = None


def kind4(data: bytes) -> Msg:
    assert data[0] == 4
    topic_size, event_size, meta_size, encoding = data[1:5]
    offset = 5
    topic = data[offset : offset + topic_size].decode()
    offset += topic_size
    event = data[offset : offset + event_size].decode()
    offset += event_size
    meta = orjson.loads(data[offset : offset + meta_size]) if meta_size else None
    offset += meta_size
    raw = data[offset:]
    payload: dict[str, Any] = {
        "type": "broadcast",
        "event": event,
        "payload": orjson.loads(raw) if encoding == 1 else raw,
    }
    if meta is not None:
        payload["meta"] = meta
    return Msg(None, None, topic, "broadcast", payload, binary=data)


class Phx:
    """A bare Phoenix client: every frame visible."""

    def __init__(self, ws: ClientConnection, vsn: str) -> None:
        self.ws = ws
        self.vsn = vsn
        self.refs = itertools.count(1)
        self.joins: dict[str, str] = {}

    async def push(
        self, topic: str, event: str, payload: Any, *, join_ref: str | None = None
    ) -> str:
        ref = str(next(self.refs))
        join_ref = join_ref if join_ref is not None else self.joins.get(topic)
        if self.vsn == "2.0.0":
            frame = orjson.dumps([join_ref, ref, topic, event, payload])
        else:
            body = {"topic": topic, "event": event, "payload": payload, "ref": ref}
            if join_ref is not None:
                body["join_ref"] = join_ref
            frame = orjson.dumps(body)
        await self.ws.send(frame.decode())
        return ref

    async def push_binary(self, topic: str, event: str, payload: bytes, encoding: int = 1) -> str:
        ref = str(next(self.refs))
        join_ref = self.joins[topic].encode()
        fields = [join_ref, ref.encode(), topic.encode(), event.encode(), b""]
        header = bytes([3, *(len(f) for f in fields), encoding])
        await self.ws.send(header + b"".join(fields) + payload)
        return ref

    async def recv(self, timeout: float = 5.0) -> Msg:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(raw, bytes):
            return kind4(raw)
        data = orjson.loads(raw)
        if self.vsn == "2.0.0":
            assert isinstance(data, list), data
            return Msg(*data)
        assert set(data) == {"topic", "event", "payload", "ref"}, data
        return Msg(None, data["ref"], data["topic"], data["event"], data["payload"])

    async def next(self, event: str, timeout: float = 5.0) -> Msg:
        """The next message with `event`, skipping others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await self.recv(max(deadline - loop.time(), 0.01))
            if msg.event == event:
                return msg

    async def join(
        self, topic: str, config: dict[str, Any] | None = None, token: str | None = None
    ) -> Msg:
        payload: dict[str, Any] = {"config": config or {}}
        if token is not None:
            payload["access_token"] = token
        ref = str(next(self.refs))
        self.joins[topic] = ref
        if self.vsn == "2.0.0":
            frame = orjson.dumps([ref, ref, topic, "phx_join", payload])
        else:
            frame = orjson.dumps(
                {
                    "topic": topic,
                    "event": "phx_join",
                    "payload": payload,
                    "ref": ref,
                    "join_ref": ref,
                }
            )
        await self.ws.send(frame.decode())
        reply = await self.next("phx_reply")
        assert reply.ref == ref
        return reply

    async def silent(self, seconds: float = 0.3) -> bool:
        try:
            msg = await self.recv(seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected silence, got {msg}")


@contextlib.asynccontextmanager
async def phx(
    bridge: RunningBridge,
    key: str | None = None,
    vsn: str = "1.0.0",
    path: str = "/realtime/v1/websocket",
) -> AsyncIterator[Phx]:
    url = f"ws://127.0.0.1:{bridge.port}{path}?apikey={key or bridge.service_key}&vsn={vsn}"
    async with websockets.connect(url, max_size=None) as ws:
        yield Phx(ws, vsn)


async def test_handshake_refusals_are_http_statuses_with_json(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge()
    base = f"ws://127.0.0.1:{bridge.port}/realtime/v1/websocket"
    expired = bridge.user_token("u1", ttl=-10)
    cases = [
        (f"{base}?vsn=1.0.0", 401, "unauthorized"),
        (f"{base}?apikey=not-a-jwt", 401, "unauthorized"),
        (f"{base}?apikey={expired}", 401, "token_expired"),
        (f"{base}?apikey={bridge.anon_key}&vsn=3.0.0", 400, "bad_message"),
    ]
    for url, status, code in cases:
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        response = refused.value.response
        assert response.status_code == status
        body = orjson.loads(response.body or b"{}")
        assert body["code"] == code
        assert body["error"] == body["message"]
    # No vsn means 1.0.0; the key may also come in the x-api-key header.
    async with websockets.connect(base, additional_headers={"x-api-key": bridge.anon_key}) as ws:
        client = Phx(ws, "1.0.0")
        await client.push("phoenix", "heartbeat", {})
        assert (await client.recv()).payload == {"status": "ok", "response": {}}


@pytest.mark.parametrize(
    ("vsn", "path"), [("1.0.0", "/realtime/v1/websocket"), ("2.0.0", "/socket/websocket")]
)
async def test_heartbeats_replies_and_malformed_frames(
    start_bridge: BridgeFactory, vsn: str, path: str
) -> None:
    bridge = await start_bridge()
    async with phx(bridge, vsn=vsn, path=path) as client:
        await client.ws.send("not json")
        await client.ws.send(b"\x09garbage" if vsn == "2.0.0" else '{"topic": "x"}')
        ref = await client.push("phoenix", "heartbeat", {})
        beat = await client.recv()
        assert (beat.topic, beat.event, beat.ref, beat.join_ref) == (
            "phoenix",
            "phx_reply",
            ref,
            None,
        )
        assert beat.payload == {"status": "ok", "response": {}}
        ref = await client.push("realtime:nowhere", "broadcast", {}, join_ref="77")
        unmatched = await client.recv()
        assert unmatched.ref == ref
        assert unmatched.payload == {"status": "error", "response": {"reason": "unmatched topic"}}
        if vsn == "2.0.0":
            assert unmatched.join_ref == "77"
        reply = await client.join("realtime:")
        assert reply.payload["response"]["reason"].startswith("TopicNameRequired")
    assert bridge.bridge.stats()["errors_sent"]["bad_message"] >= 2


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_join_echoes_bindings_with_ids_and_leave_closes(
    start_bridge: BridgeFactory, vsn: str
) -> None:
    bridge = await start_bridge()
    bindings = [
        {"event": "*", "schema": "public", "table": "positions", "filter": "user_id=eq.u1"},
        {"event": "INSERT", "schema": "public", "table": "trades", "extra": {"kept": True}},
    ]
    async with phx(bridge, vsn=vsn) as client:
        reply = await client.join("realtime:room", {"postgres_changes": bindings})
        assert reply.payload["status"] == "ok"
        echoed = reply.payload["response"]["postgres_changes"]
        assert [{k: v for k, v in b.items() if k != "id"} for b in echoed] == bindings
        ids = [b["id"] for b in echoed]
        assert all(isinstance(i, int) and i > 0 for i in ids)
        assert len(set(ids)) == 2
        system = await client.next("system")
        assert system.payload == {
            "extension": "postgres_changes",
            "status": "ok",
            "message": "Subscribed to PostgreSQL",
            "channel": "room",
        }
        assert system.ref is None
        join_ref = client.joins["realtime:room"]
        if vsn == "2.0.0":
            assert reply.join_ref == join_ref
        # The same bindings get the same ids on another join.
        again = await client.join("realtime:other", {"postgres_changes": bindings})
        assert [b["id"] for b in again.payload["response"]["postgres_changes"]] == ids
        empty = await client.join("realtime:plain")
        assert empty.payload == {"status": "ok", "response": {"postgres_changes": []}}

        ref = await client.push("realtime:room", "phx_leave", {})
        left = await client.recv()
        assert (left.event, left.ref, left.payload) == (
            "phx_reply",
            ref,
            {"status": "ok", "response": {}},
        )
        closed = await client.recv()
        assert (closed.event, closed.ref, closed.payload) == ("phx_close", join_ref, {})
        ref = await client.push("realtime:room", "broadcast", {"type": "broadcast"})
        assert (await client.recv()).payload["response"] == {"reason": "unmatched topic"}
    assert bridge.bridge.hub.subscriptions == {}


async def test_binary_broadcasts_reach_v2_as_binary_and_v1_as_json(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge()
    topic = "realtime:cursors"
    async with (
        phx(bridge, vsn="2.0.0") as sender,
        phx(bridge, vsn="2.0.0") as v2,
        phx(bridge, vsn="1.0.0") as v1,
        phx(bridge, vsn="2.0.0") as quiet,
    ):
        await sender.join(topic, {"broadcast": {"self": True, "ack": True}})
        await v2.join(topic)
        await v1.join(topic)
        await quiet.join(topic, {"broadcast": {"self": False}})
        ref = await sender.push_binary(topic, "cursor", b'{"x":1}')
        ack = await sender.next("phx_reply")
        assert (ack.ref, ack.join_ref, ack.payload) == (
            ref,
            sender.joins[topic],
            {"status": "ok", "response": {}},
        )
        own = await sender.recv()
        expected = {"type": "broadcast", "event": "cursor", "payload": {"x": 1}}
        assert own.payload == expected
        got = await v2.recv()
        assert got.binary is not None
        assert got.topic == topic
        assert got.payload == expected
        json = await v1.recv()
        assert json.payload == expected
        assert json.ref is None
        assert (await quiet.recv()).payload == expected
        # A v2 text push and raw bytes: bytes never go to 1.0.0 sockets.
        await quiet.push(topic, "broadcast", {"type": "broadcast", "event": "e", "payload": [1]})
        assert (await v1.recv()).payload["payload"] == [1]
        assert (await v2.recv()).payload["payload"] == [1]
        assert await quiet.silent(0.2)  # self is off, ack is off
        await sender.push_binary(topic, "blob", b"\x00\xff", encoding=0)
        await sender.next("phx_reply")
        assert (await v2.recv()).payload["payload"] == b"\x00\xff"
        assert await v1.silent(0.2)
        # Public and private topics are separate rooms.
        await v1.join("realtime:cursors-private", {"private": True})
        await v2.join("realtime:cursors-private")
        await sender.join("realtime:cursors-private", {"private": True})
        await sender.push_binary("realtime:cursors-private", "cursor", b"{}")
        assert (await v1.recv()).topic == "realtime:cursors-private"
        assert await v2.silent(0.2)


async def test_what_cannot_be_served_answers_like_supabase(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge()

    async def system_error(client: Phx, topic: str, binding: dict[str, Any]) -> str:
        reply = await client.join(topic, {"postgres_changes": [binding]})
        assert reply.payload["status"] == "ok"
        system = await client.next("system")
        assert system.payload["status"] == "error"
        assert system.payload["extension"] == "postgres_changes"
        text: str = system.payload["message"]
        return text

    positions = {"event": "*", "schema": "public", "table": "positions"}
    async with phx(bridge) as service, phx(bridge, key=bridge.anon_key) as anon:
        assert (
            await system_error(service, "realtime:a", {**positions, "filter": "symbol=match.A"})
        ).startswith("Error parsing `filter` params: unknown operator 'match'")
        assert (
            await system_error(service, "realtime:a2", {**positions, "filter": "quantity=like.1*"})
        ) == "Error parsing `filter` params: 'like' applies to text columns; 'quantity' is numeric"
        assert (
            await system_error(service, "realtime:b", {**positions, "filter": "colour=eq.red"})
        ).startswith("Error parsing `filter` params: unknown column 'colour'")
        text = await system_error(service, "realtime:c", {**positions, "table": "missing"})
        assert text.startswith("Unable to subscribe to changes with given parameters")
        assert "not tracked" in text
        text = await system_error(anon, "realtime:d", positions)
        assert text.startswith("Unauthorized: ")
        # Topics: a plugin channel or a private topic refuse the join itself.
        refused = await anon.join("realtime:position-updates")
        assert refused.payload["status"] == "error"
        assert refused.payload["response"]["reason"].startswith(
            "Unauthorized: You do not have permissions to read from this Channel topic: "
            "position-updates"
        )
        refused = await anon.join("realtime:secret", {"private": True})
        assert refused.payload["response"]["reason"].startswith("Unauthorized: ")
        refused = await anon.join("realtime:x", token=bridge.user_token("u1", ttl=-5))
        assert refused.payload["response"]["reason"].startswith(
            "InvalidJWTToken: Token has expired"
        )
        # An invalid join payload joins with the defaults, as Supabase does.
        reply = await anon.join("realtime:lenient", {"presence": "yes please"})
        assert reply.payload["status"] == "ok"


async def test_presence_state_first_then_diffs_and_a_closed_socket_leaves(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge()
    topic = "realtime:lobby"
    async with phx(bridge, vsn="2.0.0") as watcher:
        await watcher.join(topic, {"presence": {"enabled": True, "key": "w"}})
        state = await watcher.next("presence_state")
        assert state.payload == {}
        assert state.join_ref == watcher.joins[topic]
        async with phx(bridge) as bob:
            await bob.join(topic, {"presence": {"key": "bob"}})
            ref = await bob.push(topic, "presence", {"event": "track", "payload": {"at": 1}})
            # Tracking turns presence on for bob: his state (with himself) comes first.
            own = await bob.recv()
            assert own.event == "presence_state"
            assert own.payload["bob"]["metas"][0]["at"] == 1
            assert (await bob.recv()).ref == ref
            diff = await watcher.next("presence_diff")
            meta = diff.payload["joins"]["bob"]["metas"][0]
            assert meta["at"] == 1
            assert diff.payload["leaves"] == {}
            # The same payload again changes nothing; a new one is an update.
            for at in (1, 2):
                ref = await bob.push(topic, "presence", {"event": "track", "payload": {"at": at}})
                assert (await bob.next("phx_reply")).ref == ref
            update = await watcher.next("presence_diff")
            new = update.payload["joins"]["bob"]["metas"][0]
            assert new["at"] == 2
            assert new["phx_ref_prev"] == meta["phx_ref"]
            assert update.payload["leaves"]["bob"]["metas"][0]["phx_ref"] == meta["phx_ref"]
            bad = await bob.push(topic, "presence", {"event": "track", "payload": [1]})
            reply = await bob.next("phx_reply")
            assert reply.ref == bad
            assert reply.payload["response"] == {"reason": "Presence track payload must be a map"}
        gone = await watcher.next("presence_diff")
        assert gone.payload["joins"] == {}
        assert gone.payload["leaves"]["bob"]["metas"][0]["at"] == 2


async def test_tokens_expire_close_resume_switch_and_fail(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    topic = "realtime:mine"
    binding = {"event": "*", "schema": "public", "table": "positions"}
    config = {"postgres_changes": [binding]}
    async with phx(bridge, key=bridge.anon_key, vsn="2.0.0") as client:
        await client.join(topic, config, bridge.user_token("u1", ttl=1))
        await client.next("system")
        # Expiry closes the channel as Supabase does: a system error, then phx_close.
        expired = await client.next("system", timeout=5)
        assert expired.payload["status"] == "error"
        assert expired.payload["extension"] == "system"
        assert expired.payload["message"].startswith("Token has expired")
        closed = await client.recv()
        assert (closed.event, closed.ref) == ("phx_close", client.joins[topic])
        for i in range(3):
            await db.fetchval(INSERT, "u1", f"PAUSED{i}", 1)
        assert await client.silent(0.3)
        # Joining again with a fresh token resumes from where it stopped, nothing lost.
        assert (await client.join(topic, config, bridge.user_token("u1"))).payload["status"] == "ok"
        missed = [await client.next("postgres_changes") for _ in range(3)]
        assert [m.payload["data"]["record"]["symbol"] for m in missed] == [
            "PAUSED0",
            "PAUSED1",
            "PAUSED2",
        ]
        assert all(m.join_ref is None and m.ref is None for m in missed)
        # Another user's token: now that user's rows, and only those.
        await client.push(topic, "access_token", {"access_token": bridge.user_token("u2")})
        await client.push("phoenix", "heartbeat", {})
        await client.next("phx_reply")
        await db.fetchval(INSERT, "u1", "U1", 1)
        await db.fetchval(INSERT, "u2", "U2", 1)
        change = await client.next("postgres_changes")
        assert change.payload["data"]["record"]["user_id"] == "u2"
        # A bad token ends the channel: a system error, then phx_close.
        await client.push(topic, "access_token", {"access_token": "sb_publishable_ignored"})
        await client.push(topic, "access_token", {"access_token": "not.a.jwt"})
        failed = await client.next("system")
        assert failed.payload["status"] == "error"
        closed = await client.recv()
        assert (closed.event, closed.ref) == ("phx_close", client.joins[topic])
    assert bridge.bridge.hub.subscriptions == {}


async def test_wildcard_tables_and_select(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with phx(bridge) as client:
        await client.join(
            "realtime:all",
            {
                "postgres_changes": [
                    {"event": "INSERT", "schema": "public"},
                    {
                        "event": "UPDATE",
                        "schema": "public",
                        "table": "positions",
                        "select": ["id", "current_price"],
                    },
                ]
            },
        )
        assert (await client.next("system")).payload["status"] == "ok"
        row_id = await db.fetchval(INSERT, "u1", "A", 1)
        await db.execute(
            "INSERT INTO trades (user_id, symbol, signal_type, quantity, entry_price) "
            "VALUES ('u1', 'A', 'BUY', 1, 1)"
        )
        await db.execute("UPDATE positions SET current_price = 1 WHERE id = $1", row_id)
        got = [(await client.next("postgres_changes")).payload for _ in range(3)]
        assert [(g["data"]["table"], g["data"]["type"]) for g in got] == [
            ("positions", "INSERT"),
            ("trades", "INSERT"),
            ("positions", "UPDATE"),
        ]
        update = got[2]["data"]
        assert update["record"] == {"id": row_id, "current_price": 1}
        assert update["old_record"] == {"id": row_id, "current_price": 110}
        assert [c["name"] for c in update["columns"]] == ["id", "current_price"]
        assert await client.silent(0.2)


async def test_plugin_topics_deliver_typed_events_and_only_the_service_key_publishes(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    topic = "realtime:position-updates"
    async with (
        phx(bridge, vsn="2.0.0") as ops,
        phx(bridge, key=bridge.anon_key) as user,
    ):
        await ops.join(topic, {"broadcast": {"ack": True}})
        reply = await user.join(topic, token=bridge.user_token("u1"))
        assert reply.payload["status"] == "ok"
        row_id = await db.fetchval(INSERT, "u1", "AAPL", 2)
        await db.fetchval(INSERT, "u2", "MSFT", 2)
        binary = await ops.next("broadcast")
        assert binary.binary is not None
        assert binary.payload["event"] == "position_update"
        assert binary.payload["payload"]["id"] == row_id
        assert binary.payload["meta"] == {"id": binary.payload["meta"]["id"], "operation": "INSERT"}
        mine = await user.next("broadcast")
        assert mine.payload["payload"]["symbol"] == "AAPL"
        assert mine.payload["payload"]["market_value"] == 220.0
        assert (await ops.next("broadcast")).payload["payload"]["symbol"] == "MSFT"
        assert await user.silent(0.2)
        # A user may not write into a channel backed by the database.
        ref = await user.push(
            topic, "broadcast", {"type": "broadcast", "event": "position_update", "payload": {}}
        )
        refused = await user.next("phx_reply")
        assert refused.ref == ref
        assert refused.payload["response"]["reason"].startswith("Unauthorized: ")
        # The service key publishes through the log: validated, numbered, typed.
        bad = await ops.push_binary(topic, "position_update", b'{"id": "x"}')
        invalid = await ops.next("phx_reply")
        assert invalid.ref == bad
        assert invalid.payload["response"]["reason"].startswith("invalid_payload")
        payload = {"id": 9, "user_id": "u1", "symbol": "PUB", "quantity": 1, "entry_price": 2}
        await ops.push_binary(topic, "position_update", orjson.dumps(payload))
        assert (await ops.next("phx_reply")).payload["status"] == "ok"
        published = await user.next("broadcast")
        assert published.payload["payload"]["symbol"] == "PUB"
        assert published.payload["meta"]["operation"] == "BROADCAST"
        assert int(published.payload["meta"]["id"]) > int(binary.payload["meta"]["id"])


async def test_replay_delivers_logged_events_since_a_time(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(replay_window=2)
    await db.fetchval(INSERT, "u1", "BEFORE", 1)
    await asyncio.sleep(0.05)
    since = int(time.time() * 1000)
    for i in range(4):
        await db.fetchval(INSERT, "u1", f"R{i}", 1)
    assert await bridge.bridge.hub.wait_for_head(5, timeout=10)
    async with phx(bridge) as client:
        replay = {"since": since}
        await client.join("realtime:position-updates", {"broadcast": {"replay": replay}})
        got = [(await client.next("broadcast")).payload for _ in range(4)]
        assert [g["payload"]["symbol"] for g in got] == ["R0", "R1", "R2", "R3"]
        assert all(g["meta"]["replayed"] is True for g in got)
        await db.fetchval(INSERT, "u1", "LIVE", 1)
        live = await client.next("broadcast")
        assert live.payload["payload"]["symbol"] == "LIVE"
        assert "replayed" not in live.payload["meta"]
        # Nothing since a moment in the future; ephemeral topics replay nothing.
        replay = {"since": int(time.time() * 1000) + 60_000}
        await client.join("realtime:trade-updates", {"broadcast": {"replay": replay}})
        await client.join("realtime:chat", {"broadcast": {"replay": {"since": 0}}})
        assert await client.silent(0.3)


async def test_rest_broadcast_batch_and_single(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    api = f"{bridge.url}/realtime/v1/api/broadcast"
    headers = {"apikey": bridge.service_key}
    async with (
        phx(bridge, vsn="2.0.0") as v2,
        phx(bridge) as v1,
        httpx.AsyncClient() as http,
    ):
        await v2.join("realtime:news")
        await v1.join("realtime:news")
        await v1.join("realtime:position-updates")
        position = {"id": 5, "user_id": "u1", "symbol": "REST", "quantity": 1, "entry_price": 3}
        batch: dict[str, list[dict[str, Any]]] = {
            "messages": [
                {"topic": "news", "event": "headline", "payload": {"n": 1}, "id": "m-1"},
                {"topic": "news", "event": "headline", "payload": {"n": 2}, "private": True},
                {"topic": "position-updates", "event": "position_update", "payload": position},
            ]
        }
        response = await http.post(api, json=batch, headers=headers)
        assert response.status_code == 202
        assert response.content == b""
        first = await v2.recv()
        assert first.binary is not None
        assert first.payload["payload"] == {"n": 1}
        assert first.payload["meta"] == {"id": "m-1"}
        assert (await v1.recv()).payload["meta"] == {"id": "m-1"}
        typed = await v1.next("broadcast")
        assert typed.topic == "realtime:position-updates"
        assert typed.payload["payload"]["market_value"] is None
        assert await v2.silent(0.2)  # the private message went to the private room

        # Checked whole before anything is delivered.
        bad = {"messages": [batch["messages"][0], {**batch["messages"][2], "payload": {"x": 1}}]}
        response = await http.post(api, json=bad, headers=headers)
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_payload"
        response = await http.post(api, json=batch, headers={"apikey": bridge.anon_key})
        assert response.status_code == 403
        response = await http.post(api, json={"messages": []}, headers=headers)
        assert response.status_code == 400
        assert await v2.silent(0.2)

        # One message; the extra query parameters supabase-js appends are ignored.
        single = f"{api}/news/events/flash?apikey=x&vsn=2.0.0"
        response = await http.post(single, json={"n": 3}, headers=headers)
        assert response.status_code == 202
        assert (await v2.recv()).payload["payload"] == {"n": 3}
        assert (await v1.recv()).payload["payload"] == {"n": 3}
        response = await http.post(
            single,
            content=b"\x01\x02",
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 202
        assert (await v2.recv()).payload["payload"] == b"\x01\x02"
        assert await v1.silent(0.2)


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_an_oversized_message_is_refused_and_the_socket_stays(
    start_bridge: BridgeFactory, vsn: str
) -> None:
    # Supabase's default: 256 KB messages; one too large is refused on its own channel.
    bridge = await start_bridge()
    assert bridge.bridge.settings.max_message_bytes == 256 * 1024
    topic = "realtime:big"
    big, huge = {"blob": "x" * 200_000}, {"blob": "y" * 300_000}
    async with phx(bridge, vsn=vsn) as sender, phx(bridge, vsn=vsn) as other:
        for client in (sender, other):
            await client.join(topic, {"broadcast": {"ack": True}})
            await client.join("realtime:bystander")

        async def send(payload: dict[str, Any]) -> str:
            if vsn == "2.0.0":
                return await sender.push_binary(topic, "blob", orjson.dumps(payload))
            body = {"type": "broadcast", "event": "blob", "payload": payload}
            return await sender.push(topic, "broadcast", body)

        ref = await send(big)
        assert (await sender.next("phx_reply")).payload == {"status": "ok", "response": {}}
        got = await other.next("broadcast")
        assert got.payload["payload"] == big
        if vsn == "2.0.0":
            assert got.binary is not None

        ref = await send(huge)
        refused = await sender.next("phx_reply")
        assert refused.ref == ref
        assert refused.topic == topic
        assert refused.payload["status"] == "error"
        assert refused.payload["response"]["reason"].startswith(
            "payload_size_exceeded: a message of "
        )
        assert await other.silent(0.3)
        # The socket and all its channels carry on.
        await send({"small": True})
        assert (await sender.next("phx_reply")).payload["status"] == "ok"
        assert (await other.next("broadcast")).payload["payload"] == {"small": True}
        await sender.push("phoenix", "heartbeat", {})
        assert (await sender.next("phx_reply")).payload["status"] == "ok"

        # Without ack, the refusal is also a system message on the channel.
        await sender.join("realtime:noack")
        await sender.push(
            "realtime:noack", "broadcast", {"type": "broadcast", "event": "e", "payload": huge}
        )
        system = await sender.next("system")
        assert system.payload["extension"] == "broadcast"
        assert system.payload["status"] == "error"
        assert system.payload["message"].startswith("payload_size_exceeded")
    assert bridge.bridge.stats()["errors_sent"]["payload_size_exceeded"] == 2


async def test_a_frame_beyond_the_websocket_limit_closes_the_socket(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge(max_message_bytes=1024)
    async with phx(bridge) as client:
        # Read and refused up to twice the message limit (at least 1 MiB); beyond, 1009.
        await client.push("realtime:x", "broadcast", {"padding": "x" * (1024 * 1024 + 10)})
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009
