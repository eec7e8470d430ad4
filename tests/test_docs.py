"""The documentation (README.md and docs/): complete, and every example in it runs.

Fenced code blocks are examples or output. An example (`sh`, `python`, `sql`,
`ts`, `tsx`, `js`) either runs here against a real bridge, is included from a
file another test runs (`--8<-- "path"`), or is preceded by
`<!-- not run: why -->`. Output and formats (`text`, `json`, `console`,
`nginx`) are shown, not run. Shell and Python examples are written for
`make run` (http://127.0.0.1:8000, the embedded Postgres in .realtime-bridge);
they run unchanged but for those addresses, pointed at this test's bridge and
database. `<!-- run: background, expect TEXT -->` starts a block (a stream)
in the background; once the page's other examples have run, its output must
contain TEXT.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from realtime_bridge.settings import Settings
from tests.conftest import ROOT, BridgeFactory

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = {"sh", "python", "sql"}
EXAMPLES = RUN | {"ts", "tsx", "js"}
SHOWN = {"text", "json", "console", "nginx"}
PY = Path(sys.executable)
FENCE = re.compile(
    r"^(?:<!-- (?P<note>[^>]*) -->\n)?```(?P<lang>\S*)\n(?P<code>.*?)^```$", re.M | re.S
)
EMBEDDED_DSN = "postgresql://postgres@127.0.0.1:$(cat .realtime-bridge/port)/postgres"


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    note: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line} ({self.lang})"


def blocks(page: Path) -> Iterator[Block]:
    text = page.read_text()
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start("lang")) + 1
        yield Block(page, line, match["lang"], match["code"], (match["note"] or "").strip())


def test_every_setting_is_on_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", page, re.M))
    assert {name.upper() for name in Settings.model_fields} <= documented


def test_every_code_block_is_run_shown_or_says_why_not() -> None:
    for page in PAGES:
        for block in blocks(page):
            assert block.lang in EXAMPLES | SHOWN, f"{block}: give the block a known language"
            if block.lang not in EXAMPLES or block.code.startswith("--8<--"):
                continue
            if block.lang not in RUN:
                assert re.match(r"not run: \S", block.note), f"{block}: run it or say why not"
            elif block.note:
                assert re.match(r"not run: \S|run: background, expect \S", block.note), block


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in RUN and not b.note.startswith("not run")]


def pointed_at(code: str, url: str, dsn: str) -> str:
    return (
        code.replace(EMBEDDED_DSN, dsn)
        .replace("http://127.0.0.1:8000", url)
        .replace("ws://127.0.0.1:8000", url.replace("http://", "ws://"))
    )


PYTHON_RUNNER = """
import ast, asyncio, os, sys
code = compile(sys.stdin.read(), "example", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
names = ("DATABASE_URL", "SERVICE_KEY", "ANON_KEY")
scope = {"__name__": "__example__", **{name: os.environ[name] for name in names}}
result = eval(code, scope)
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


@contextlib.asynccontextmanager
async def started(
    block: Block, code: str, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    if block.lang == "sh":
        argv = ["bash", "-euo", "pipefail", "-c", code]
        stdin = None
    else:
        argv = [str(PY), "-c", PYTHON_RUNNER]
        stdin = asyncio.subprocess.PIPE
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: a stream's children end with it
    )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(code.encode())
        process.stdin.close()
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def keep_writing(url: str, service_key: str) -> None:
    """Open positions for u1 (a trade and its position each) while streams are watched."""
    async with httpx.AsyncClient(base_url=url) as http:
        while True:
            response = await http.post(
                "/api/testing/simulate-signal",
                headers={"Authorization": f"Bearer {service_key}"},
                json={"symbol": "AAPL", "signal_type": "BUY", "entry_price": 190, "user_id": "u1"},
            )
            assert response.status_code == 201, response.text
            await asyncio.sleep(0.5)


async def run_page(page: Path, url: str, dsn: str, env: dict[str, str]) -> int:
    """Run a page's examples in order; returns how many ran."""
    ran = 0
    async with contextlib.AsyncExitStack() as stack:
        background: list[tuple[Block, asyncio.subprocess.Process, str]] = []
        for block in runnable(page):
            code = pointed_at(block.code, url, dsn)
            ran += 1
            if block.lang == "sql":
                conn = await asyncpg.connect(dsn)
                try:
                    async with conn.transaction():
                        await conn.execute(code)
                finally:
                    await conn.close()
                continue
            process = await stack.enter_async_context(started(block, code, env))
            if block.note.startswith("run: background"):
                expected = block.note.split("expect", 1)[1].strip()
                background.append((block, process, expected))
                await asyncio.sleep(1.0)  # connected before the next example writes
                continue
            assert process.stdout is not None
            try:
                async with asyncio.timeout(30):
                    output = (await process.stdout.read()).decode(errors="replace")
                    await process.wait()
            except TimeoutError:
                pytest.fail(f"{block} still running after 30 s:\n{code}")
            assert process.returncode == 0, f"{block} failed:\n{code}\n{output}"
        if background:
            writer = asyncio.create_task(keep_writing(url, env["SERVICE_KEY"]))
            stack.callback(writer.cancel)
        for block, process, expected in background:
            assert process.stdout is not None
            seen = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    while expected.encode() not in seen:
                        chunk = await process.stdout.read(4096)
                        if not chunk:
                            break
                        seen += chunk
            assert expected.encode() in seen, f"{block} never printed {expected}:\n{seen.decode()}"
    return ran


async def test_the_examples_run_against_a_real_bridge(
    start_bridge: BridgeFactory, dsn: str, tmp_path: Path
) -> None:
    secret = secrets.token_urlsafe(32)
    bridge = await start_bridge(enable_testing_api=True, supabase_jwt_secret=secret)
    psql = shutil.which("psql")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if psql is None:  # psql is optional: the examples run the same through a stand-in
        shim = bin_dir / "psql"
        shim.write_text(f"#!{PY}\n" + PSQL_STAND_IN)
        shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SUPABASE_JWT_SECRET": secret,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": dsn,
        "SERVICE_KEY": bridge.service_key,
        "ANON_KEY": bridge.anon_key,
    }
    ran = {}
    for page in PAGES:
        ran[page.name] = await run_page(page, bridge.url, dsn, env)
    assert ran["README.md"] >= 2
    assert ran["getting-started.md"] >= 4
    assert sum(ran.values()) >= 11, ran


PSQL_STAND_IN = """
# A stand-in for `psql DSN -c SQL [-c SQL ...]`, for machines without psql.
import asyncio, sys
import asyncpg

args = sys.argv[1:]
dsn = next(a for a in args if a.startswith("postgres"))
statements = [args[i + 1] for i, a in enumerate(args) if a == "-c"]

async def main():
    conn = await asyncpg.connect(dsn)
    for sql in statements:
        print(await conn.execute(sql))
    await conn.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_link_only_into_the_docs_or_the_repository(page: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
