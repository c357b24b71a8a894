"""The client's bounded inbox: order, backpressure, failure."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.client.inbox import Inbox


async def test_fifo_and_backpressure() -> None:
    inbox: Inbox[int] = Inbox(2)
    await inbox.put(1)
    await inbox.put(2)
    assert inbox.full
    third = asyncio.create_task(inbox.put(3))
    await asyncio.sleep(0)
    assert not third.done()
    assert inbox.pending_put
    assert await inbox.get() == 1
    await third
    assert not inbox.pending_put
    assert [await inbox.get(), await inbox.get()] == [2, 3]


async def test_fail_wakes_a_waiting_consumer_after_draining() -> None:
    inbox: Inbox[str] = Inbox(4)
    await inbox.put("a")
    inbox.fail(ConnectionError("gone"))
    inbox.fail(ValueError("second error is ignored"))
    assert await inbox.get() == "a"
    with pytest.raises(ConnectionError, match="gone"):
        await inbox.get()
    getter = asyncio.create_task(Inbox[str](1).get())
    await asyncio.sleep(0)
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter


async def test_fail_releases_a_blocked_producer_and_drops_its_item() -> None:
    inbox: Inbox[int] = Inbox(1)
    await inbox.put(1)
    producer = asyncio.create_task(inbox.put(2))
    await asyncio.sleep(0)
    inbox.fail(RuntimeError("closed"))
    await producer
    assert await inbox.get() == 1
    with pytest.raises(RuntimeError):
        await inbox.get()


async def test_single_consumer_only() -> None:
    inbox: Inbox[int] = Inbox(1)
    first = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert inbox.waiting
    with pytest.raises(RuntimeError, match="another consumer"):
        await inbox.get()
    await inbox.put(7)
    assert await first == 7


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        Inbox[int](0)


@given(st.lists(st.integers(), max_size=50), st.integers(min_value=1, max_value=8))
def test_everything_put_comes_out_in_order(items: list[int], size: int) -> None:
    async def scenario() -> list[int]:
        inbox: Inbox[int] = Inbox(size)

        async def produce() -> None:
            for item in items:
                await inbox.put(item)
            inbox.fail(EOFError())

        task = asyncio.create_task(produce())
        out = []
        while True:
            try:
                out.append(await inbox.get())
            except EOFError:
                break
            assert len(inbox) <= size
        await task
        return out

    assert asyncio.run(scenario()) == items


async def test_try_put_and_try_get_never_wait() -> None:
    inbox: Inbox[int] = Inbox(1)
    assert inbox.try_get() == (False, None)
    assert inbox.try_put(1) is True
    assert inbox.try_put(2) is False  # full: the caller must await put()
    blocked = asyncio.create_task(inbox.put(2))
    await asyncio.sleep(0)
    assert inbox.try_get() == (True, 1)  # and it wakes the blocked producer
    await blocked
    assert inbox.try_get() == (True, 2)


async def test_try_put_wakes_a_waiting_consumer_and_drops_after_fail() -> None:
    inbox: Inbox[str] = Inbox(2)
    getter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert inbox.try_put("x") is True
    assert await getter == "x"
    inbox.fail(EOFError())
    assert inbox.try_put("late") is True  # accepted and dropped, as put() does
    with pytest.raises(EOFError):
        await inbox.get()
