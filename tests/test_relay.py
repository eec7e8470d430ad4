"""The relay to Supabase's broadcast REST API: bodies, batching, retries, back-pressure.

Supabase is stood in for by respx. Most tests drive a real `Hub` directly
(no database); the last ones run a whole bridge and check that its own
clients are served no matter what the relay endpoint does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import respx
from pydantic import BaseModel, ValidationError

from realtime_bridge.change import Change
from realtime_bridge.filters import Filter
from realtime_bridge.hub import Hub
from realtime_bridge.metrics import render_metrics
from realtime_bridge.plugins import Plugin, PluginRegistry
from realtime_bridge.protocols.outlet import QueueOutlet
from realtime_bridge.relay import Relay
from realtime_bridge.settings import Settings
from tests.conftest import BridgeFactory
from tests.helpers import sample, until

SUPABASE = "https://abcdefghijkl.supabase.co"
ENDPOINT = f"{SUPABASE}/realtime/v1/api/broadcast"
KEY = "service-role-key"
CHANNELS = ["position-updates", "trade-updates", "portfolio-updates"]


class Sleeps:
    """Records the relay's backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


def hub_for(registry: PluginRegistry) -> Hub:
    hub = Hub(window=10_000)
    for plugin in registry:
        hub.add_channel(plugin.channel, columns=plugin.columns())
        for table in plugin.tables:
            hub.add_channel(table)
    return hub


def position(seq: int, *, user: str = "u1", quantity: float = 10) -> Change:
    row = {
        "id": seq,
        "user_id": user,
        "symbol": "AAPL",
        "quantity": quantity,
        "entry_price": 190,
        "current_price": 192.5,
        "status": "open",
    }
    return Change(
        seq=seq,
        operation="INSERT",
        schema="public",
        table="positions",
        record=row,
        old_record=None,
        committed_at=datetime(2026, 11, 23, 7, 36, 57, tzinfo=UTC),
    )


def trade(seq: int) -> Change:
    row = {
        "id": seq,
        "user_id": "u2",
        "symbol": "MSFT",
        "signal_type": "BUY",
        "quantity": 1,
        "entry_price": 400,
    }
    return Change(
        seq=seq,
        operation="INSERT",
        schema="public",
        table="trades",
        record=row,
        old_record=None,
        committed_at=datetime(2026, 11, 23, 7, 36, 58, tzinfo=UTC),
    )


def publish(hub: Hub, registry: PluginRegistry, *changes: Change) -> None:
    for change in changes:
        hub.publish(change.seq, registry.events_for(change))


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for call in route.calls:
        request: httpx.Request = call.request
        found.append(json.loads(request.content))
    return found


def seqs(route: respx.Route) -> list[list[int]]:
    return [[m["payload"]["seq"] for m in body["messages"]] for body in bodies(route)]


@pytest.fixture
def supabase() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False) as router:
        yield router


def relay_for(**options: Any) -> Relay:
    options.setdefault("batch_wait", 0.01)
    return Relay(SUPABASE, KEY, **options)


# bodies and batching -------------------------------------------------------


