"""Helpers the REST and SSE tests share: positions rows and waiting for their seqs."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families

from realtime_bridge.sources.outbox import OutboxSource
from realtime_bridge.testing import RunningBridge

INSERT = (
    "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING id"
)


SNAPSHOT = "/api/channels/position-updates/snapshot"


def http(bridge: RunningBridge) -> httpx.AsyncClient:
    """An HTTP client for `bridge` carrying the service key."""
    return httpx.AsyncClient(base_url=bridge.url, timeout=30, headers=bridge.service_headers)


async def insert_position(
    db: asyncpg.Connection,
    user_id: str,
    symbol: str,
    quantity: float = 10,
    entry_price: float = 100,
    current_price: float | None = 110,
) -> int:
    row_id: int = await db.fetchval(INSERT, user_id, symbol, quantity, entry_price, current_price)
    return row_id


async def seq_of(db: asyncpg.Connection, row_id: int, timeout: float = 10.0) -> int:
    """The seq the sequencer gave the INSERT of positions row `row_id`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        seq = await db.fetchval(
            "SELECT seq FROM realtime_bridge.outbox "
            "WHERE table_name = 'positions' AND operation = 'INSERT' AND record->0->>'id' = $1",
            str(row_id),
        )
        if seq is not None:
            return int(seq)
        await asyncio.sleep(0.02)
    raise AssertionError(f"positions row {row_id} was never numbered")


async def head(client: httpx.AsyncClient) -> int:
    value: int = (await client.get("/health")).json()["last_seq"]
    return value


async def wait_routed(client: httpx.AsyncClient, seq: int, timeout: float = 10.0) -> None:
    """Wait until the hub has routed `seq` (its /health last_seq reaches it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await head(client) >= seq:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the bridge never routed seq {seq}")


async def snapshot_pages(
    client: httpx.AsyncClient, path: str = SNAPSHOT, **params: Any
) -> tuple[int, list[dict[str, Any]], int]:
    """Every page of a snapshot: (first page's seq, all records, pages read)."""
    response = await client.get(path, params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    seq, records, pages = body["seq"], list(body["records"]), 1
    while body["next_cursor"] is not None:
        response = await client.get(path, params={**params, "cursor": body["next_cursor"]})
        assert response.status_code == 200, response.text
        body = response.json()
        records += body["records"]
        pages += 1
    return seq, records, pages


async def churn_positions(dsn: str, stop: asyncio.Event, seed: int) -> int:
    """Insert, update and delete positions until `stop`; return how many statements ran."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    count = 0
    try:
        while not stop.is_set():
            ids = [r["id"] for r in await conn.fetch("SELECT id FROM positions")]
            choice = rng.random()
            if choice < 0.4 or not ids:
                await insert_position(conn, rng.choice(["u1", "u2"]), f"S{count}")
            elif choice < 0.85:
                await conn.execute(
                    "UPDATE positions SET current_price = $2 WHERE id = $1",
                    rng.choice(ids),
                    rng.randint(1, 500),
                )
            else:
                await conn.execute("DELETE FROM positions WHERE id = $1", rng.choice(ids))
            count += 1
    finally:
        await conn.close()
    return count


async def until(
    condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition"
) -> None:
    """Wait until `condition()` holds; fail naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a `/metrics` body, by name and labels (parsed by prometheus_client)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of a `/metrics` body (None when it is not there)."""
    return samples(text).get((name, frozenset(labels.items())))


async def last_seq(db: asyncpg.Connection) -> int:
    """The seq of the last change written, once every one is numbered (either capture path).

    A marker event published after the writes commits after them, so once it
    has a seq every earlier change has a smaller one. (Waiting for "no
    unnumbered outbox rows" holds only for the triggers: the WAL leader logs
    changes a moment after they commit.)
    """
    ref = await db.fetchval("SELECT realtime_bridge.broadcast('test-marker', NULL, '{}'::jsonb)")
    marker = None
    async with asyncio.timeout(10):
        while marker is None:
            marker = await db.fetchval(
                "SELECT seq FROM realtime_bridge.outbox WHERE coalesce(ref, id) = $1", ref
            )
            await asyncio.sleep(0.01)
    seq: int = await db.fetchval(
        "SELECT max(seq + changes - 1) FROM realtime_bridge.outbox WHERE seq < $1", marker
    )
    return seq


async def until_logged(bridge: RunningBridge, seq: int) -> None:
    """Wait until the outbox log holds `seq` (the WAL leader logs a moment after handing on)."""
    source = bridge.bridge.source
    if isinstance(source, OutboxSource):
        assert await source.wait_logged(seq, timeout=10), f"seq {seq} was never logged"


async def bump_tallies(
    dsn: str, stop: asyncio.Event, seed: int, table: str, rows: int, next_id: list[int]
) -> int:
    """Until `stop`: add one to random rows' `version` of `table` (ids 1..`rows`; sometimes
    two rows in one transaction), and insert new rows (ids from `next_id`) at version 0.
    Each row's versions then count its UPDATEs. Returns the statements run."""
    rng = random.Random(seed)
    conn = await asyncpg.connect(dsn)
    bump = f"UPDATE {table} SET version = version + 1 WHERE id = $1"
    count = 0
    try:
        while not stop.is_set():
            choice = rng.random()
            if choice < 0.1:
                next_id[0] += 1
                await conn.execute(f"INSERT INTO {table} (id, version) VALUES ($1, 0)", next_id[0])
            elif choice < 0.3:
                async with conn.transaction():
                    for row_id in sorted(rng.sample(range(1, rows + 1), 2)):  # sorted: no deadlock
                        await conn.execute(bump, row_id)
            else:
                await conn.execute(bump, rng.randint(1, rows))
            count += 1
    finally:
        await conn.close()
    return count
