"""Exit monitor: stop-loss / take-profit checked on every tick, not every five minutes.

It follows the open positions on `position-updates` (a snapshot, then every
change after it) and the prices of their symbols on `price-updates` (one
subscription, renewed when the set of symbols changes; each renewal starts
with the current prices). Every tick is checked against every open position
of its symbol:

* long (quantity > 0): exit at or below `stop_loss`, at or above `take_profit`;
* short (quantity < 0): exit at or above `stop_loss`, at or below `take_profit`.

Simulation by default: the exit is decided and recorded, nothing is closed.
`--execute` hands it to a `Broker` (a Protocol; `SimulatedBroker` fills at
the tick's price by closing the position in the database). Every exit is
recorded in the demo table `exits` (supabase/demo) and in a JSON-lines log,
with the price that triggered it and the latency from the tick's time to the
decision. One exit per position and mode, whatever happens: the monitor
decides once per position, and `exits` is unique on (position_id, mode), so
a second monitor or a restart cannot decide again.

Modes:

* streaming (default): WebSocket, sub-second;
* `--interval N`: also poll over REST every N seconds (positions snapshot +
  `GET /api/prices`), a safety net beside the stream;
* `--no-websocket`: REST polling only (every `--interval`, default 5 s);
* `--once`: one REST pass, then exit.

Stats (ticks seen, exits, p50/p99 decision latency) are printed on exit.

    python -m examples.exit_monitor --url http://127.0.0.1:8000 --key <service key> \\
        --database-url postgresql://... [--execute] [--once] [--interval 30] [--no-websocket]

The URL, key and database come from BRIDGE_URL, BRIDGE_KEY and DATABASE_URL
when not given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import httpx

from realtime_bridge.client import Client, Event, ResyncRequired, connect

logger = logging.getLogger("exit_monitor")

POSITIONS = "position-updates"
PRICES = "price-updates"
OPEN = {"status": ["open"]}


@dataclass
class Position:
    id: int
    user_id: str
    symbol: str
    quantity: float
    entry_price: float
    stop_loss: float | None
    take_profit: float | None

    @classmethod
    def of(cls, row: Any) -> Position | None:
        """A position from an event's or snapshot's data (a dict or a model); None if closed."""
        values: dict[str, Any] = row if isinstance(row, dict) else row.model_dump()
        if values.get("status") != "open":
            return None
        stop, target = values.get("stop_loss"), values.get("take_profit")
        return cls(
            int(values["id"]),
            str(values["user_id"]),
            str(values["symbol"]),
            float(values["quantity"]),
            float(values["entry_price"]),
            None if stop is None else float(stop),
            None if target is None else float(target),
        )

    def crossed(self, price: float) -> tuple[str, float] | None:
        """("stop_loss" | "take_profit", the level) if `price` crosses one, else None."""
        long = self.quantity > 0
        if self.stop_loss is not None and (
            price <= self.stop_loss if long else price >= self.stop_loss
        ):
            return "stop_loss", self.stop_loss
        if self.take_profit is not None and (
            price >= self.take_profit if long else price <= self.take_profit
        ):
            return "take_profit", self.take_profit
        return None


@dataclass
class Exit:
    position_id: int
    user_id: str
    symbol: str
    reason: str
    mode: str  # simulation | execute
    quantity: float
    entry_price: float
    level: float
    trigger_price: float
    source: str  # websocket | rest
    tick_at: float  # the tick's time, epoch seconds
    decided_at: float
    status: str = "pending"
    detail: str | None = None

    @property
    def latency_ms(self) -> float:
        return (self.decided_at - self.tick_at) * 1000

    @property
    def pnl(self) -> float:
        return round((self.trigger_price - self.entry_price) * self.quantity, 8)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "latency_ms": round(self.latency_ms, 3), "pnl": self.pnl}


class Broker(Protocol):
    """Acts on an exit. True: the position was closed; False: it was no longer open."""

    async def close_position(self, exit: Exit) -> bool: ...


class SimulatedBroker:
    """Fills at the triggering tick's price: closes the position in the database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def close_position(self, exit: Exit) -> bool:
        closed = await self.pool.fetchval(
            "UPDATE public.positions SET status = 'closed', exit_price = $2, "
            "current_price = $2, unrealized_pnl = $3, closed_at = now() "
            "WHERE id = $1 AND status = 'open' RETURNING id",
            exit.position_id,
            exit.trigger_price,
            exit.pnl,
        )
        return closed is not None


