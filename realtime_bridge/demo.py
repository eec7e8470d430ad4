"""The scripted trading demo (`DEMO=1` or `realtime-bridge demo`): one life cycle after another.

Only on the embedded Postgres (`Settings` refuses DEMO with DATABASE_URL or
SUPABASE_URL), with the simulated feed on for the other symbols. For the
user `demo-user`, on the symbol `DEMO`, each cycle:

1. a signal opens a position (a trade and a position row, as
   `POST /api/testing/simulate-signal` writes them);
2. scripted ticks move its price every `DEMO_TICK_INTERVAL` seconds, so live
   P&L (`realtime_bridge.pnl`) moves the position's figures on
   `position-updates` and the portfolio on `portfolio-updates`;
3. the first tick at or past the stop-loss (even cycles) or the target (odd
   ones) closes it, filled at that level, in one transaction: the position and the trade closed
   with their exit price and P&L, an `exits` row, a portfolio snapshot with
   the cash it left, and a `challenge_trades` row, whose triggers emit
   EQUITY_UPDATED (and RISK_ALERT / CHALLENGE_STATUS_CHANGED when the day's
   drawdown crosses its levels) on the room `challenge_<id>`.

With a 10,000 challenge (5% daily limit, alert at 0.8 of it) the first stop
(-450) raises a RISK_ALERT, the target (+300) recovers, the second stop
fails the challenge; the next cycle opens a new challenge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import asyncpg

from realtime_bridge.market import parse_ticks

if TYPE_CHECKING:
    from realtime_bridge.bridge import Bridge

logger = logging.getLogger(__name__)

DEMO_USER = "demo-user"
SYMBOL = "DEMO"
QUANTITY = 100
ENTRY = 100.0
STOP = 95.5  # -450 on 100 shares: 4.5% of a 10,000 challenge
TARGET = 103.0  # +300
START_CASH = 10_000.0
MAX_STEPS = 200  # a cycle that reaches neither level exits at the market


@dataclass(frozen=True)
class Exit:
    reason: str  # stop_loss | take_profit | time
    level: float  # the stop or target crossed, where the demo's order fills
    trigger: float  # the tick that crossed it
    tick_at: float

    @property
    def price(self) -> float:
        return self.level


def scripted_price(step: int, winner: bool) -> float:
    """Step `step`'s price: a wobble (so P&L moves both ways) drifting to the stop or the target."""
    drift = 0.32 if winner else -0.45
    return round(ENTRY + drift * step + 0.9 * math.sin(step * 1.3), 2)


