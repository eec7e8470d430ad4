"""Shared fixtures: a real Postgres (embedded unless DATABASE_URL is set) and running bridges."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from realtime_bridge.plugins import PluginRegistry, discover
from realtime_bridge.settings import Settings
from realtime_bridge.testing import RunningBridge, TestDatabase, real_redis, run_bridge

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
async def databases() -> AsyncIterator[TestDatabase]:
    # The suite's plugins and fixtures work on the demo trading tables: opt in.
    async with TestDatabase.start(os.environ.get("DATABASE_URL") or None, demo=True) as found:
        yield found


@pytest.fixture
async def dsn(databases: TestDatabase) -> AsyncIterator[str]:
    """A fresh, migrated database for this test (dropped after it, with its slot)."""
    created = await databases.create()
    yield created
    await databases.drop(created)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    return discover([ROOT / "plugins"], use_entry_points=False)


def make_settings(dsn: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "plugin_paths": [ROOT / "plugins"],
        "prune_interval": 3600,
        # One process runs hundreds of bridges: freezing the heap and changing the
        # collector's thresholds at each start is for a service (tests/test_pauses.py).
        "gc_tuning": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


BridgeFactory = Callable[..., Awaitable[RunningBridge]]

#: Run a module's tests on both capture paths: `pytestmark = BOTH_CAPTURES`.
BOTH_CAPTURES = pytest.mark.parametrize("capture", ["wal", "triggers"], indirect=True)


@pytest.fixture
def capture(request: pytest.FixtureRequest) -> str:
    """The CAPTURE setting of this test's bridges (auto unless parametrised)."""
    return str(getattr(request, "param", "auto"))


@pytest.fixture
async def start_bridge(dsn: str, capture: str) -> AsyncIterator[BridgeFactory]:
    """Factory: `await start_bridge(**settings)` runs a bridge on this test's database."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> RunningBridge:
            overrides.setdefault("capture", capture)
            database = overrides.pop("database_url", dsn)
            return await stack.enter_async_context(run_bridge(make_settings(database, **overrides)))

        yield start


@pytest.fixture
async def bridge(start_bridge: BridgeFactory) -> RunningBridge:
    return await start_bridge()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL, else a throwaway `redis-server` from PATH (never skipped)."""
    with real_redis(os.environ.get("REDIS_URL") or None) as url:
        yield url