class ExitStore:
    """The `exits` table: `claim` inserts once per (position, mode), or says it was taken."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, exit: Exit) -> bool:
        row_id = await self.pool.fetchval(
            "INSERT INTO public.exits (position_id, user_id, symbol, reason, mode, status, "
            "quantity, entry_price, level, trigger_price, pnl, source, tick_at, decided_at, "
            "latency_ms) "
            "SELECT id, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 "
            "FROM public.positions WHERE id = $1 AND status = 'open' "
            "ON CONFLICT (position_id, mode) DO NOTHING RETURNING id",
            exit.position_id,
            exit.user_id,
            exit.symbol,
            exit.reason,
            exit.mode,
            exit.status,
            exit.quantity,
            exit.entry_price,
            exit.level,
            exit.trigger_price,
            exit.pnl,
            exit.source,
            datetime.fromtimestamp(exit.tick_at, UTC),
            datetime.fromtimestamp(exit.decided_at, UTC),
            exit.latency_ms,
        )
        return row_id is not None

    async def settle(self, exit: Exit) -> None:
        await self.pool.execute(
            "UPDATE public.exits SET status = $3, detail = $4 WHERE position_id = $1 AND mode = $2",
            exit.position_id,
            exit.mode,
            exit.status,
            exit.detail,
        )


def percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


@dataclass
class Stats:
    ticks: int = 0
    exits: int = 0
    duplicates: int = 0  # decided here, but the table already had an exit for it
    failures: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        p50, p99 = percentile(self.latencies_ms, 0.5), percentile(self.latencies_ms, 0.99)
        return {
            "ticks": self.ticks,
            "exits": self.exits,
            "duplicates": self.duplicates,
            "failures": self.failures,
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
        }


def tick_time(data: dict[str, Any]) -> float:
    stamp = data.get("timestamp")
    if isinstance(stamp, str):
        return datetime.fromisoformat(stamp).timestamp()
    if isinstance(stamp, int | float):
        return float(stamp)
    return time.time()


class ExitMonitor:
    """Open positions, the latest price of their symbols, and the exits decided."""

    def __init__(
        self,
        *,
        store: ExitStore | None = None,
        broker: Broker | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.store = store
        self.broker = broker  # None: simulation
        self.log_path = log_path
        self.positions: dict[int, Position] = {}
        self.decided: set[int] = set()  # never twice for one position
        self.exits: list[Exit] = []
        self.last_tick: dict[str, float] = {}  # symbol -> tick time (REST: seen already?)
        self.stats = Stats()
        self.symbols_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def mode(self) -> str:
        return "execute" if self.broker is not None else "simulation"

    # positions ---------------------------------------------------------------

    def symbols(self) -> frozenset[str]:
        return frozenset(p.symbol for p in self.positions.values())

    def apply(self, position_id: int, row: Any) -> None:
        """This position is now `row` (None: deleted)."""
        before = self.symbols()
        position = None if row is None else Position.of(row)
        if position is None or position_id in self.decided:
            self.positions.pop(position_id, None)
        else:
            self.positions[position_id] = position
        if self.symbols() != before:
            self.symbols_changed.set()

    def reload(self, rows: Sequence[Any]) -> None:
        """The open positions are exactly `rows` (a snapshot)."""
        before = self.symbols()
        self.positions = {}
        for row in rows:
            position = Position.of(row)
            if position is not None and position.id not in self.decided:
                self.positions[position.id] = position
        if self.symbols() != before:
            self.symbols_changed.set()

    # ticks -------------------------------------------------------------------

    def on_tick(self, symbol: str, price: float, at: float, source: str) -> list[Exit]:
        """Check every open position of `symbol` against `price`; start the exits decided."""
        self.stats.ticks += 1
        self.last_tick[symbol] = at
        decided = []
        for position in list(self.positions.values()):
            if position.symbol != symbol:
                continue
            hit = position.crossed(price)
            if hit is None:
                continue
            now = time.time()
            self.decided.add(position.id)
            del self.positions[position.id]
            exit = Exit(
                position.id,
                position.user_id,
                symbol,
                hit[0],
                self.mode,
                position.quantity,
                position.entry_price,
                hit[1],
                price,
                source,
                at,
                now,
                status="simulated" if self.broker is None else "pending",
            )
            decided.append(exit)
            task = asyncio.get_running_loop().create_task(self._act(exit))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return decided

    async def _act(self, exit: Exit) -> None:
        try:
            if self.store is not None and not await self.store.claim(exit):
                self.stats.duplicates += 1
                logger.info("position %s already has an exit (or is closed)", exit.position_id)
                return
            if self.broker is not None:
                try:
                    closed = await self.broker.close_position(exit)
                except Exception as exc:  # the broker's failure is recorded, not raised
                    exit.status, exit.detail = "failed", repr(exc)
                    self.stats.failures += 1
                else:
                    exit.status = "executed" if closed else "skipped"
                if self.store is not None:
                    await self.store.settle(exit)
        except Exception:
            logger.exception("recording the exit of position %s failed", exit.position_id)
            self.stats.failures += 1
            return
        self.exits.append(exit)
        self.stats.exits += 1
        self.stats.latencies_ms.append(exit.latency_ms)
        if self.log_path is not None:
            with self.log_path.open("a") as log:
                log.write(json.dumps(exit.to_json()) + "\n")
        logger.info(
            "%s %s: position %s (%s %g %s) at %g (level %g), %.1f ms after the tick",
            exit.status,
            exit.reason,
            exit.position_id,
            exit.user_id,
            exit.quantity,
            exit.symbol,
            exit.trigger_price,
            exit.level,
            exit.latency_ms,
        )

    async def drain(self) -> None:
        """Wait for the exits decided so far to be recorded (and executed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


# streaming -----------------------------------------------------------------------


async def follow_positions(
    client: Client, monitor: ExitMonitor, ready: asyncio.Event | None = None
) -> None:
    snap = await client.snapshot(POSITIONS, filters=OPEN)
    monitor.reload(snap.records)

    def resync(notice: ResyncRequired) -> None:
        logger.warning("missed position changes before seq %s; reloading", notice.earliest_seq)
        task = asyncio.get_running_loop().create_task(_reload(client, monitor))
        monitor._tasks.add(task)
        task.add_done_callback(monitor._tasks.discard)

    async with client.subscribe(POSITIONS, filters=OPEN, since=snap.seq, on_resync=resync) as sub:
        if ready is not None:
            ready.set()
        async for event in sub:
            apply_event(monitor, event)


async def _reload(client: Client, monitor: ExitMonitor) -> None:
    monitor.reload((await client.snapshot(POSITIONS, filters=OPEN)).records)


def apply_event(monitor: ExitMonitor, event: Event[Any]) -> None:
    data = event.data
    if data is None:
        monitor.apply(int(event.record_id), None)
        return
    position_id = data["id"] if isinstance(data, dict) else data.id
    monitor.apply(int(position_id), data)


async def follow_prices(
    client: Client, monitor: ExitMonitor, subscribed: asyncio.Event | None = None
) -> None:
    """One price subscription for the open positions' symbols, renewed when they change."""
    while True:
        monitor.symbols_changed.clear()
        symbols = monitor.symbols()
        if not symbols:
            if subscribed is not None:
                subscribed.set()
            await monitor.symbols_changed.wait()
            continue
        async with client.subscribe(PRICES, filters={"symbol": sorted(symbols)}) as prices:
            reader = asyncio.create_task(_read_prices(prices, monitor))
            changed = asyncio.create_task(monitor.symbols_changed.wait())
            if subscribed is not None:
                subscribed.set()
            try:
                await asyncio.wait({reader, changed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, changed):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            failed = reader.exception() if reader.done() and not reader.cancelled() else None
            if failed is not None:
                raise failed


async def _read_prices(prices: Any, monitor: ExitMonitor) -> None:
    async for event in prices:
        data = event.data
        monitor.on_tick(str(data["symbol"]), float(data["price"]), tick_time(data), "websocket")


# REST ------------------------------------------------------------------------------


class Rest:
    """The bridge over HTTP: open positions (snapshot) and the last prices."""

    def __init__(self, url: str, key: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, headers={"apikey": key}, timeout=30)

    async def positions(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        query: dict[str, str] = {"filter": "status=eq.open", "limit": "1000"}
        while True:
            response = await self.http.get(f"/api/channels/{POSITIONS}/snapshot", params=query)
            response.raise_for_status()
            page = response.json()
            rows.extend(page["records"])
            if page.get("next_cursor") is None:
                return rows
            query["cursor"] = str(page["next_cursor"])

    async def prices(self, symbols: Sequence[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        ordered = sorted(symbols)
        for start in range(0, len(ordered), 500):
            chunk = ordered[start : start + 500]
            response = await self.http.get("/api/prices", params={"symbols": ",".join(chunk)})
            response.raise_for_status()
            found.extend(response.json()["prices"])
        return found

    async def aclose(self) -> None:
        await self.http.aclose()


async def poll_once(rest: Rest, monitor: ExitMonitor) -> None:
    """One REST pass: reload the open positions, check each symbol's last price."""
    monitor.reload(await rest.positions())
    symbols = monitor.symbols()
    if not symbols:
        return
    for data in await rest.prices(sorted(symbols)):
        at = tick_time(data)
        symbol = str(data["symbol"])
        if monitor.last_tick.get(symbol) == at:
            continue  # this tick was checked already
        monitor.on_tick(symbol, float(data["price"]), at, "rest")


async def poll(rest: Rest, monitor: ExitMonitor, interval: float) -> None:
    while True:
        try:
            await poll_once(rest, monitor)
        except httpx.HTTPError as exc:
            logger.warning("REST poll failed: %s", exc)
        await asyncio.sleep(interval)


# running ---------------------------------------------------------------------------


@dataclass
class Options:
    url: str
    key: str
    database_url: str | None = None
    execute: bool = False
    once: bool = False
    interval: float | None = None
    websocket: bool = True
    log_path: Path | None = Path("exit_executions.jsonl")


async def run(options: Options, monitor: ExitMonitor, ready: asyncio.Event | None = None) -> None:
    """Run `monitor` until cancelled (one REST pass with `once`)."""
    pool = None
    if options.database_url:
        pool = await asyncpg.create_pool(options.database_url, min_size=1, max_size=4)
        monitor.store = ExitStore(pool)
        if options.execute:
            monitor.broker = SimulatedBroker(pool)
    elif options.execute:
        raise SystemExit("--execute needs --database-url (or DATABASE_URL)")
    else:
        logger.warning("no database: exits go to the JSON-lines log only")
    rest = Rest(options.url, options.key)
    try:
        if options.once:
            await poll_once(rest, monitor)
        else:
            await _run_forever(options, monitor, rest, ready)
    finally:
        await monitor.drain()
        await rest.aclose()
        if pool is not None:
            await pool.close()


async def _run_forever(
    options: Options, monitor: ExitMonitor, rest: Rest, ready: asyncio.Event | None
) -> None:
    tasks: list[asyncio.Task[None]] = []
    if not options.websocket:
        if ready is not None:
            ready.set()
        await poll(rest, monitor, options.interval or 5.0)
        return
    async with connect(options.url, api_key=options.key, client_id="exit-monitor") as client:
        positions_ready, prices_ready = asyncio.Event(), asyncio.Event()
        tasks.append(asyncio.create_task(follow_positions(client, monitor, positions_ready)))
        await _first(positions_ready, tasks)
        tasks.append(asyncio.create_task(follow_prices(client, monitor, prices_ready)))
        await _first(prices_ready, tasks)
        if options.interval:
            tasks.append(asyncio.create_task(poll(rest, monitor, options.interval)))
        if ready is not None:
            ready.set()
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _first(event: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Wait for `event`, or raise the error of a task that ended first."""
    waiter = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        for task in done:
            task.result()


def parse_args(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="exit_monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("BRIDGE_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("BRIDGE_KEY", ""), help="service key")
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--execute", action="store_true", help="close positions (broker)")
    parser.add_argument("--once", action="store_true", help="one REST pass, then exit")
    parser.add_argument("--interval", type=float, help="also poll over REST every N seconds")
    parser.add_argument("--no-websocket", action="store_true", help="REST polling only")
    parser.add_argument("--log", type=Path, default=Path("exit_executions.jsonl"))
    args = parser.parse_args(argv)
    if not args.key:
        parser.error("give the service key with --key or BRIDGE_KEY (`realtime-bridge keys`)")
    if args.interval is not None and args.interval <= 0:
        parser.error("--interval must be positive")
    return Options(
        url=args.url,
        key=args.key,
        database_url=args.database_url,
        execute=args.execute,
        once=args.once,
        interval=args.interval,
        websocket=not args.no_websocket,
        log_path=args.log,
    )


async def main(argv: Sequence[str]) -> None:
    options = parse_args(argv)
    monitor = ExitMonitor(log_path=options.log_path)
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    started = time.monotonic()
    try:
        await run(options, monitor)
    finally:
        stats = {**monitor.stats.summary(), "mode": monitor.mode}
        stats["seconds"] = round(time.monotonic() - started, 1)
        print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
