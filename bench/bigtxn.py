"""`python -m bench.bigtxn`: one huge transaction through the bridge, on each capture.

Starts an embedded Postgres (or uses DATABASE_URL) and, for each capture in
CAPTURES, a bridge process on a fresh database with one WebSocket client on
the `public.positions` table channel. Then commits one transaction of ROWS
INSERTs and one UPDATE of UPDATES rows, and reports for each:

* that every change arrived once and in seq order (lost / out of order);
* commit → last change at the client, and changes per second;
* the bridge's RSS before and its peak while the transaction streamed
  (sampled every 20 ms), which shows whether copies of the whole
  transaction were held in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import tempfile
import time
from pathlib import Path

import asyncpg
import orjson
import psutil
import websockets

from bench.servers import BridgeServer
from realtime_bridge.testing import TestDatabase


async def _sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    process = psutil.Process(pid)
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], process.memory_info().rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.02)


async def _receive(ws: websockets.ClientConnection, count: int, timeout: float) -> list[int]:
    seqs: list[int] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(seqs) < count:
        raw = await asyncio.wait_for(ws.recv(), max(deadline - loop.time(), 0.001))
        frame = orjson.loads(raw)
        for item in frame if isinstance(frame, list) else [frame]:
            if item.get("type") == "db_change":
                seqs.append(int(item["seq"]))
    return seqs


async def _one(dsn: str, capture: str, rows: int, updates: int, log_dir: Path) -> None:
    server = BridgeServer(dsn, log_dir / f"bridge-{capture}.log", None, capture=capture)
    server.start()
    try:
        url = f"{server.ws_url}?apikey={server.service_key}&batch=1"
        async with websockets.connect(url, max_size=None, max_queue=None) as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "table": "public.positions"}))
            reply = orjson.loads(await ws.recv())
            assert reply["type"] == "subscribed", reply
            conn = await asyncpg.connect(dsn)
            try:
                for label, statement, count in (
                    (
                        f"{rows:,}-row INSERT transaction",
                        "INSERT INTO positions (user_id, symbol, quantity, entry_price, "
                        "current_price) SELECT 'u' || (i % 1000), 'S' || i, 10, 100, 110 "
                        "FROM generate_series(1, $1) i",
                        rows,
                    ),
                    (
                        f"{updates:,}-row UPDATE",
                        "UPDATE positions SET current_price = current_price + 1 "
                        "WHERE id IN (SELECT id FROM positions ORDER BY id LIMIT $1)",
                        updates,
                    ),
                ):
                    rss_before = server.rss_bytes()
                    peak = [rss_before]
                    stop = asyncio.Event()
                    sampler = asyncio.create_task(_sample_rss(server.pid, peak, stop))
                    await conn.execute(statement, count)
                    committed = time.perf_counter()
                    seqs = await _receive(ws, count, timeout=300)
                    took = time.perf_counter() - committed
                    stop.set()
                    await sampler
                    in_order = all(b == a + 1 for a, b in itertools.pairwise(seqs))
                    print(
                        f"[{capture}] {label}: {len(seqs):,}/{count:,} changes, "
                        f"{'in seq order, none twice' if in_order else 'OUT OF ORDER or gaps'}; "
                        f"commit → last at the client {took:.2f} s "
                        f"({count / took:,.0f} changes/s); bridge RSS "
                        f"{rss_before / 2**20:.0f} MiB → peak {peak[0] / 2**20:.0f} MiB "
                        f"(+{(peak[0] - rss_before) / 2**20:.0f} MiB)",
                        flush=True,
                    )
            finally:
                await conn.close()
    finally:
        server.stop()


async def measure(captures: list[str], rows: int, updates: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-bigtxn-") as tmp:
        async with TestDatabase.start(demo=True) as databases:
            for capture in captures:
                dsn = await databases.create()
                await _one(dsn, capture, rows, updates, Path(tmp))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bigtxn", description=__doc__)
    parser.add_argument("--captures", default="wal,triggers")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=50_000)
    args = parser.parse_args()
    asyncio.run(measure(args.captures.split(","), args.rows, args.updates))


if __name__ == "__main__":
    main()
