"""`python -m bench.snapshot`: how fast `GET /api/channels/{channel}/snapshot` answers.

Starts an embedded Postgres (or uses DATABASE_URL) and a bridge, fills
`positions` with ROWS rows spread over USERS users, then measures:

* a full service-key snapshot of every row, page by page (rows per second);
* one user's snapshot (its row scope pushed down into the query), as a
  screen opening would ask for it: latency percentiles over REQUESTS requests.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
import httpx

from bench.report import percentile
from realtime_bridge.settings import Settings
from realtime_bridge.testing import TestDatabase, run_bridge

SNAPSHOT = "/api/channels/position-updates/snapshot"


async def measure(rows: int, users: int, requests: int, page: int) -> None:
    async with TestDatabase.start() as databases:
        dsn = await databases.create()
        settings = Settings(_env_file=None, database_url=dsn)  # type: ignore[call-arg]
        async with run_bridge(settings) as bridge:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
                    "SELECT 'u' || (i % $2), 'S' || i, 10, 100, 110 FROM generate_series(1, $1) i",
                    rows,
                    users,
                )
                head = await conn.fetchval("SELECT count(*) FROM realtime_bridge.outbox")
            finally:
                await conn.close()
            await bridge.bridge.hub.wait_for_head(int(head), timeout=60)
            service = {"Authorization": f"Bearer {bridge.service_key}"}
            async with httpx.AsyncClient(base_url=bridge.url, timeout=60) as client:
                started = time.perf_counter()
                got, pages, cursor = 0, 0, None
                while True:
                    params = {"limit": str(page), **({"cursor": cursor} if cursor else {})}
                    body = (await client.get(SNAPSHOT, params=params, headers=service)).json()
                    got += len(body["records"])
                    pages += 1
                    cursor = body["next_cursor"]
                    if cursor is None:
                        break
                full = time.perf_counter() - started
                assert got == rows, (got, rows)

                user = {"Authorization": f"Bearer {bridge.user_token('u1')}"}
                latencies = []
                for _ in range(requests):
                    started = time.perf_counter()
                    response = await client.get(SNAPSHOT, headers=user)
                    latencies.append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200
                per_user = len(response.json()["records"])
    latencies.sort()
    print(f"snapshot bench: {rows} positions rows, {users} users")
    print(
        f"  full snapshot (service key): {rows} rows in {pages} pages of {page}: "
        f"{full * 1000:.0f} ms, {rows / full:,.0f} rows/s"
    )
    print(
        f"  one user's snapshot ({per_user} rows), {requests} requests: "
        f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--page", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(measure(args.rows, args.users, args.requests, args.page))


if __name__ == "__main__":
    main()
