"""Publishing from backend code: `broadcast()` and the typed helpers.

Every event gets its seq from the outbox, so there is one order for all
bridge instances. Where the row goes:

* `conn=` given (an asyncpg connection): written with it, so inside the
  caller's open transaction the event exists if and only if that
  transaction commits;
* a bridge running in this process: through its pool;
* otherwise `DATABASE_URL`: a short connection of its own.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import asyncpg

from realtime_bridge.bridge import current_bridge
from realtime_bridge.errors import PublishError
from realtime_bridge.plugins import PluginRegistry, discover
from realtime_bridge.settings import Settings


@lru_cache(maxsize=1)
def _standalone_registry() -> tuple[PluginRegistry, Settings]:
    settings = Settings()
    return discover(settings.plugin_paths), settings


async def broadcast(
    channel: str, event: str | None, payload: dict[str, Any], *, conn: Any = None
) -> None:
    """Publish `payload` on `channel`, validated by the channel's model."""
    bridge = current_bridge()
    registry = bridge.registry if bridge is not None else _standalone_registry()[0]
    event_name, data = registry.validate_broadcast(channel, event, payload)
    sql = "SELECT realtime_bridge.broadcast($1, $2, $3::jsonb)"
    args = (channel, event_name, data)
    try:
        if conn is not None:
            await _execute(conn, sql, args)
        elif bridge is not None and bridge.pool is not None:
            await bridge.pool.execute(sql, *args)
        else:
            settings = _standalone_registry()[1]
            if not settings.database_url:
                raise PublishError(
                    "no database to publish to: pass conn=, run a bridge, or set DATABASE_URL"
                )
            own = await asyncpg.connect(settings.database_url)
            try:
                await _execute(own, sql, args)
            finally:
                await own.close()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PublishError(f"could not publish on {channel!r}: {exc}") from exc


async def _execute(conn: Any, sql: str, args: tuple[str, str, dict[str, Any]]) -> None:
    import orjson

    channel, event, data = args
    # A caller's connection may lack our jsonb codec: send text, cast in SQL.
    await conn.execute(
        sql.replace("$3::jsonb", "$3::text::jsonb"), channel, event, orjson.dumps(data).decode()
    )


async def broadcast_position_update(
    position_id: int, position_data: dict[str, Any], *, conn: Any = None
) -> None:
    """Publish a `position_update` on `position-updates`."""
    await broadcast(
        "position-updates", "position_update", {**position_data, "id": position_id}, conn=conn
    )


async def broadcast_trade_update(
    trade_id: int, trade_data: dict[str, Any], *, conn: Any = None
) -> None:
    """Publish a `trade_update` on `trade-updates`."""
    await broadcast("trade-updates", "trade_update", {**trade_data, "id": trade_id}, conn=conn)


async def broadcast_portfolio_update(
    user_id: str, portfolio_data: dict[str, Any], *, conn: Any = None
) -> None:
    """Publish a `portfolio_update` on `portfolio-updates`."""
    await broadcast(
        "portfolio-updates", "portfolio_update", {**portfolio_data, "user_id": user_id}, conn=conn
    )
