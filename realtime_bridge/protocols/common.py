"""Helpers shared by the endpoints: JSON responses and resolving a subscription target."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response

from realtime_bridge.bridge import Bridge
from realtime_bridge.errors import ClientError
from realtime_bridge.filters import Filter, parse_filter


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **details}, status_code=status)


CLIENT_ERROR_STATUS = {
    "bad_message": 400,
    "invalid_filter": 400,
    "unknown_channel": 404,
    "unknown_table": 404,
    "invalid_payload": 422,
}


def client_error_response(exc: ClientError) -> JSONResponse:
    return error_response(
        CLIENT_ERROR_STATUS.get(exc.code, 400), exc.code, exc.message, **exc.details
    )


def validation_message(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


async def resolve_target(
    bridge: Bridge, *, channel: str | None, table: str | None, filter_spec: Any
) -> tuple[str, Filter]:
    """The hub channel and parsed filter for a subscribe request (or a ClientError)."""
    if table is not None:
        name = await bridge.table_channel(table)
    elif channel is not None and "." in channel and channel not in bridge.hub.channels:
        name = await bridge.table_channel(channel)
    else:
        name = bridge.resolve_channel(channel or "")
    hub_channel = bridge.hub.channel(name)
    return name, parse_filter(filter_spec, hub_channel.columns)
