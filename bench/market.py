"""price-updates bench: ticks in over POST /api/prices, conflated out to WebSocket clients.

    python -m bench.market [--symbols 1000 --clients 1000 --watch 20 --rate 50000 --seconds 10]

The bridge runs in this process (embedded Postgres, uvicorn); the publisher
and the clients run in one child process. Each tick carries its send time,
so a client measures tick → client latency. A share of the clients
(`--stalled`) subscribe and never read, to show that the server's memory
stays bounded whatever the clients' speed. Prints one line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import psutil
import websockets

from realtime_bridge.settings import Settings
from realtime_bridge.testing import TestDatabase, run_bridge


async def _clients(args: dict[str, Any], url: str, key: str, service: str, out: Any) -> None:
    rng = random.Random(7)
    symbols = [f"S{i:04d}" for i in range(args["symbols"])]
    latencies: list[float] = []
    received = 0
    sockets = []
    ws_url = url.replace("http", "ws") + f"/ws/db_subscriptions?apikey={key}"
    stalled = int(args["clients"] * args["stalled"])
    for index in range(args["clients"]):
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
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*readers)
    for ws, _ in sockets:
        await ws.close()
    latencies.sort()
    out.put(
        {
            "ticks_per_s": round(sent / elapsed),
            "deliveries_per_s": round(received / elapsed),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
            "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
        }
    )


def _child(args: dict[str, Any], url: str, key: str, service: str, out: Any) -> None:
    asyncio.run(_clients(args, url, key, service, out))


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
            out = context.Queue()
            child = context.Process(
                target=_child,
                args=(vars(args), running.url, running.anon_key, running.service_key, out),
            )
            child.start()
            peak = rss_before
            while child.is_alive():
                peak = max(peak, server.memory_info().rss)
                await asyncio.sleep(0.2)
            figures = out.get(timeout=5)
            pending = sum(
                len(w.pending) for ws in running.bridge.market.watchers.values() for w in ws
            )
            print(
                f"market bench: {args.symbols} symbols, {args.clients} clients x {args.watch} "
                f"symbols ({int(args.clients * args.stalled)} never read), target "
                f"{args.rate} ticks/s for {args.seconds}s -> {figures['ticks_per_s']} ticks/s in, "
                f"{figures['deliveries_per_s']} deliveries/s out, tick->client p50 "
                f"{figures['p50_ms']} ms p99 {figures['p99_ms']} ms, server RSS "
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
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