async def test_each_typed_event_is_posted_once_with_the_exact_body_and_keys(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    hub = hub_for(registry)
    relay = relay_for()
    relay.start(hub, CHANNELS)
    publish(hub, registry, position(1), trade(2))
    await until(lambda: relay.stats.sent == 2)
    await relay.stop(hub)

    assert route.call_count == 1  # both in one batch
    request: httpx.Request = route.calls[0].request
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    (body,) = bodies(route)
    assert [(m["topic"], m["event"], m["private"], sorted(m)) for m in body["messages"]] == [
        ("position-updates", "position_update", False, ["event", "payload", "private", "topic"]),
        ("trade-updates", "trade_update", False, ["event", "payload", "private", "topic"]),
    ]
    payload = body["messages"][0]["payload"]
    # The same fields as a db_change frame (without the per-subscription ones).
    assert payload == {
        "channel": "position-updates",
        "event": "position_update",
        "table": "public.positions",
        "operation": "INSERT",
        "user_id": "u1",
        "record_id": 1,
        "data": payload["data"],
        "old": None,
        "seq": 1,
        "timestamp": "2026-11-23T07:36:57+00:00",
    }
    assert payload["data"]["market_value"] == 1925.0  # the typed payload, computed fields too
    assert relay.to_json()["sent"] == 2
    assert relay.to_json()["batches"] == 1


async def test_batches_hold_at_most_batch_size_in_seq_order(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    hub = hub_for(registry)
    relay = relay_for(batch_size=3, batch_wait=0.2)
    relay.start(hub, CHANNELS)
    await asyncio.sleep(0)
    publish(hub, registry, *(position(seq) for seq in range(1, 8)))
    await until(lambda: relay.stats.sent == 7)
    await relay.stop(hub)
    assert seqs(route) == [[1, 2, 3], [4, 5, 6], [7]]


async def test_a_lone_event_waits_batch_wait_then_goes(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    hub = hub_for(registry)
    relay = relay_for(batch_size=100, batch_wait=0.5)
    relay.start(hub, CHANNELS)
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    publish(hub, registry, position(1))
    await asyncio.sleep(0.1)
    assert route.call_count == 0  # still collecting
    publish(hub, registry, position(2))
    await until(lambda: route.call_count == 1)
    waited = loop.time() - started
    await relay.stop(hub)
    assert 0.49 <= waited < 2.0
    assert seqs(route) == [[1, 2]]


# retries -------------------------------------------------------------------


async def test_429_and_5xx_are_retried_with_exponential_backoff_and_retry_after(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT)
    route.side_effect = [
        httpx.Response(429, json={"message": "You have exceeded your rate limit"}),
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "3"}),
        httpx.Response(500),
        httpx.Response(202),
    ]
    sleeps = Sleeps()
    hub = hub_for(registry)
    relay = relay_for(sleep=sleeps, backoff=0.5)
    relay.start(hub, CHANNELS)
    publish(hub, registry, position(1))
    await until(lambda: relay.stats.sent == 1)
    await relay.stop(hub)

    assert route.call_count == 5
    assert sleeps.delays == [0.5, 1.0, 3.0, 4.0]  # doubling; Retry-After when longer
    assert len({call.request.content for call in route.calls}) == 1
    assert (relay.stats.retries, relay.stats.failed) == (4, 0)


async def test_network_errors_are_retried_then_the_batch_is_given_up_and_the_next_goes(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT)
    route.side_effect = [
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
        httpx.Response(202),
    ]
    sleeps = Sleeps()
    hub = hub_for(registry)
    relay = relay_for(sleep=sleeps, max_retries=2, backoff=0.25, backoff_max=0.4)
    relay.start(hub, CHANNELS)
    publish(hub, registry, position(1))
    await until(lambda: relay.stats.failed == 1)
    publish(hub, registry, position(2))
    await until(lambda: relay.stats.sent == 1)
    await relay.stop(hub)

    assert sleeps.delays == [0.25, 0.4]  # capped by backoff_max
    assert seqs(route) == [[1], [1], [1], [2]]
    assert relay.stats.last_error is not None
    assert "ConnectError" in relay.stats.last_error


@pytest.mark.parametrize("status", [400, 401, 403, 413, 422])
async def test_client_errors_are_counted_as_failed_without_retrying(
    registry: PluginRegistry, supabase: respx.MockRouter, status: int
) -> None:
    route = supabase.post(ENDPOINT).respond(status, json={"message": "no"})
    sleeps = Sleeps()
    hub = hub_for(registry)
    relay = relay_for(sleep=sleeps)
    relay.start(hub, CHANNELS)
    publish(hub, registry, position(1), position(2))
    await until(lambda: relay.stats.failed == 2)
    await relay.stop(hub)
    assert route.call_count == 1
    assert sleeps.delays == []
    assert relay.stats.last_status == status
    assert relay.stats.sent == 0


# back-pressure -------------------------------------------------------------


async def test_a_hanging_endpoint_never_blocks_the_hub_and_the_queue_drops_the_oldest(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    release = asyncio.Event()
    entered: list[httpx.Request] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        entered.append(request)
        await release.wait()
        return httpx.Response(202)

    route = supabase.post(ENDPOINT)
    route.side_effect = hang
    hub = hub_for(registry)
    relay = relay_for(batch_size=1, queue_max=5, batch_wait=0)
    relay.start(hub, CHANNELS)
    local = QueueOutlet(limit=1000)
    sub = hub.subscribe("position-updates", Filter(), local)
    await hub.catch_up(sub)

    publish(hub, registry, position(1))
    await until(lambda: len(entered) == 1)  # seq 1 is in flight, stuck
    publish(hub, registry, *(position(seq) for seq in range(2, 22)))  # synchronous: no waiting
    assert len(await local.take(1000)) == 21  # the local client has everything
    assert relay.to_json()["queued"] == 5
    assert relay.to_json()["dropped"] == 15

    release.set()
    await until(lambda: relay.stats.sent == 6)
    await relay.stop(hub)
    assert seqs(route) == [[1], [17], [18], [19], [20], [21]]


async def test_events_routed_before_the_relay_started_are_relayed_from_since(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    hub = hub_for(registry)
    publish(hub, registry, position(1), position(2))  # e.g. while the bridge waited for its source
    relay = relay_for()
    relay.start(hub, CHANNELS, since=0)
    publish(hub, registry, position(3))
    await until(lambda: relay.stats.sent == 3)
    await relay.stop(hub)
    assert [seq for batch in seqs(route) for seq in batch] == [1, 2, 3]


async def test_only_the_active_instance_relays(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    leading = False
    hub = hub_for(registry)
    relay = relay_for(active=lambda: leading)
    relay.start(hub, CHANNELS)
    publish(hub, registry, position(1), position(2))
    await until(lambda: relay.to_json()["skipped_inactive"] == 2, what="both to be skipped")
    leading = True
    publish(hub, registry, position(3))
    await until(lambda: relay.stats.sent == 1)
    await relay.stop(hub)
    assert seqs(route) == [[3]]
    assert relay.to_json()["skipped_inactive"] == 2


async def test_stop_flushes_what_is_still_queued(
    registry: PluginRegistry, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    hub = hub_for(registry)
    relay = relay_for(batch_wait=30)  # would hold the batch for 30 s
    relay.start(hub, CHANNELS)
    publish(hub, registry, position(1), position(2))
    await asyncio.sleep(0.05)
    assert route.call_count == 0
    await relay.stop(hub)
    assert seqs(route) == [[1, 2]]
    assert hub.subscriptions_per_channel() == {}


# configuration -------------------------------------------------------------


class Tick(BaseModel):
    symbol: str
    price: float


def test_relay_private_marks_only_non_public_channels_private() -> None:
    registry = PluginRegistry(
        [
            Plugin(channel="ticks", event="tick", model=Tick, public=True, owner_column=None),
            Plugin(channel="orders", event="order", model=Tick),
        ]
    )
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        relay_to_supabase=True,
        supabase_url=SUPABASE,
        supabase_service_key=KEY,
        relay_private=True,
    )
    relay = Relay.from_settings(settings, registry)
    assert relay.private_channels == {"orders"}
    assert relay.endpoint == ENDPOINT


def test_relay_without_supabase_url_or_key_fails_with_the_variable_names() -> None:
    with pytest.raises(ValidationError, match="RELAY_TO_SUPABASE=true needs SUPABASE_URL"):
        Settings(_env_file=None, relay_to_supabase=True, supabase_url=SUPABASE)  # type: ignore[call-arg]


# a whole bridge ------------------------------------------------------------

RELAY_SETTINGS: dict[str, Any] = {
    "relay_to_supabase": True,
    "supabase_url": SUPABASE,
    "supabase_service_key": KEY,
    "relay_batch_ms": 5,
}


async def test_a_bridge_relays_what_its_own_clients_receive(
    start_bridge: BridgeFactory, supabase: respx.MockRouter
) -> None:
    route = supabase.post(ENDPOINT).respond(202)
    running = await start_bridge(**RELAY_SETTINGS)
    async with running.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        await running.bridge.publish(
            "position-updates",
            None,
            {"id": 1, "user_id": "u1", "symbol": "AAPL", "quantity": 2, "entry_price": 10},
        )
        (frame,) = await ws.changes(1)
    relay = running.bridge.relay
    assert relay is not None
    await until(lambda: relay.stats.sent == 1)
    (body,) = bodies(route)
    (message,) = body["messages"]
    assert (message["topic"], message["event"]) == ("position-updates", "position_update")
    local = {k: v for k, v in frame.items() if k not in ("type", "subscription_id")}
    assert message["payload"] == local
    stats = running.bridge.stats()
    assert stats["relay"]["sent"] == 1
    assert stats["relay"]["channels"] == sorted(p.channel for p in running.bridge.registry)
    assert set(CHANNELS) <= set(stats["relay"]["channels"])
    metrics = render_metrics(running.bridge)
    assert sample(metrics, "realtime_bridge_relay_messages_total", result="sent") == 1


async def test_a_hanging_relay_endpoint_does_not_slow_the_bridges_clients(
    start_bridge: BridgeFactory, supabase: respx.MockRouter
) -> None:
    release = asyncio.Event()
    entered: list[httpx.Request] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        entered.append(request)
        await release.wait()
        return httpx.Response(202)

    supabase.post(ENDPOINT).side_effect = hang
    running = await start_bridge(**RELAY_SETTINGS, relay_queue_max=10, relay_batch_size=5)
    async with running.websocket() as ws:
        await ws.subscribe(channel="position-updates")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for n in range(40):
            await running.bridge.publish(
                "position-updates",
                None,
                {"id": n, "user_id": "u1", "symbol": "AAPL", "quantity": n, "entry_price": 1},
                wait=0,
            )
        frames = await ws.changes(40, timeout=10)
        assert loop.time() - started < 5
    assert [f["data"]["id"] for f in frames] == list(range(40))
    relay = running.bridge.stats()["relay"]
    assert relay["sent"] == 0
    assert relay["queued"] == 10
    (stuck,) = entered  # one request, hanging; nothing else was attempted meanwhile
    in_flight = len(json.loads(stuck.content)["messages"])
    assert 1 <= in_flight <= 5
    assert relay["dropped"] == 40 - 10 - in_flight
    health = orjson.loads(orjson.dumps(running.bridge.health()[1]))
    assert health["status"] == "ok"
    release.set()
