"""What one idle subscribed WebSocket holds in the bridge, object by object.

``python -m bench.connmem --clients 500`` runs a bridge in this process on
the embedded Postgres (or DATABASE_URL), with tracemalloc on; a child
process opens the sockets (each with its own user token, subscribed to its
own rows of ``position-updates``, as P4 does) and keeps them idle. The
Python heap is snapshotted before and after, and the difference is printed
per allocating line and per module, divided by the number of sockets, with
the RSS growth next to it (tracemalloc's own bookkeeping inflates RSS, so
read RSS from P4 in ``python -m bench``, and this for where the bytes go).
``--deflate`` sets WS_PERMESSAGE_DEFLATE and lets the clients offer it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import linecache
import os
import sys
import tracemalloc
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, sys
import websockets

async def main(url, tokens, deflate):
    sockets = []
    for token in tokens:
        ws = await websockets.connect(
            f"{url}?apikey={token}", compression="deflate" if deflate else None, ping_interval=None
        )
        user = token.split(":", 1)[0]
        await ws.send('{"type":"subscribe","channel":"position-updates"}')
        reply = await ws.recv()
        assert '"subscribed"' in reply, reply
        sockets.append(ws)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for ws in sockets:
        await ws.close()

url, deflate = sys.argv[1], sys.argv[2] == "1"
tokens = sys.stdin.readline().split()
asyncio.run(main(url, tokens, deflate))
"""


def where(trace: tracemalloc.Traceback) -> str:
    """The innermost frame (tracemalloc lists the oldest first)."""
    frame = trace[-1]
    return f"{short(frame.filename)}:{frame.lineno}"


def owner(trace: tracemalloc.Traceback) -> str:
    """The innermost frame of the bridge or a library it runs on (not the stdlib's)."""
    for frame in reversed(trace):
        name = short(frame.filename)
        if not name.startswith(("python3", "<")):
            return f"{name}:{frame.lineno}"
    return where(trace)


def short(name: str) -> str:
    for marker in ("site-packages/", "realtime_bridge/", "python3."):
        if marker in name:
            return name[name.index(marker) :].removeprefix("site-packages/")
    return name


def module(location: str) -> str:
    name = location.split(":", 1)[0]
    parts = name.split("/")
    if parts[0] == "realtime_bridge":
        return "/".join(parts[:3]) if parts[1] == "protocols" else "/".join(parts[:2])
    if parts[0].startswith("python3"):
        return "stdlib/" + parts[1] if len(parts) > 1 else "stdlib"
    return parts[0]


async def measure(clients: int, deflate: bool, top: int) -> None:
    from realtime_bridge.plugins import discover
    from realtime_bridge.settings import Settings
    from realtime_bridge.testing import TestDatabase, run_bridge

    registry = discover([ROOT / "plugins"], use_entry_points=False)
    async with TestDatabase.start(os.environ.get("DATABASE_URL") or None, demo=True) as dbs:
        dsn = await dbs.create()
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=dsn,
            plugin_paths=[ROOT / "plugins"],
            gc_tuning=False,
            max_connections_per_ip=clients + 10,
            ws_permessage_deflate=deflate,
        )
        async with run_bridge(settings, registry) as bridge:
            tokens = [bridge.user_token(f"u{i}") for i in range(clients)]
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                bridge.ws_url,
                "1" if deflate else "0",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            assert child.stdin is not None
            assert child.stdout is not None
            await asyncio.sleep(0.5)
            gc.collect()
            process = psutil.Process()
            rss0 = process.memory_info().rss
            before = tracemalloc.take_snapshot()
            child.stdin.write((" ".join(tokens) + "\n").encode())
            await child.stdin.drain()
            line = await asyncio.wait_for(child.stdout.readline(), 600)
            if line.strip() != b"ready":
                raise RuntimeError(f"the client process failed: {line!r}")
            await asyncio.sleep(1.0)
            gc.collect()
            after = tracemalloc.take_snapshot()
            rss1 = process.memory_info().rss
            stats = after.compare_to(before, "traceback")
            by_line: dict[str, int] = {}
            by_module: dict[str, int] = {}
            for stat in stats:
                location = where(stat.traceback)
                by_line[location] = by_line.get(location, 0) + stat.size_diff
                group = module(owner(stat.traceback))
                by_module[group] = by_module.get(group, 0) + stat.size_diff
            total = sum(stat.size_diff for stat in stats)
            print(
                f"{clients} idle subscribed sockets, deflate {'on' if deflate else 'off'}: "
                f"Python heap +{total / clients:,.0f} B each (tracemalloc), "
                f"RSS +{(rss1 - rss0) / clients:,.0f} B each (inflated by tracemalloc)"
            )
            print("\nper module (bytes per connection):")
            for name, size in sorted(by_module.items(), key=lambda kv: -kv[1]):
                if abs(size) / clients >= 16:
                    print(f"  {size / clients:8,.0f}  {name}")
            print(f"\ntop {top} allocating lines (bytes per connection):")
            for location, size in sorted(by_line.items(), key=lambda kv: -kv[1])[:top]:
                path, _, lineno = location.rpartition(":")
                source = ""
                for candidate in (ROOT / path, Path(sys.base_prefix) / "lib" / path):
                    if candidate.exists():
                        source = linecache.getline(str(candidate), int(lineno)).strip()
                        break
                if not source:
                    for base in sys.path:
                        candidate = Path(base) / path
                        if candidate.exists():
                            source = linecache.getline(str(candidate), int(lineno)).strip()
                            break
                print(f"  {size / clients:8,.0f}  {location}  {source[:70]}")
            child.stdin.write(b"\n")
            await child.stdin.drain()
            await child.wait()
        await dbs.drop(dsn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    tracemalloc.start(12)
    asyncio.run(measure(args.clients, args.deflate, args.top))


if __name__ == "__main__":
    main()
