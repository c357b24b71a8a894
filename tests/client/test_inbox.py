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
