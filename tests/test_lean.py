"""`protocols/lean.py`: Event and Queue behaviour with nothing held while idle."""

from __future__ import annotations

import asyncio

import pytest

from realtime_bridge.protocols.lean import Flag, Inbox


async def test_a_flag_wakes_every_waiter_and_holds_nothing_after() -> None:
    flag = Flag()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert flag._waiters is None
    assert await asyncio.wait_for(flag.wait(), 1) is True  # already set: no wait
    flag.clear()
    assert not flag.is_set()


async def test_a_cancelled_wait_leaves_no_waiter_behind() -> None:
    flag = Flag()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)
    assert flag._waiters is None
    other = asyncio.create_task(flag.wait())
    await asyncio.sleep(0)
    flag.set()
    assert await other is True


async def test_an_inbox_is_fifo_waits_when_empty_and_frees_its_storage() -> None:
    inbox: Inbox[str] = Inbox()
    assert inbox.empty()
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not getter.done()
    inbox.put_nowait("0001")
    inbox.put_nowait("1")
    assert await getter == "0001"
    assert inbox.qsize() == 1
    assert await inbox.get() == "1"
    assert inbox.empty()
    assert inbox._items is None
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


async def test_a_cancelled_get_loses_nothing() -> None:
    inbox: Inbox[int] = Inbox()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.01)
    assert inbox._waiter is None
    inbox.put_nowait(7)
    assert await asyncio.wait_for(inbox.get(), 1) == 7
