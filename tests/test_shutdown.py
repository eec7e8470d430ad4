"""`shutdown.py`: held connections are told of a shutdown by callback, once."""

from __future__ import annotations

import asyncio

from realtime_bridge.shutdown import Shutdown


async def test_a_held_connection_is_called_once_and_a_left_one_never() -> None:
    shutdown = Shutdown()
    told: list[str] = []
    with shutdown.hold(lambda: told.append("left")):
        pass
    with shutdown.hold(lambda: told.append("held")):
        assert shutdown.active == 1
        shutdown.request()
        shutdown.request()  # a second SIGTERM: nobody is told twice
        assert told == ["held"]
    assert shutdown.active == 0
    assert await shutdown.drained(0.1)


async def test_a_connection_held_after_the_request_is_told_soon() -> None:
    shutdown = Shutdown()
    shutdown.request()
    told: list[str] = []
    with shutdown.hold(lambda: told.append("late")):
        assert told == []  # not from inside `hold`: the caller is not set up yet
        await asyncio.sleep(0)
        assert told == ["late"]
