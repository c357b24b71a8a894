"""A bounded single-producer, single-consumer channel that can fail.

Why not :class:`asyncio.Queue`: the reader must be able to *fail* the channel (connection lost,
keepalive timeout) so that a consumer blocked in :meth:`Inbox.get` raises at once, even when the
queue is full or empty, and a consumer that drains the remaining messages gets every one of them
before the error. It is also about twice as fast per item, which matters when a turn streams
thousands of deltas.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """Bounded FIFO. ``put`` waits while full (backpressure); ``get`` waits while empty."""

    __slots__ = ("_error", "_getter", "_items", "_maxsize", "_putter")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self._items: deque[T] = deque()
        self._maxsize = maxsize
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self._maxsize

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def waiting(self) -> bool:
        """Whether a consumer is blocked in :meth:`get` right now."""
        return self._getter is not None

    @property
    def pending_put(self) -> bool:
        """Whether the producer is blocked in :meth:`put` with an item (the inbox is full)."""
        return self._putter is not None

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def try_put(self, item: T) -> bool:
        """Append ``item`` if there is room, without waiting; ``False`` when full.

        The reader's fast path: no coroutine per streamed frame when the consumer keeps up.
        """
        if self._error is not None:
            return True  # dropped: nothing will read it after fail()
        if len(self._items) >= self._maxsize:
            return False
        self._items.append(item)
        self._wake(self._getter)
        return True

    def try_get(self) -> tuple[bool, T | None]:
        """``(True, item)`` if one is ready, else ``(False, None)``; never waits or raises."""
        if not self._items:
            return False, None
        return True, self._pop()

    def _pop(self) -> T:
        item = self._items.popleft()
        self._wake(self._putter)
        return item

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the inbox is full. After :meth:`fail`, drops it."""
        while len(self._items) >= self._maxsize and self._error is None:
            self._putter = asyncio.get_running_loop().create_future()
            try:
                await self._putter
            finally:
                self._putter = None
        self.try_put(item)

    async def get(self) -> T:
        """The oldest item; waits while empty.

        Raises:
            BaseException: the error given to :meth:`fail`, once the inbox is drained.
            RuntimeError: another consumer is already waiting (single consumer only).
        """
        if self._getter is not None:
            raise RuntimeError("another consumer is already waiting on this inbox")
        while not self._items:
            if self._error is not None:
                raise self._error
            self._getter = asyncio.get_running_loop().create_future()
            try:
                await self._getter
            finally:
                self._getter = None
        return self._pop()

    def fail(self, error: BaseException) -> None:
        """No more items will come: ``get`` raises ``error`` once the queue is drained.

        The first error wins; later calls are ignored.
        """
        if self._error is None:
            self._error = error
        self._wake(self._getter)
        self._wake(self._putter)
