"""The web inspector and the example dashboard in a real browser (headless Chromium).

A real bridge and Postgres; the dashboard's production build served from another
origin, as a deployed frontend would be; `tests/browser/live-pages.mjs` drives
Chromium through playwright-core and reports what the pages showed. Screenshots
land in tests/browser/artifacts/.

`make test` finds or installs Chromium (`make chromium`) and builds what this
needs. Without a Chromium the tests fail: the suite is the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from tests.conftest import ROOT, BridgeFactory

BROWSER_TESTS = ROOT / "tests" / "browser"
SCRIPT = BROWSER_TESTS / "live-pages.mjs"
SUPABASE_SCRIPT = BROWSER_TESTS / "supabase-positions.mjs"
ARTIFACTS = BROWSER_TESTS / "artifacts"
DASHBOARD = ROOT / "examples" / "react-dashboard" / "dist"
# A row must be on screen this soon after its write committed.
ON_SCREEN_MS = 1000
USER = "browser-user"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def static_site(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on a free loopback port."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def find_chromium() -> Path | None:
    """$CHROMIUM, else /usr/bin/chromium, else a `chromium` on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return Path(named)
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def _require_browser() -> tuple[str, Path]:
    chromium = find_chromium()
    if chromium is None or not chromium.exists():
        pytest.fail(
            f"no Chromium (looked at $CHROMIUM, /usr/bin/chromium and PATH; found {chromium}): "
            "the browser tests need one. `make chromium` installs Debian's as root "
            "(`apt-get install -y chromium`), or set CHROMIUM=/path/to/chromium."
        )
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the browser tests need Node 20+")
    missing = [
        str(path.relative_to(ROOT))
        for path in (BROWSER_TESTS / "node_modules" / "playwright-core", DASHBOARD / "index.html")
        if not path.exists()
    ]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make web` (make test does)")
    return node, chromium


def is_png(path: str) -> bool:
    return Path(path).read_bytes().startswith(b"\x89PNG")


Answer = Callable[[Any], Awaitable[None]]


async def converse(process: asyncio.subprocess.Process, answer: Answer) -> Any:
    """Answer the script's requests (writes to Postgres) until it prints its result."""
    assert process.stdout is not None
    assert process.stdin is not None
    while line := await process.stdout.readline():
        message = orjson.loads(line)
        if "request" not in message:
            return message
        await answer(message["request"])
        process.stdin.write(b'{"done": true}\n')
        await process.stdin.drain()
    return None


async def drive(script: Path, config: dict[str, Any], answer: Answer) -> Any:
    """Run a browser script with `config`, answer its requests, return its result."""
    node, chromium = _require_browser()
    config = {**config, "artifacts": str(ARTIFACTS), "chromium": str(chromium)}
    process = await asyncio.create_subprocess_exec(
        node,
        str(script),
        orjson.dumps(config).decode(),
        cwd=BROWSER_TESTS,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = asyncio.create_task(process.stderr.read())
    try:
        async with asyncio.timeout(90):
            result = await converse(process, answer)
            assert process.stdin is not None
            process.stdin.close()
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (await stderr).decode(errors="replace")
    assert process.returncode == 0, log
    assert result is not None, log
    assert result["ok"], f"{result.get('error')}\n{log}"
    print(log)  # the figures, for `pytest -s` and failure reports
    return result


async def test_inspector_and_dashboard_stay_live_through_a_websocket_outage(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    _require_browser()
    bridge = await start_bridge(enable_testing_api=True)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)

    async def reprice(request: Any) -> None:
        await db.execute(
            "UPDATE positions SET current_price = $1 WHERE id = $2",
            request["price"],
            request["reprice"],
        )

    with static_site(DASHBOARD) as dashboard_url:
        config = {
            "bridgeUrl": bridge.url,
            "serviceKey": bridge.service_key,
            "anonKey": bridge.anon_key,
            "userToken": bridge.user_token(USER),
            "userId": USER,
            "dashboardUrl": dashboard_url,
        }
        result = await drive(SCRIPT, config, reprice)
    assert result["pageErrors"] == []

    # The inspector at a glance, from /health and /api/stats.
    inspector = result["pages"]["inspector"]
    assert inspector["bridgeStatus"] == "ok"
    assert inspector["clients"] >= 2  # this page's socket and the dashboard's
    assert {"position-updates", "trade-updates", "portfolio-updates"} <= set(inspector["channels"])
    # Its newest event: the position written by the first signal, expanded.
    first = inspector["firstEvent"]
    assert first["payloadVisible"]
    assert first["payload"]["data"]["symbol"] == "RTA"
    assert first["payload"]["data"]["user_id"] == USER
    assert int(first["seq"]) >= 1
    assert first["latency"].endswith("ms")

    dashboard = result["pages"]["dashboard"]
    assert dashboard["rows"] == ["RTA"]
    assert dashboard["trades"] == ["RTA"]
    assert dashboard["portfolioValue"] == "$303.75"  # 3 × 101.25 at market
    # The UPDATE made in Postgres (price 101.25 → 110) reached both pages at once.
    assert dashboard["repriced"] == {"pnl": "$26.25", "pnlPct": "+8.64%", "unrealized": "$26.25"}
    update = result["phases"]["update"]
    assert update["dashboardMs"] < ON_SCREEN_MS, update
    assert update["inspectorMs"] < ON_SCREEN_MS, update

    phases = result["phases"]
    for phase in ("realtime", "polling", "back"):
        figures = phases[phase]
        # Each page says how it got the row: the socket, or the long-poll fallback.
        expected_mode = "polling" if phase == "polling" else "realtime"
        assert figures["inspectorMode"] == expected_mode, (phase, figures)
        assert figures["dashboardMode"] == expected_mode, (phase, figures)
        assert figures["inspectorMs"] < ON_SCREEN_MS, (phase, figures)
        assert figures["dashboardMs"] < ON_SCREEN_MS, (phase, figures)
    assert result["socketsCut"] == 2
    assert result["pages"]["dashboard"]["finalRows"] == ["RTA", "PLA", "BKA"]
    # Newest first, every event once, across the fallback and the return.
    seqs = result["pages"]["inspector"]["finalSeqs"]
    assert seqs == sorted(seqs, reverse=True)
    assert len(seqs) == len(set(seqs)) == 4  # three INSERTs and the price UPDATE

    assert all(is_png(shot) for shot in result["screenshots"]), result["screenshots"]
    assert {Path(shot).name for shot in result["screenshots"]} >= {
        "inspector-realtime.png",
        "dashboard-polling.png",
        "inspector-back.png",
    }


async def test_the_docs_supabase_js_hook_drops_a_deleted_position(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    """docs/clients.md's `usePositions` (supabase-js, unchanged) through INSERT, UPDATE, DELETE."""
    _require_browser()
    bridge = await start_bridge()
    written: dict[str, int] = {}

    async def write(request: Any) -> None:
        step = request["step"]
        if step == "insert":
            written["id"] = await db.fetchval(
                "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
                "VALUES ($1, 'SBJ', 2, 100, 100) RETURNING id",
                USER,
            )
            # Another user's row: never on this user's page.
            await db.execute(
                "INSERT INTO positions (user_id, symbol, quantity, entry_price, current_price) "
                "VALUES ('someone-else', 'OTH', 1, 1, 1)"
            )
        elif step == "update":
            await db.execute(
                "UPDATE positions SET current_price = 125 WHERE id = $1", written["id"]
            )
        else:
            await db.execute("DELETE FROM positions WHERE id = $1", written["id"])

    with static_site(DASHBOARD) as dashboard_url:
        config = {
            "bridgeUrl": bridge.url,
            "anonKey": bridge.anon_key,
            "userToken": bridge.user_token(USER),
            "dashboardUrl": dashboard_url,
        }
        result = await drive(SUPABASE_SCRIPT, config, write)
    assert result["pageErrors"] == []
    assert result["steps"]["insert"]["rows"] == ["SBJ @ 100"]
    assert result["steps"]["update"]["rows"] == ["SBJ @ 125"]
    assert result["steps"]["delete"]["rows"] == []
    assert result["afterDelete"] == []


async def test_the_demo_life_cycle_on_the_dashboard_and_in_the_inspector(
    start_bridge: BridgeFactory, db: asyncpg.Connection
) -> None:
    """The demo's cycle: P&L moves with each tick, the stop-loss exit, the alert, the portfolio."""
    _require_browser()
    from realtime_bridge.demo import DEMO_USER, DemoScript

    bridge = await start_bridge(demo_tick_interval=0.3, pnl_interval=0.1)
    script = DemoScript(bridge.bridge)
    await script._ensure_portfolio()
    challenge = await script._active_challenge()
    cycles: list[asyncio.Task[Any]] = []

    async def cycle(request: Any) -> None:
        assert request == {"step": "cycle"}
        cycles.append(asyncio.create_task(script.cycle(winner=False)))

    with static_site(DASHBOARD) as dashboard_url:
        config = {
            "bridgeUrl": bridge.url,
            "serviceKey": bridge.service_key,
            "anonKey": bridge.anon_key,
            "userToken": bridge.user_token(DEMO_USER),
            "challengeId": challenge,
            "dashboardUrl": dashboard_url,
        }
        result = await drive(BROWSER_TESTS / "demo-dashboard.mjs", config, cycle)
    (done,) = cycles
    exit_ = await done
    assert exit_.reason == "stop_loss"
    assert result["pageErrors"] == []
    # The open position's P&L moved with the ticks, up and down, before the exit.
    pnl = result["pnl"]
    assert len(pnl) >= 4, pnl
    assert any(value.startswith("-") for value in pnl), pnl
    assert any(not value.startswith("-") and value != "$0.00" for value in pnl), pnl
    assert len(result["prices"]) >= 4, result["prices"]
    # The exit: the trade closed at the stop, the position row closed.
    assert "closed" in result["trade"]
    assert "-$450.00" in result["trade"]
    assert result["closedRows"] == 1
    assert result["portfolioValue"] == "$9,550.00"
    (alert,) = result["alerts"]
    assert "Daily drawdown at 4.50% (limit: 5.00%)" in alert
    assert result["challenge"]["equity"] == "$9,550.00"
    assert result["challenge"]["lastTrade"] == "DEMO -450.00 → 9550.00"
    assert result["challenge"]["status"] == "ACTIVE"
    # The inspector, on the room, newest first.
    assert result["inspectorEvents"][:2] == ["RISK_ALERT", "EQUITY_UPDATED"]
    assert all(is_png(shot) for shot in result["screenshots"]), result["screenshots"]
