"""Auto-entry supervisor: applies a user's auto-entry settings the moment they change.

The loop this replaces re-read its settings file on every pass. Here the
settings live in `public.auto_trade_settings` (one JSON document per user
and setting name, see supabase/migrations/20261123000600_auto_trade_settings.sql)
and the bridge pushes every change of the `auto_entry_settings` rows on the
table's channel:

* settings inserted or changed: apply the new rules for that user;
* a change that leaves the rules as they were (only `updated_at` moved): nothing to do;
* settings deleted: switch auto-entry off for that user.

The table has no plugin, so the channel carries raw rows; `SettingsRow`
types them here. A table without a plugin is readable with the service key
only (unless `TABLE_ACCESS` opens it), which is what a backend service has
(`realtime-bridge keys` prints it). Reconnects, heartbeats and resuming
without loss are the client's job.

Run from the repository root::

    BRIDGE_URL=http://127.0.0.1:8000 BRIDGE_KEY=<service key> \\
        python -m examples.auto_entry_supervisor
    python -m examples.auto_entry_supervisor http://127.0.0.1:8000 <service key>
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from realtime_bridge_client import Client, Event, ResyncRequired, connect

logger = logging.getLogger("auto_entry_supervisor")

TABLE = "public.auto_trade_settings"
FILTERS = {"setting_name": "auto_entry_settings"}


class EntryRules(BaseModel):
    """The `settings` document of an `auto_entry_settings` row."""

    model_config = ConfigDict(extra="ignore")

    enabled: bool = False
    symbols: list[str] = Field(default_factory=list)
    max_positions: int = 1
    min_confidence: float = 0.0


class SettingsRow(BaseModel):
    """A row of public.auto_trade_settings, as the table channel carries it."""

    model_config = ConfigDict(extra="ignore")

    id: int
    user_id: str
    setting_name: str
    settings: EntryRules
    updated_at: datetime | None = None


class AutoEntrySupervisor:
    """Each user's auto-entry rules, kept current by `handle`."""

    def __init__(self) -> None:
        self.rules: dict[str, EntryRules] = {}
        self.actions: list[tuple[str, str]] = []

    async def handle(self, event: Event[SettingsRow]) -> None:
        """React to one settings change: apply, ignore or switch off."""
        row, old = event.data, event.old
        if row is None:
            user = old.user_id if old is not None else str(event.user_id)
            if self.rules.pop(user, None) is not None:
                self.actions.append(("off", user))
                logger.info("would switch auto-entry off for %s: settings deleted", user)
            return
        if old is not None and old.settings == row.settings and row.user_id in self.rules:
            logger.debug("settings of %s touched but unchanged", row.user_id)
            return
        self.rules[row.user_id] = row.settings
        self.actions.append(("apply", row.user_id))
        rules = row.settings
        logger.info(
            "would %s auto-entry for %s: symbols %s, at most %d position(s), confidence >= %g",
            "enable" if rules.enabled else "pause",
            row.user_id,
            ", ".join(rules.symbols) or "none",
            rules.max_positions,
            rules.min_confidence,
        )

    def resync(self, notice: ResyncRequired) -> None:
        """Changes were missed for longer than the bridge keeps them."""
        logger.warning(
            "missed settings changes before seq %s; a real supervisor reloads "
            "public.auto_trade_settings here",
            notice.earliest_seq,
        )


async def supervise(
    client: Client, supervisor: AutoEntrySupervisor, ready: asyncio.Event | None = None
) -> None:
    """Feed every auto-entry settings change to `supervisor` for as long as the client runs."""
    async with client.subscribe(
        TABLE, filters=FILTERS, model=SettingsRow, on_resync=supervisor.resync
    ) as changes:
        if ready is not None:
            ready.set()
        async for event in changes:
            await supervisor.handle(event)


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
    async with connect(url, api_key=key, client_id="auto-entry-supervisor") as client:
        await supervise(client, AutoEntrySupervisor())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1:]))
