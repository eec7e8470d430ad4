"""`protocols/wire.py`: frames built once, several per write(), batch frames on request."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import websockets
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from realtime_bridge.protocols import wire
from realtime_bridge.protocols.wire import Encoder, header, write_batches, write_frames
from realtime_bridge.testing import run_bridge
from tests.conftest import BridgeFactory, make_settings

INSERT_MANY = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "SELECT 'u1', 'S' || i, i, 100, 110 FROM generate_series(1, $1) AS i"
)


def test_headers_are_rfc6455_unmasked_lengths() -> None:
    assert header(wire.OP_TEXT, 125) == b"\x81\x7d"
    assert header(wire.OP_TEXT, 126) == b"\x81\x7e\x00\x7e"
    assert header(wire.OP_BINARY, 65535) == b"\x82\x7e\xff\xff"
    assert header(wire.OP_TEXT, 65536) == b"\x81\x7f" + (65536).to_bytes(8, "big")


def test_a_shared_frame_is_built_once_header_included() -> None:
    encoder = Encoder()
    body = '"seq":1}' + "é"
    frame = ('{"type":"x",', body)
    first = encoder.frame(frame)
    assert encoder.frame(frame) is first
    assert first == header(wire.OP_TEXT, len("".join(frame).encode())) + "".join(frame).encode()
    # Per-receiver frames around the same body reuse its bytes.
    assert encoder.text(body) is encoder.text(body)


def test_an_encoder_bounded_in_bytes_starts_afresh() -> None:
    encoder = Encoder(limit=100)
    parts = ["x" * 60 for _ in range(3)]
    for part in parts:
        encoder.text(part)
    assert encoder.size <= 100


def test_frames_are_coalesced_into_buffers_bounded_in_bytes() -> None:
    encoder = Encoder()
    frames = [("a" * 1000,) for _ in range(200)]
    buffers = list(write_frames(encoder, frames, shared=False))
    assert 1 < len(buffers) < 10
    assert all(len(b) < wire.WRITE_BYTES + 1100 for b in buffers)
    assert b"".join(buffers) == b"".join(header(wire.OP_TEXT, 1000) + b"a" * 1000 for _ in frames)


def test_batches_are_json_arrays_and_a_lone_frame_stays_an_object() -> None:
    encoder = Encoder()
    frames = [('{"n":', str(i), "}") for i in range(3)]
    (data,) = write_batches(encoder, frames)
    assert (
        data
        == header(wire.OP_TEXT, len('[{"n":0},{"n":1},{"n":2}]')) + b'[{"n":0},{"n":1},{"n":2}]'
    )
    (alone,) = write_batches(encoder, frames[:1])
    assert alone == header(wire.OP_TEXT, 7) + b'{"n":0}'


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = wire.Link.write

    def counting(self: wire.Link, data: bytes) -> None:
        sizes.append(len(data))
        original(self, data)

    monkeypatch.setattr(wire.Link, "write", counting)
    return sizes


async def test_queued_frames_go_out_several_per_write(
    start_bridge: BridgeFactory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        writes = _count_writes(monkeypatch)
        await db.execute(INSERT_MANY, 50)
        events = await ws.changes(50)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 50
    assert 0 < len(writes) < 25, writes


async def _frames(ws: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """Raw decoded frames until `count` db_change events arrived (arrays flattened)."""
    frames: list[Any] = []
    got = 0
    async with asyncio.timeout(timeout):
        while got < count:
            frame = orjson.loads(await ws.recv())
            frames.append(frame)
            got += len(frame) if isinstance(frame, list) else frame["type"] == "db_change"
    return frames


async def test_batch_1_sends_events_queued_together_as_one_array(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    url = f"{bridge.ws_url}?apikey={bridge.service_key}&batch=1"
    async with websockets.connect(url) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "channel": "position-updates"}).decode())
        reply = orjson.loads(await ws.recv())
        assert reply["type"] == "subscribed"  # alone in the queue: a plain object
        await db.execute(INSERT_MANY, 50)
        frames = await _frames(ws, 50)
    assert any(isinstance(f, list) and len(f) > 1 for f in frames), frames
    events = [e for f in frames for e in (f if isinstance(f, list) else [f])]
    assert [e["type"] for e in events] == ["db_change"] * 50
    assert all(e["subscription_id"] == reply["subscription_id"] for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 50


async def test_without_batch_every_frame_is_an_object(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        await db.execute(INSERT_MANY, 30)
        frames = await _frames(ws.ws, 30)
    assert all(isinstance(f, dict) for f in frames)


async def test_an_unknown_batch_value_is_refused(start_bridge: BridgeFactory) -> None:
    bridge = await start_bridge()
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(f"{bridge.ws_url}?apikey={bridge.service_key}&batch=yes"):
            pass
    assert refused.value.response.status_code == 400


async def test_another_websocket_implementation_still_gets_every_frame(
    dsn: str, db: asyncpg.Connection
) -> None:
    # uvicorn's legacy implementation has no Link: frames go through ASGI sends.
    async with run_bridge(make_settings(dsn), ws="websockets") as bridge, bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        await db.execute(INSERT_MANY, 20)
        events = await ws.changes(20)
    assert len({e["seq"] for e in events}) == 20


def test_uvloop_transports_count_as_transports() -> None:
    # uvloop's are no asyncio.Transport subclass: `serve` runs on uvloop when installed.
    uvloop = pytest.importorskip("uvloop")
    assert wire.is_transport(uvloop.loop.TCPTransport) is True
    assert wire.is_transport(object()) is False


# -- permessage-deflate, compress-once ------------------------------------------------


def inflate(data: bytes, wbits: int = 15) -> bytes:
    """What a client does with a message compressed without context takeover (RFC 7692)."""
    client = PerMessageDeflate(
        remote_no_context_takeover=True,
        local_no_context_takeover=True,
        remote_max_window_bits=wbits,
        local_max_window_bits=wbits,
    )
    frame = Frame(Opcode.TEXT, data, rsv1=True)
    return bytes(client.decode(frame).data)


def parse(wire_bytes: bytes) -> list[tuple[int, bytes]]:
    """Unmasked frames as (first byte, payload)."""
    frames = []
    at = 0
    while at < len(wire_bytes):
        first, length = wire_bytes[at], wire_bytes[at + 1] & 0x7F
        at += 2
        if length == 126:
            length = int.from_bytes(wire_bytes[at : at + 2], "big")
            at += 2
        elif length == 127:
            length = int.from_bytes(wire_bytes[at : at + 8], "big")
            at += 8
        frames.append((first, wire_bytes[at : at + length]))
        at += length
    return frames


def test_independently_deflated_parts_inflate_as_one_message() -> None:
    encoder = Encoder()
    rng = random.Random(7)
    noise = "".join(rng.choice("0123456789abcdef") for _ in range(100_000))
    for parts in [
        ('{"type":"db_change","subscription_id":"0001",', '"data":{"qty":"1"}}'),
        ("é" * 3000, "", '"€"' * 500, "x"),
        ("[" * 10_000, "]" * 10_000),
        (noise, noise[:5000]),
    ]:
        for wbits in (9, 12, 15):
            (first, payload), *rest = parse(b"".join(encoder.deflated_parts(parts, wbits)))
            assert rest == []
            assert first == wire.OP_TEXT | wire.RSV1
            assert inflate(payload, wbits) == "".join(parts).encode()


def test_a_shared_part_or_frame_is_deflated_once_per_window_size() -> None:
    encoder = Encoder()
    body = '"data":{"symbol":"AAPL","quantity":10}}'
    prefixes = [f'{{"type":"db_change","subscription_id":"s{i}",' for i in range(50)]
    for prefix in prefixes:
        encoder.deflated_parts((prefix, body), 15)
    assert encoder.deflations == 1 + 50  # the body once, each receiver's prefix once
    frame = ('{"event":"broadcast",', body)
    shared = encoder.deflated_frame(frame, 15)
    for _ in range(100):
        assert encoder.deflated_frame(frame, 15) is shared
    assert encoder.deflations == 52
    encoder.deflated_frame(frame, 12)  # another negotiated window: another compression
    assert encoder.deflations == 53
    ((first, payload),) = parse(shared)
    assert first == wire.OP_TEXT | wire.RSV1
    assert inflate(payload) == "".join(frame).encode()


def test_deflated_batches_and_frames_round_trip() -> None:
    encoder = Encoder()
    frames = [('{"n":', str(i), "}") for i in range(300)] + [("\x00\x01\x02binary",)]
    batched = parse(b"".join(write_batches(encoder, frames[:300], 15)))
    arrays = [orjson.loads(inflate(p)) for _, p in batched]
    assert [item["n"] for array in arrays for item in array] == list(range(300))
    singles = parse(b"".join(write_frames(encoder, frames, shared=False, deflate=15)))
    assert [inflate(p) for _, p in singles[:300]] == [f'{{"n":{i}}}'.encode() for i in range(300)]
    first, payload = singles[300]
    assert first == wire.OP_BINARY | wire.RSV1
    assert inflate(payload) == b"\x01\x02binary"


def negotiated(ws: Any) -> list[Any]:
    """The extensions a `websockets` client connection ended up with."""
    return list(ws.protocol.extensions)


async def test_deflate_is_off_by_default_even_when_the_client_offers_it(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge()
    async with bridge.websocket(compression="deflate") as ws:
        assert ws.ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.ws.response.headers
        assert negotiated(ws.ws) == []
        await ws.subscribe(channel="position-updates")
        before = wire.ENCODER.deflations
        await db.execute(INSERT_MANY, 5)
        assert len(await ws.changes(5)) == 5
        assert wire.ENCODER.deflations == before
    async with httpx.AsyncClient() as http:
        stats = await http.get(f"{bridge.url}/api/stats", headers=bridge.service_headers)
    assert stats.json()["permessage_deflate"] is None


async def test_a_broadcast_is_deflated_once_for_every_receiver_that_negotiated_it(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(ws_permessage_deflate=True)
    async with (
        bridge.websocket(compression="deflate") as a,
        bridge.websocket(compression="deflate") as b,
        bridge.websocket(compression="deflate") as c,
        bridge.websocket(compression=None) as plain,
    ):
        for ws in (a, b, c):
            (ext,) = negotiated(ws.ws)
            assert isinstance(ext, PerMessageDeflate)
            # Both directions without context takeover: the server's frames
            # depend on nothing but their payload.
            assert ext.remote_no_context_takeover is True
            assert ext.local_no_context_takeover is True
        assert negotiated(plain.ws) == []
        for ws in (a, b, c, plain):
            # The client's frames are compressed too: the protocol inflates them.
            reply = await ws.subscribe(channel="position-updates", client_id="0001")
            assert reply["type"] == "subscribed"
            assert reply["client_id"] == "0001"
        before = wire.ENCODER.deflations
        await db.execute(INSERT_MANY, 20)
        received = [await ws.changes(20) for ws in (a, b, c, plain)]
        # Each event's shared body once, each deflating subscription's prefix once,
        # not once per receiver and event (3 x 20).
        assert wire.ENCODER.deflations - before == 20 + 3
        async with httpx.AsyncClient() as http:
            stats = await http.get(f"{bridge.url}/api/stats", headers=bridge.service_headers)
        counted = stats.json()["permessage_deflate"]
        assert counted["compressions"] == wire.ENCODER.deflations
        assert 0 < counted["bytes_out"] < counted["bytes_in"]
    payloads = [[(e["seq"], e["data"]) for e in events] for events in received]
    assert payloads[0] == payloads[1] == payloads[2] == payloads[3]
    assert len({seq for seq, _ in payloads[0]}) == 20


async def test_a_large_compressed_frame_round_trips_both_ways(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    bridge = await start_bridge(ws_permessage_deflate=True)
    async with bridge.websocket(compression="deflate") as ws:
        # Highly compressible and deep: the limits apply to the inflated frame.
        await ws.send('{"type":"ping","pad":"' + "0" * 200_000 + '"}')
        error = await ws.recv()
        assert error["code"] == "too_large"
        assert ws.ws.close_code == 1009 or await _closed(ws.ws) == 1009


async def _closed(ws: Any) -> int | None:
    await asyncio.wait_for(ws.wait_closed(), 5)
    code: int | None = ws.close_code
    return code


async def test_phoenix_broadcasts_are_deflated_once_and_plain_members_get_plain_frames(
    start_bridge: BridgeFactory,
) -> None:
    bridge = await start_bridge(ws_permessage_deflate=True)
    url = f"ws://127.0.0.1:{bridge.port}/realtime/v1/websocket?apikey={bridge.service_key}"
    api = f"{bridge.url}/realtime/v1/api/broadcast"
    join = orjson.dumps(
        {"topic": "realtime:news", "event": "phx_join", "payload": {"config": {}}, "ref": "1"}
    ).decode()
    async with contextlib.AsyncExitStack() as stack:
        members = [
            await stack.enter_async_context(
                websockets.connect(url + "&vsn=1.0.0", compression=compression)
            )
            for compression in ("deflate", "deflate", "deflate", None)
        ]
        for ws in members:
            await ws.send(join)
            reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["event"] == "phx_reply"
            assert reply["payload"]["status"] == "ok"
        assert [len(negotiated(ws)) for ws in members] == [1, 1, 1, 0]
        before = wire.ENCODER.deflations
        payload = {"symbol": "AAPL", "quantity": "0001", "nested": [[[["deep"]]]]}
        async with httpx.AsyncClient() as http:
            response = await http.post(
                api,
                json={"messages": [{"topic": "news", "event": "tick", "payload": payload}]},
                headers={"apikey": bridge.service_key},
            )
        assert response.status_code == 202
        frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for ws in members]
        assert wire.ENCODER.deflations - before == 1
    assert all(f["event"] == "broadcast" for f in frames)
    assert all(f["payload"]["payload"] == payload for f in frames)


async def test_a_failing_write_drops_the_connection_and_the_bridge_serves_on(
    start_bridge: BridgeFactory, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime_bridge.protocols import websocket

    bridge = await start_bridge()

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("encoder bug")

    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        monkeypatch.setattr(websocket, "write_frames", broken)
        await db.execute(INSERT_MANY, 1)
        # Dropped (the client reconnects and resumes), never left waiting in silence.
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv(5)
    monkeypatch.undo()
    async with bridge.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        await db.execute(INSERT_MANY, 2)
        assert len(await ws.changes(2)) == 2
