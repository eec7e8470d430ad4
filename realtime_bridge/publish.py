"""Publishing from backend code: `broadcast()` and the typed helpers.

Every event gets its seq from the outbox, so there is one order for all
bridge instances. Where the row goes:

* `conn=` given (an asyncpg connection): written with it, so inside the
  caller's open transaction the event exists if and only if that
  transaction commits;
* a bridge running in this process: through its pool;
* otherwise `DATABASE_URL`: a short connection of its own;
* otherwise (or with `bridge_url=`) `REALTIME_BRIDGE_URL`: a POST to the
  bridge's `/api/broadcast` with `REALTIME_BRIDGE_KEY` (its service key).

Use the database when the service already writes to it (the event then
commits with the business change); use the bridge URL from services that
have no database access, accepting that the event is separate from any
transaction of theirs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import asyncpg
import httpx
from pydantic import ValidationError

from realtime_bridge.bridge import current_bridge
from realtime_bridge.errors import PayloadInvalid, PublishError, UnknownChannel
from realtime_bridge.plugins import PluginRegistry, discover
from realtime_bridge.settings import Settings


@lru_cache(maxsize=1)
def _standalone_registry() -> tuple[PluginRegistry, Settings]:
    settings = Settings()
    return discover(settings.plugin_paths), settings


async def broadcast(
    channel: str,
    event: str | None,
    payload: dict[str, Any],
    *,
    conn: Any = None,
    bridge_url: str | None = None,
    api_key: str | None = None,
) -> int | None:
    """Publish `payload` on `channel`, validated by the channel's model.

    Returns the event's seq when it is known at once (over HTTP), else None.
    """
    bridge = current_bridge()
    registry, settings = (
        (bridge.registry, bridge.settings) if bridge is not None else _standalone_registry()
    )
    url = bridge_url or (None if bridge is not None else settings.realtime_bridge_url)
    over_http = conn is None and url is not None and (bridge_url or not settings.database_url)
    if over_http and channel not in registry.by_channel:
        # A service without the plugins: the bridge validates instead.
        event_name, data = event, dict(payload)
    else:
        event_name, data = registry.validate_broadcast(channel, event, payload)
    if over_http:
        assert url is not None
        return await _post(url, api_key or settings.realtime_bridge_key, channel, event_name, data)
    sql = "SELECT realtime_bridge.broadcast($1, $2, $3::jsonb)"
    assert event_name is not None
    args = (channel, event_name, data)
    try:
        if conn is not None:
            await _execute(conn, sql, args)
        elif bridge is not None and bridge.pool is not None:
            await bridge.pool.execute(sql, *args)
        else:
            if not settings.database_url:
                raise PublishError(
                    "nowhere to publish: pass conn=, run a bridge in this process, "
                    "or set DATABASE_URL or REALTIME_BRIDGE_URL"
                )
            own = await asyncpg.connect(settings.database_url)
            try:
                await _execute(own, sql, args)
            finally:
                await own.close()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise PublishError(f"could not publish on {channel!r}: {exc}") from exc
    return None


async def _post(
    url: str, key: str | None, channel: str, event: str | None, data: dict[str, Any]
) -> int | None:
    """POST the event to a bridge's /api/broadcast (needs its service key)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body: dict[str, Any] = {"channel": channel, "payload": data}
    if event is not None:
        body["event"] = event
    try:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10) as http:
            response = await http.post("/api/broadcast", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise PublishError(f"could not reach the bridge at {url}: {exc}") from exc
    if response.status_code == 202:
        seq = response.json().get("seq")
        return int(seq) if seq is not None else None
    try:
        error = response.json()
    except ValueError:
        error = {"message": response.text}
    message = f"the bridge refused the event ({response.status_code}): {error.get('message')}"
    if error.get("code") == "invalid_payload":
        raise PayloadInvalid(message, errors=error.get("errors", []))
    if error.get("code") == "unknown_channel":
        raise UnknownChannel(message, channel=channel)
    raise PublishError(message)


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


async def publish_prices(
    ticks: list[dict[str, Any]], *, bridge_url: str | None = None, api_key: str | None = None
) -> int:
    """Publish market ticks on `price-updates` (never written to Postgres); returns how many kept.

    In process straight into the running bridge's market; otherwise (or with
    `bridge_url=`) POST /api/prices to REALTIME_BRIDGE_URL with its service key.
    """
    from realtime_bridge.market import parse_ticks

    bridge = current_bridge()
    if bridge is not None and bridge_url is None:
        try:
            parsed = parse_ticks(ticks)
        except ValidationError as exc:
            raise PayloadInvalid(f"invalid ticks: {exc.error_count()} error(s)") from exc
        return bridge.market.publish(parsed)
    settings = Settings()
    url = bridge_url or settings.realtime_bridge_url
    if url is None:
        raise PublishError(
            "nowhere to publish prices: run a bridge here or set REALTIME_BRIDGE_URL"
        )
    key = api_key or settings.realtime_bridge_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=10) as http:
            response = await http.post("/api/prices", json={"ticks": ticks}, headers=headers)
    except httpx.HTTPError as exc:
        raise PublishError(f"could not reach the bridge at {url}: {exc}") from exc
    if response.status_code != 202:
        error = response.json()
        if error.get("code") == "invalid_payload":
            raise PayloadInvalid(error.get("message", "invalid ticks"), errors=error.get("errors"))
        raise PublishError(f"the bridge refused the ticks ({response.status_code}): {error}")
    accepted: int = response.json()["accepted"]
    return accepted
