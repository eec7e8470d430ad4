"""The raw floor: trigger + pg_notify → asyncpg listener → bare `websockets` server.

The trigger on ``bench.floor_positions`` sends each change as a small,
ready-made frame (``{"type":"db_change","user_id":…,"data":{"quantity":…}}``)
through ``pg_notify``. This process LISTENs with asyncpg and hands the
frame, unchanged, to `websockets.broadcast` for the sockets that asked for
it: every socket (a table subscription) or the user's own (a subscribe
with ``filters.user_id``). Nothing else: no sequencing, no resume, no
authorization, no typing, so it is what the hardware and the libraries
allow, not a product.

Run by the benchmark: ``python -m bench.floor_server --dsn … --port …``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import asyncpg
import orjson
from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.limits import event_loop_factory, raise_fd_limit

CHANNEL = "bench_floor"
SUBSCRIBED = '{"type":"subscribed","subscription_id":"floor"}'
PONG = '{"type":"pong"}'


class Floor:
    def __init__(self) -> None:
        self.everyone: set[ServerConnection] = set()
        self.by_user: dict[str, set[ServerConnection]] = {}

    def on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if self.everyone:
            broadcast(self.everyone, payload)
        if self.by_user:
            user = orjson.loads(payload).get("user_id")
            receivers = self.by_user.get(user)
            if receivers:
                broadcast(receivers, payload)

    async def handler(self, ws: ServerConnection) -> None:
        users: list[str] = []
        table = False
        try:
            async for message in ws:
                frame = orjson.loads(message)
                kind = frame.get("type")
                if kind == "subscribe":
                    user = (frame.get("filters") or {}).get("user_id")
                    if user is None:
                        table = True
                        self.everyone.add(ws)
                    else:
                        users.append(str(user))
                        self.by_user.setdefault(str(user), set()).add(ws)
                    await ws.send(SUBSCRIBED)
                elif kind == "ping":
                    await ws.send(PONG)
        finally:
            if table:
                self.everyone.discard(ws)
            for user in users:
                members = self.by_user.get(user)
                if members is not None:
                    members.discard(ws)
                    if not members:
                        del self.by_user[user]


async def main(dsn: str, port: int) -> None:
    floor = Floor()
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(CHANNEL, floor.on_notify)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        floor.handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=1 << 20,
        backlog=4096,
    ):
        await stop
    with contextlib.suppress(Exception):
        await conn.close(timeout=2)


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main(args.dsn, args.port))


if __name__ == "__main__":
    cli()
