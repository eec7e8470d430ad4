"""The naive approach the original proposals sketched, as a FastAPI-style Starlette app.

* Push: a trigger ``pg_notify``s each change (the same trigger as the raw
  floor, ``bench.floor_positions``); one asyncpg connection LISTENs and
  queues it; a broadcaster task loops over every connected client and
  ``await websocket.send_json(event)`` for each one whose ``user_id``
  matches (or every client, for a table subscription). That is the
  ``ConnectionManager.broadcast`` of countless tutorials: one scan of all
  clients and one JSON encoding and one awaited send per client per event.
* Poll: ``GET /poll?user_id=u1&since=<updated_at>`` runs one query per
  request, the clients call it every 5 s.

Served by uvicorn with its defaults (like ``uvicorn app:app``). Run by the
benchmark: ``python -m bench.naive_server --listen-dsn … --poll-dsn … --port …``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.limits import raise_fd_limit

CHANNEL = "bench_floor"
POLL_SQL = """
SELECT quantity, updated_at FROM bench.floor_positions
WHERE user_id = $1 AND updated_at > $2 ORDER BY updated_at
"""


class Manager:
    def __init__(self) -> None:
        self.clients: list[tuple[WebSocket, str | None]] = []
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.queue.put_nowait(payload)

    async def broadcaster(self) -> None:
        while True:
            payload = await self.queue.get()
            event = json.loads(payload)
            for websocket, user in list(self.clients):
                if user is None or user == event.get("user_id"):
                    with contextlib.suppress(Exception):  # a client that left
                        await websocket.send_json(event)


def build(listen_dsn: str, poll_dsn: str) -> Starlette:
    manager = Manager()
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        listener = await asyncpg.connect(listen_dsn)
        await listener.add_listener(CHANNEL, manager.on_notify)
        state["pool"] = await asyncpg.create_pool(poll_dsn, min_size=10, max_size=10)
        task = asyncio.create_task(manager.broadcaster())
        try:
            yield
        finally:
            task.cancel()
            await state["pool"].close()
            await listener.close()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        message = await websocket.receive_json()
        user = (message.get("filters") or {}).get("user_id")
        entry = (websocket, user)
        manager.clients.append(entry)
        await websocket.send_json({"type": "subscribed", "subscription_id": "naive"})
        try:
            while True:
                message = await websocket.receive_json()
                if message.get("type") == "ping":
                    await websocket.send_json({"type": "pong"})
        except WebSocketDisconnect:
            pass
        finally:
            manager.clients.remove(entry)

    async def poll(request: Request) -> JSONResponse:
        user = request.query_params["user_id"]
        since_text = request.query_params.get("since") or ""
        if not since_text:
            return JSONResponse({"rows": [], "cursor": datetime.now(UTC).isoformat()})
        since = datetime.fromisoformat(since_text)
        rows = await state["pool"].fetch(POLL_SQL, user, since)
        cursor = rows[-1]["updated_at"].isoformat() if rows else since_text
        return JSONResponse(
            {"rows": [{"quantity": float(r["quantity"])} for r in rows], "cursor": cursor}
        )

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            WebSocketRoute("/ws", endpoint),
            Route("/poll", poll),
            Route("/ready", ready),
        ],
        lifespan=lifespan,
    )


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.naive_server")
    parser.add_argument("--listen-dsn", required=True)
    parser.add_argument("--poll-dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    uvicorn.run(
        build(args.listen_dsn, args.poll_dsn),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    cli()
