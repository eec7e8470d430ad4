"""Active-trade supervisor: starts watching a trade the moment it opens. No polling.

The loop this replaces checked the trades table every few seconds for new
open trades. Here the bridge pushes every trade that is, or just stopped
being, open on the `trade-updates` channel (filter `{"status": ["open"]}`;
an UPDATE that leaves the filter is still delivered, with the old row).
The client is given the bridge's plugins (`load_plugins`), so each event's
`data` is the channel's model, `plugins/trading.py`'s `TradeUpdate`:

* a trade that opens (inserted as open, or updated into open): start monitoring it;
* an open trade that changes (a new stop, a new target): monitor the new values;
* a trade that closes, is cancelled or is deleted: stop monitoring it.

It is a backend service reading every user's trades, so it connects with
the service key (`realtime-bridge keys` prints it). Reconnects, heartbeats
and resuming without loss are the client's job. A restart of this process
starts live from that moment: persist `event.seq` and pass it as `since` to
resume across restarts.

Run from the repository root::

    BRIDGE_URL=http://127.0.0.1:8000 BRIDGE_KEY=<service key> \\
        python -m examples.active_trade_supervisor
    python -m examples.active_trade_supervisor http://127.0.0.1:8000 <service key>
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from realtime_bridge.plugins import PluginRegistry, discover
from realtime_bridge_client import Client, Event, ResyncRequired, connect

logger = logging.getLogger("active_trade_supervisor")

CHANNEL = "trade-updates"
FILTERS = {"status": ["open"]}
PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


class ActiveTradeSupervisor:
    """The open trades being monitored, kept current by `handle`."""

    def __init__(self) -> None:
        # trade id -> the trade as last seen (a TradeUpdate)
        self.monitored: dict[int, Any] = {}
        self.actions: list[tuple[str, int]] = []

    async def handle(self, event: Event[Any]) -> None:
        """React to one trade event: start, update or stop monitoring that trade."""
        trade = event.data  # a TradeUpdate, or None for a DELETE
        if trade is not None and trade.status == "open":
            if trade.id not in self.monitored:
                self._act("start", trade.id)
                logger.info(
                    "would start monitoring trade %s: %s %s %g %s @ %g (stop %s, target %s)",
                    trade.id,
                    trade.user_id,
                    trade.signal_type,
                    trade.quantity,
                    trade.symbol,
                    trade.entry_price,
                    trade.stop_loss,
                    trade.take_profit,
                )
            else:
                logger.info("trade %s changed; monitoring its new values", trade.id)
            self.monitored[trade.id] = trade
            return
        trade_id = int(event.record_id)
        if self.monitored.pop(trade_id, None) is not None:
            self._act("stop", trade_id)
            reason = "deleted" if trade is None else trade.status
            logger.info("would stop monitoring trade %s: %s", trade_id, reason)

    def resync(self, notice: ResyncRequired) -> None:
        """Changes were missed for longer than the bridge keeps them."""
        logger.warning(
            "missed trade changes before seq %s; a real supervisor reloads its open trades "
            "from the database here",
            notice.earliest_seq,
        )

    def _act(self, action: str, trade_id: int) -> None:
        self.actions.append((action, trade_id))


async def supervise(
    client: Client, supervisor: ActiveTradeSupervisor, ready: asyncio.Event | None = None
) -> None:
    """Feed every open-trade event to `supervisor` for as long as the client runs."""
    async with client.subscribe(CHANNEL, filters=FILTERS, on_resync=supervisor.resync) as trades:
        if ready is not None:
            ready.set()
        async for event in trades:
            await supervisor.handle(event)


def load_plugins() -> PluginRegistry:
    """The bridge's plugins: the client types each channel's events with their models."""
    return discover([PLUGINS])


def bridge_address(argv: Sequence[str]) -> tuple[str, str]:
    """The bridge's URL and service key, from the arguments or BRIDGE_URL / BRIDGE_KEY."""
    url = argv[0] if argv else os.environ.get("BRIDGE_URL", "http://127.0.0.1:8000")
    key = argv[1] if len(argv) > 1 else os.environ.get("BRIDGE_KEY", "")
    if not key:
        raise SystemExit(
            "give the service key as the second argument or in BRIDGE_KEY "
            "(`realtime-bridge keys` prints it)"
        )
    return url, key


async def main(argv: Sequence[str]) -> None:
    url, key = bridge_address(argv)
    async with connect(
        url, api_key=key, registry=load_plugins(), client_id="active-trade-supervisor"
    ) as client:
        await supervise(client, ActiveTradeSupervisor())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
