"""price-updates bench: ticks in over POST /api/prices, conflated out to WebSocket clients.

    python -m bench.market [--symbols 1000 --clients 1000 --watch 20 --rate 50000 --seconds 10]

The bridge runs in this process (embedded Postgres, uvicorn); the publisher
runs in one child process and the clients in `--client-procs` others. Each
tick carries its send time, so a client measures tick → client latency; the
bridge samples how old ticks are when they arrive and when a connection's
writer takes them, which tells a backlog in the bridge from one in the
load generator. A share of the clients
(`--stalled`) subscribe and never read, to show that the server's memory
stays bounded whatever the clients' speed. Prints one line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import psutil
import websockets

from realtime_bridge.market import PriceWatch, Tick
from realtime_bridge.settings import Settings
from realtime_bridge.testing import TestDatabase, run_bridge


async def _clients(
    args: dict[str, Any], part: int, url: str, key: str, ready: Any, stop_flag: Any, out: Any
) -> None:
    rng = random.Random(7 + part)
    symbols = [f"S{i:04d}" for i in range(args["symbols"])]
    latencies: list[float] = []
    received = 0
    sockets = []
    ws_url = url.replace("http", "ws") + f"/ws/db_subscriptions?apikey={key}"
    procs = args["client_procs"]
    mine = range(part, args["clients"], procs)
    stalled = int(args["clients"] * args["stalled"])
    for index in mine:
        ws = await websockets.connect(ws_url, max_size=None)
        watch = rng.sample(symbols, args["watch"])
        await ws.send(
            orjson.dumps(
                {"type": "subscribe", "channel": "price-updates", "filters": {"symbol": watch}}
            )
        )
        await ws.recv()
        sockets.append((ws, index < stalled))
    stop = asyncio.Event()

    async def read(ws: Any) -> None:
        nonlocal received
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            except websockets.ConnectionClosed:
                return
            frame = orjson.loads(raw)
            received += 1
            if received % 7 == 0:  # sample: parsing every timestamp would slow the reader
                stamp = frame["data"]["timestamp"].replace("Z", "+00:00")
                latencies.append(time.time() - datetime.fromisoformat(stamp).timestamp())

    readers = [asyncio.create_task(read(ws)) for ws, stuck in sockets if not stuck]
    ready.put(part)
    started = time.monotonic()
    await asyncio.to_thread(stop_flag.wait)  # a multiprocessing.Event, set by the bridge
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*readers)
    out.put({"received": received, "elapsed": elapsed, "latencies": latencies})
    await asyncio.gather(*(ws.close() for ws, _ in sockets), return_exceptions=True)


async def _publish(args: dict[str, Any], url: str, service: str, out: Any) -> None:
    rng = random.Random(3)
    symbols = [f"S{i:04d}" for i in range(args["symbols"])]
    batch = args["batch"]
    interval = batch / args["rate"]
    sent = 0
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {service}"}
    ) as http:
        start = loop.time()
        next_at = start
        while loop.time() - start < args["seconds"]:
            now = time.time()
            ticks = [
                {"symbol": rng.choice(symbols), "price": 100 + rng.random(), "timestamp": now}
                for _ in range(batch)
            ]
            response = await http.post("/api/prices", content=orjson.dumps({"ticks": ticks}))
            assert response.status_code == 202, response.text
            sent += batch
            next_at += interval
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = loop.time() - start
    out.put({"sent": sent, "elapsed": elapsed})


def _clients_child(*args: Any) -> None:
    asyncio.run(_clients(*args))


def _publish_child(*args: Any) -> None:
    asyncio.run(_publish(*args))


def _ms(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000, 2)


class ServerClock:
    """Samples, inside the bridge, how old each tick is when a writer pulls it.

    publisher → bridge: `received - ts` (HTTP and request parsing); bridge →
    writer: pulled - `received` (routing, conflation, waiting for the
    connection's writer). What is left of the client's figure past these is
    the socket and the load generator's own event loop.
    """

    def __init__(self) -> None:
        self.inbound: list[float] = []
        self.outbound: list[float] = []
        self.count = 0
        self._original = PriceWatch._frames

    def __enter__(self) -> ServerClock:
        original = self._original
        clock = self

        def frames(watch: PriceWatch, ticks: list[Tick]) -> list[str]:
            now = time.time()
            for tick in ticks:
                clock.count += 1
                if clock.count % 7 == 0:
                    clock.inbound.append(tick.received - tick.ts)
                    clock.outbound.append(now - tick.received)
            return original(watch, ticks)

        PriceWatch._frames = frames  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        PriceWatch._frames = self._original  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    async with TestDatabase.start(os.environ.get("DATABASE_URL") or None) as databases:
        dsn = await databases.create()
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=dsn,
            plugin_paths=[],
            max_connections_per_ip=100_000,
            max_connections_per_user=100_000,
            price_max_batch=100_000,
        )
        async with run_bridge(settings) as running:
            server = psutil.Process()
            rss_before = server.memory_info().rss
            context = multiprocessing.get_context("spawn")
            ready, out, published = context.Queue(), context.Queue(), context.Queue()
            stop_flag = context.Event()
            options = vars(args)
            readers = [
                context.Process(
                    target=_clients_child,
                    args=(options, part, running.url, running.anon_key, ready, stop_flag, out),
                )
                for part in range(args.client_procs)
            ]
            for child in readers:
                child.start()
            for _ in readers:
                await asyncio.to_thread(ready.get, True, 120)
            publisher = context.Process(
                target=_publish_child,
                args=(options, running.url, running.service_key, published),
            )
            peak = rss_before
            cpu_before = server.cpu_times()
            with ServerClock() as clock:
                publisher.start()
                while publisher.is_alive():
                    peak = max(peak, server.memory_info().rss)
                    await asyncio.sleep(0.2)
                await asyncio.sleep(0.5)
            cpu = server.cpu_times()
            stop_flag.set()
            sent = published.get(timeout=5)
            parts = [await asyncio.to_thread(out.get, True, 30) for _ in readers]
            for child in readers:
                child.join(10)
            latencies = [v for part in parts for v in part["latencies"]]
            received = sum(part["received"] for part in parts)
            elapsed = sent["elapsed"]
            busy = (cpu.user - cpu_before.user + cpu.system - cpu_before.system) / (elapsed + 0.5)
            pending = sum(
                len(w.pending) for ws in running.bridge.market.watchers.values() for w in ws
            )
            print(
                f"market bench: {args.symbols} symbols, {args.clients} clients x {args.watch} "
                f"symbols ({int(args.clients * args.stalled)} never read) in "
                f"{args.client_procs} process(es), target {args.rate} ticks/s for "
                f"{args.seconds}s -> {round(sent['sent'] / elapsed)} ticks/s in, "
                f"{round(received / elapsed)} deliveries/s out, tick->client p50 "
                f"{_ms(latencies, 0.5)} ms p99 {_ms(latencies, 0.99)} ms; in the bridge: "
                f"publisher->bridge p50 {_ms(clock.inbound, 0.5)} p99 {_ms(clock.inbound, 0.99)}"
                f" ms, bridge->writer p50 {_ms(clock.outbound, 0.5)} p99 "
                f"{_ms(clock.outbound, 0.99)} ms, bridge CPU {busy:.0%} of a core; server RSS "
                f"{rss_before / 2**20:.0f} -> peak {peak / 2**20:.0f} MiB, conflation buffers "
                f"{pending} entries at end"
            )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--watch", type=int, default=20)
    parser.add_argument("--rate", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--stalled", type=float, default=0.1)
    parser.add_argument(
        "--client-procs", type=int, default=1, help="processes the clients are spread over"
    )
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
