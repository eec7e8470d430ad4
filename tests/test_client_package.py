"""clients/python on its own: its wheel installs without the server and follows a real bridge.

The wheel is built and installed once per session into a clean venv (no
server, no repository on the path); a script run with that venv's Python
subscribes to a bridge the fixtures start, and receives a row inserted here.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, BridgeFactory
from tests.helpers import insert_position

CLIENT = ROOT / "clients" / "python"
SERVER_ONLY = ("asyncpg", "uvicorn", "pgserver", "starlette", "realtime_bridge")

SUBSCRIBER = """
import asyncio, json, sys
from realtime_bridge_client import connect

async def main(url, key):
    async with connect(url, api_key=key) as client:
        async with client.subscribe("position-updates", filters={"user_id": "u1"}) as positions:
            print("subscribed", flush=True)
            async for event in positions:
                print(json.dumps({"seq": event.seq, "operation": event.operation,
                                  "record_id": event.record_id, "data": event["data"]}),
                      flush=True)
                return

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def _clean_env() -> dict[str, str]:
    # Nothing from this checkout or its venv may leak into the clean interpreter.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="session")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("client-wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = out / "source"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)],
        cwd=out,
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("realtime_bridge_client-*.whl")
    return wheel


@pytest.fixture(scope="session")
def client_python(client_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh venv holding only the client's wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("client-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(client_wheel)],
        cwd=venv,
        env=_clean_env(),
        check=True,
        timeout=600,
        capture_output=True,
    )
    return python


def test_the_wheel_is_typed_and_declares_no_server_dependency(client_wheel: Path) -> None:
    with zipfile.ZipFile(client_wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip().split(">")[0].split(";")[0].strip().lower()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert "realtime_bridge_client/py.typed" in names
    assert not any(n.startswith("realtime_bridge/") for n in names)
    assert sorted(requires) == ["httpx", "orjson", "pydantic", "websockets"]


def test_the_clean_venv_has_the_client_and_not_the_server(
    client_python: Path, tmp_path: Path
) -> None:
    probe = (
        "import importlib, json\n"
        "missing = []\n"
        f"for name in {SERVER_ONLY!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        missing.append(name)\n"
        "import realtime_bridge_client as c\n"
        "print(json.dumps([missing, c.__file__, sorted(c.__all__)]))\n"
    )
    done = subprocess.run(
        [str(client_python), "-c", probe],
        cwd=tmp_path,
        env=_clean_env(),
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    missing, location, public = json.loads(done.stdout)
    assert missing == list(SERVER_ONLY)
    assert not Path(location).is_relative_to(ROOT)  # the installed copy, not the checkout
    assert {"connect", "Client", "Event", "Refused", "ResyncRequired"} <= set(public)


async def test_the_installed_client_receives_a_change_from_a_running_bridge(
    client_python: Path, start_bridge: BridgeFactory, db: asyncpg.Connection, tmp_path: Path
) -> None:
    bridge = await start_bridge()
    script = tmp_path / "subscriber.py"
    script.write_text(SUBSCRIBER)
    process = await asyncio.create_subprocess_exec(
        str(client_python),
        str(script),
        bridge.url,
        bridge.service_key,
        cwd=tmp_path,
        env=_clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ready = await asyncio.wait_for(process.stdout.readline(), 30)
        assert ready == b"subscribed\n", ready
        await insert_position(db, "u2", "MSFT")  # filtered out: another user's row
        row_id = await insert_position(db, "u1", "AAPL", quantity=2)
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    event = json.loads(line)
    assert (event["operation"], event["record_id"]) == ("INSERT", row_id)
    assert event["data"]["symbol"] == "AAPL"
    assert event["data"]["market_value"] == 220.0  # typed by the bridge's plugin