class DemoScript:
    """Drives the demo's life cycles on `bridge` until cancelled."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.interval = bridge.settings.demo_tick_interval
        self.cycles = 0

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.bridge.pool is not None, "the demo runs only with its embedded database"
        return self.bridge.pool

    async def run(self) -> None:
        await self._ensure_portfolio()
        logger.info(
            "demo: life cycles for user %s on %s every few seconds (DEMO_TICK_INTERVAL=%s)",
            DEMO_USER,
            SYMBOL,
            self.interval,
        )
        while True:
            await self.cycle(winner=self.cycles % 2 == 1)
            self.cycles += 1
            await asyncio.sleep(self.interval * 6)

    async def cycle(self, *, winner: bool) -> Exit:
        challenge = await self._active_challenge()
        position_id, trade_id = await self._open()
        logger.info(
            "demo: signal BUY %d %s @ %.2f (stop %.2f, target %.2f), challenge %s",
            QUANTITY,
            SYMBOL,
            ENTRY,
            STOP,
            TARGET,
            challenge,
        )
        exit_ = await self._ticks_until_exit(winner)
        pnl = round((exit_.price - ENTRY) * QUANTITY, 2)
        await self._close(position_id, trade_id, challenge, exit_, pnl)
        logger.info("demo: %s closed %s at %.2f, P&L %+.2f", exit_.reason, SYMBOL, exit_.price, pnl)
        return exit_

    async def _ticks_until_exit(self, winner: bool) -> Exit:
        price = ENTRY
        for step in range(1, MAX_STEPS + 1):
            await asyncio.sleep(self.interval)
            price = scripted_price(step, winner)
            now = time.time()
            self.bridge.market.publish(parse_ticks([{"symbol": SYMBOL, "price": price}]))
            if price <= STOP:
                return Exit("stop_loss", STOP, price, now)
            if price >= TARGET:
                return Exit("take_profit", TARGET, price, now)
        return Exit("time", price, price, time.time())  # filled at the market

    async def _ensure_portfolio(self) -> None:
        await self.pool.execute(
            """
            INSERT INTO public.portfolio_snapshots (user_id, total_value, cash, positions_value,
                                                    daily_pnl, total_pnl)
            SELECT $1, $2, $2, 0, 0, 0
            WHERE NOT EXISTS (SELECT 1 FROM public.portfolio_snapshots WHERE user_id = $1)
            """,
            DEMO_USER,
            START_CASH,
        )

    async def _active_challenge(self) -> int:
        """The demo user's active challenge; a new one once the last has ended."""
        found = await self.pool.fetchval(
            "SELECT id FROM public.challenges WHERE user_id = $1 AND status = 'ACTIVE' "
            "ORDER BY id DESC LIMIT 1",
            DEMO_USER,
        )
        if found is not None:
            return int(found)
        created = await self.pool.fetchval(
            "INSERT INTO public.challenges (user_id, initial_balance) VALUES ($1, $2) RETURNING id",
            DEMO_USER,
            START_CASH,
        )
        logger.info("demo: challenge %s started for %s", created, DEMO_USER)
        return int(created)

    async def _open(self) -> tuple[int, int]:
        async with self.pool.acquire() as conn, conn.transaction():
            trade_id = await conn.fetchval(
                """
                INSERT INTO public.trades (user_id, symbol, signal_type, quantity, entry_price,
                                           stop_loss, take_profit, status, executed_at)
                VALUES ($1, $2, 'BUY', $3, $4, $5, $6, 'open', now()) RETURNING id
                """,
                DEMO_USER,
                SYMBOL,
                QUANTITY,
                ENTRY,
                STOP,
                TARGET,
            )
            position_id = await conn.fetchval(
                """
                INSERT INTO public.positions (user_id, symbol, quantity, entry_price, current_price,
                                              unrealized_pnl, stop_loss, take_profit, status)
                VALUES ($1, $2, $3, $4, $4, 0, $5, $6, 'open') RETURNING id
                """,
                DEMO_USER,
                SYMBOL,
                QUANTITY,
                ENTRY,
                STOP,
                TARGET,
            )
        return int(position_id), int(trade_id)

    async def _close(
        self, position_id: int, trade_id: int, challenge: int, exit_: Exit, pnl: float
    ) -> None:
        """One transaction: exit, portfolio and challenge move together, or not at all."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """
                UPDATE public.positions
                SET status = 'closed', current_price = $2, unrealized_pnl = $3,
                    exit_price = $2, closed_at = now()
                WHERE id = $1
                """,
                position_id,
                exit_.price,
                pnl,
            )
            await conn.execute(
                "UPDATE public.trades SET status = 'closed', exit_price = $2, pnl = $3 "
                "WHERE id = $1",
                trade_id,
                exit_.price,
                pnl,
            )
            if exit_.reason != "time":
                await conn.execute(
                    """
                    INSERT INTO public.exits (position_id, user_id, symbol, reason, mode, status,
                                              quantity, entry_price, level, trigger_price, pnl,
                                              source, tick_at, decided_at, latency_ms)
                    VALUES ($1, $2, $3, $4, 'execute', 'executed', $5, $6, $7, $8, $9, 'demo',
                            to_timestamp($10), now(),
                            greatest(extract(epoch FROM now()) - $10, 0) * 1000)
                    ON CONFLICT (position_id, mode) DO NOTHING
                    """,
                    position_id,
                    DEMO_USER,
                    SYMBOL,
                    exit_.reason,
                    QUANTITY,
                    ENTRY,
                    exit_.level,
                    exit_.trigger,
                    pnl,
                    exit_.tick_at,
                )
            await conn.execute(
                """
                INSERT INTO public.portfolio_snapshots (user_id, total_value, cash, positions_value,
                                                        daily_pnl, total_pnl)
                SELECT $1, last.cash + $2, last.cash + $2, 0,
                       coalesce(last.daily_pnl, 0) + $2, coalesce(last.total_pnl, 0) + $2
                FROM (SELECT * FROM public.portfolio_snapshots WHERE user_id = $1
                      ORDER BY id DESC LIMIT 1) AS last
                """,
                DEMO_USER,
                pnl,
            )
            await conn.execute(
                "INSERT INTO public.challenge_trades (challenge_id, user_id, symbol, pnl, "
                "position_id) VALUES ($1, $2, $3, $4, $5)",
                challenge,
                DEMO_USER,
                SYMBOL,
                pnl,
                position_id,
            )
