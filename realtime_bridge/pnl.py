"""Live P&L: open positions marked to market from ticks, pushed on position-updates.

Positions are read once at start and then followed through the bridge's own
change stream (so the in-memory copy is never polled). Each tick of a
symbol moves `current_price` / `unrealized_pnl` of that symbol's open
positions in memory and marks them dirty; every `PNL_INTERVAL` seconds the
dirty ones are published, one `position_update` event per position (at most
one per position per interval, however many ticks arrived), plus one
`portfolio_update` per affected user rolling their live positions up.

The events go through the outbox in one statement per flush, so they carry
seqs and reach clients through the same row scoping as the row's own
changes (a user only sees their own positions). Ticks themselves are never
written. Positions are written back (current_price, unrealized_pnl) every
`PNL_WRITE_BACK` seconds for the rows whose price moved, or never (0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg

from realtime_bridge.change import Change
from realtime_bridge.market import Tick

if TYPE_CHECKING:
    from realtime_bridge.bridge import Bridge

logger = logging.getLogger(__name__)

POSITIONS_TABLE = "public.positions"
SNAPSHOTS_TABLE = "public.portfolio_snapshots"

PUBLISH_SQL = """
SELECT count(realtime_bridge.broadcast(e->>'channel', e->>'event', e->'payload'))
FROM unnest($1::jsonb[]) AS e
"""

WRITE_BACK_SQL = """
UPDATE public.positions p
SET current_price = v.price, unrealized_pnl = v.pnl
FROM unnest($1::bigint[], $2::numeric[], $3::numeric[]) AS v(id, price, pnl)
WHERE p.id = v.id AND p.status = 'open'
"""


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass
class LivePosition:
    row: dict[str, Any]
    price: float | None = None  # the live price (None: no tick yet)

    @property
    def symbol(self) -> str:
        return str(self.row["symbol"])

    @property
    def user_id(self) -> str:
        return str(self.row["user_id"])

    @property
    def quantity(self) -> float:
        return float(self.row["quantity"])

    def mark(self) -> float | None:
        if self.price is not None:
            return self.price
        return _num(self.row.get("current_price"))

    def pnl(self) -> float | None:
        price = self.mark()
        if price is None:
            return None
        return round((price - float(self.row["entry_price"])) * self.quantity, 8)

    def payload(self) -> dict[str, Any]:
        row = dict(self.row)
        row["current_price"] = self.mark()
        row["unrealized_pnl"] = self.pnl()
        return row


@dataclass
class PnLStats:
    ticks: int = 0
    position_events: int = 0
    portfolio_events: int = 0
    flushes: int = 0
    write_backs: int = 0
    errors: int = 0
    last_error: str | None = None
    dirty_max: int = 0
    by_position: dict[int, int] = field(default_factory=dict)


class LivePnL:
    """Marks `bridge`'s open positions to market and publishes the figures."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.interval = bridge.settings.pnl_interval
        self.write_back_every = bridge.settings.pnl_write_back
        self.positions: dict[int, LivePosition] = {}
        self.by_symbol: dict[str, set[int]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}  # user → latest portfolio snapshot row
        self.dirty: set[int] = set()
        self.unwritten: set[int] = set()
        self.stats = PnLStats()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        assert self.bridge.pool is not None
        try:
            rows = await self.bridge.pool.fetch(
                "SELECT * FROM public.positions WHERE status = 'open'"
            )
            snaps = await self.bridge.pool.fetch(
                "SELECT DISTINCT ON (user_id) * FROM public.portfolio_snapshots "
                "ORDER BY user_id, created_at DESC, id DESC"
            )
        except asyncpg.UndefinedTableError:
            # The missing table itself is reported once, by the bridge.
            logger.info("live P&L is off: it needs public.positions and public.portfolio_snapshots")
            return
        except (asyncpg.UndefinedColumnError, asyncpg.InsufficientPrivilegeError) as exc:
            # Tables of another shape than the demo's (or not readable): P&L stays off,
            # the service starts.
            logger.info("live P&L is off: %s", exc)
            return
        for row in rows:
            self._upsert(dict(row))
        for snap in snaps:
            self.snapshots[str(snap["user_id"])] = dict(snap)
        self.bridge.market.listeners.append(self.on_ticks)
        self.bridge.change_listeners.append(self.on_changes)
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="pnl-flush"))
        if self.write_back_every > 0:
            self._tasks.append(asyncio.create_task(self._write_back_loop(), name="pnl-write"))
        logger.info("live P&L: %d open position(s)", len(self.positions))

    async def stop(self) -> None:
        if self.on_ticks in self.bridge.market.listeners:
            self.bridge.market.listeners.remove(self.on_ticks)
        if self.on_changes in self.bridge.change_listeners:
            self.bridge.change_listeners.remove(self.on_changes)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # following the positions ------------------------------------------------

    def _upsert(self, row: dict[str, Any]) -> None:
        position_id = int(row["id"])
        held = self.positions.get(position_id)
        if row.get("status") != "open":
            self._remove(position_id)
            return
        if held is not None and held.symbol != str(row["symbol"]):
            self._remove(position_id)
            held = None
        if held is None:
            held = self.positions[position_id] = LivePosition(row)
            self.by_symbol.setdefault(held.symbol, set()).add(position_id)
            cached = self.bridge.market.cache.get(held.symbol)
            if cached is not None:
                held.price = cached.price
                self.dirty.add(position_id)
        else:
            held.row = row  # the live price stays: it is newer than a written-back one

    def _remove(self, position_id: int) -> None:
        held = self.positions.pop(position_id, None)
        self.dirty.discard(position_id)
        self.unwritten.discard(position_id)
        if held is not None:
            ids = self.by_symbol.get(held.symbol)
            if ids is not None:
                ids.discard(position_id)
                if not ids:
                    del self.by_symbol[held.symbol]

    def on_changes(self, changes: list[Change]) -> None:
        for change in changes:
            table = change.qualified_table
            if table == POSITIONS_TABLE:
                if change.operation == "DELETE" and change.old_record is not None:
                    self._remove(int(change.old_record["id"]))
                elif change.record is not None:
                    self._upsert(dict(change.record))
            elif table == SNAPSHOTS_TABLE and change.record is not None:
                self.snapshots[str(change.record["user_id"])] = dict(change.record)

    def on_ticks(self, ticks: list[Tick]) -> None:
        by_symbol = self.by_symbol
        for tick in ticks:
            ids = by_symbol.get(tick.symbol)
            if not ids:
                continue
            self.stats.ticks += 1
            for position_id in ids:
                self.positions[position_id].price = tick.price
            self.dirty.update(ids)
            self.unwritten.update(ids)

    # publishing --------------------------------------------------------------

    def _events(self, ids: set[int]) -> list[dict[str, Any]]:
        events = []
        users: set[str] = set()
        for position_id in sorted(ids):
            held = self.positions.get(position_id)
            if held is None:
                continue
            users.add(held.user_id)
            events.append(
                {
                    "channel": "position-updates",
                    "event": "position_update",
                    "payload": held.payload(),
                }
            )
        for user in sorted(users):
            portfolio = self.portfolio(user)
            if portfolio is not None:
                events.append(
                    {
                        "channel": "portfolio-updates",
                        "event": "portfolio_update",
                        "payload": portfolio,
                    }
                )
        return events

    def portfolio(self, user: str) -> dict[str, Any] | None:
        """`user`'s portfolio with live positions: the latest snapshot's cash + market value."""
        value = 0.0
        pnl = 0.0
        for held in self.positions.values():
            if held.user_id != user:
                continue
            mark = held.mark()
            if mark is not None:
                value += held.quantity * mark
            pnl += held.pnl() or 0.0
        snap = self.snapshots.get(user)
        cash = float(snap["cash"]) if snap is not None else 0.0
        return {
            "id": int(snap["id"]) if snap is not None else 0,
            "user_id": user,
            "cash": cash,
            "positions_value": round(value, 8),
            "total_value": round(cash + value, 8),
            "daily_pnl": _num(snap.get("daily_pnl")) if snap is not None else None,
            "total_pnl": round(pnl, 8),
            "created_at": datetime.now(UTC).isoformat(),
        }

    async def flush(self) -> int:
        """Publish the dirty positions (and their users' portfolios) now; returns events sent."""
        if not self.dirty:
            return 0
        ids, self.dirty = self.dirty, set()
        self.stats.dirty_max = max(self.stats.dirty_max, len(ids))
        events = self._events(ids)
        if not events:
            return 0
        registry = self.bridge.registry
        validated = []  # the pool's jsonb codec encodes these (see outbox.init_connection)
        for event in events:
            name, data = registry.validate_broadcast(
                event["channel"], event["event"], event["payload"]
            )
            validated.append({"channel": event["channel"], "event": name, "payload": data})
        assert self.bridge.pool is not None
        try:
            await self.bridge.pool.fetchval(PUBLISH_SQL, validated)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.stats.errors += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            self.dirty |= ids  # sent with the next flush
            logger.warning("live P&L could not publish: %s", exc)
            return 0
        self.stats.flushes += 1
        for event in events:
            if event["channel"] == "position-updates":
                self.stats.position_events += 1
                pid = int(event["payload"]["id"])
                self.stats.by_position[pid] = self.stats.by_position.get(pid, 0) + 1
            else:
                self.stats.portfolio_events += 1
        return len(events)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def write_back(self) -> int:
        """Write the live price and P&L of moved positions to the table; returns rows."""
        if not self.unwritten:
            return 0
        ids, self.unwritten = self.unwritten, set()
        rows = [(i, p.mark(), p.pnl()) for i in ids if (p := self.positions.get(i)) is not None]
        rows = [r for r in rows if r[1] is not None]
        if not rows:
            return 0
        assert self.bridge.pool is not None
        try:
            await self.bridge.pool.execute(
                WRITE_BACK_SQL, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self.unwritten |= ids
            logger.warning("live P&L write-back failed: %s", exc)
            return 0
        self.stats.write_backs += 1
        return len(rows)

    async def _write_back_loop(self) -> None:
        while True:
            await asyncio.sleep(self.write_back_every)
            await self.write_back()

    def to_json(self) -> dict[str, Any]:
        return {
            "open_positions": len(self.positions),
            "position_events": self.stats.position_events,
            "portfolio_events": self.stats.portfolio_events,
            "write_backs": self.stats.write_backs,
            "errors": self.stats.errors,
            "last_error": self.stats.last_error,
        }
