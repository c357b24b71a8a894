"""A private event loop in its own thread, and the generic sync face over async objects.

Theory of operation: :class:`LoopPortal` owns one event loop running in one daemon thread.
:meth:`LoopPortal.call` runs a function *in that thread* (so every asyncio object of the async
client is created and used on its own loop), awaits its result there when it is awaitable, and
hands the value back to the calling thread, which blocks meanwhile. Any thread may call, many
at once: the calls interleave on the loop as concurrent tasks. The calling thread's own event
loop, if it runs one (Jupyter, a FastAPI handler), is never touched, so there is no
"``asyncio.run()`` cannot be called from a running event loop" and no deadlock -- except for a
call made *from the portal's own thread* (an async tool handler calling the sync client),
which could never finish and raises :class:`~chucky.errors.InvalidStateError` instead.

:func:`to_sync` turns what an async method returned into its sync counterpart: an async
iterator becomes an :class:`SyncIterator`, an async context manager a context manager
(:class:`SyncProxy`), an object with coroutine methods a :class:`SyncProxy` whose methods block.
The sync classes of :mod:`chucky.client.sync` register their own wrappers for the client's own
types (``Session`` -> ``SyncSession``) with :func:`register_wrapper`.

Closing (:meth:`LoopPortal.close`) cancels what still runs on the loop, finalises its async
generators, waits for the worker threads of sync tool handlers, stops the loop and joins its
thread: nothing of the portal outlives it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

from ..errors import InvalidStateError

__all__ = ["LoopPortal", "SyncIterator", "SyncProxy", "register_wrapper", "to_sync"]

T = TypeVar("T")

_WRAPPERS: list[tuple[type[Any], Callable[[Any, LoopPortal], Any]]] = []


def register_wrapper(kind: type[T], wrapper: Callable[[T, LoopPortal], Any]) -> None:
    """Make :func:`to_sync` wrap instances of ``kind`` with ``wrapper(value, portal)``."""
    _WRAPPERS.append((kind, wrapper))


class LoopPortal:
    """An event loop in a private daemon thread, which other threads call into.

    Args:
        name: The thread's name (and its tool workers' prefix).
    """

    def __init__(self, name: str = "chucky-sync") -> None:
        self._loop = asyncio.new_event_loop()
        # Sync tool handlers run in this pool (asyncio.to_thread uses the default executor):
        # a pool of our own is one close() can wait for.
        self._executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix=f"{name}-tool")
        self._loop.set_default_executor(self._executor)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def in_portal_thread(self) -> bool:
        """Whether the calling thread is the portal's own."""
        return threading.current_thread() is self._thread

    def call(self, function: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run the coroutine function ``function(*args, **kwargs)`` on the loop and return its
        value in the calling thread (see :meth:`call_any`)."""
        value: T = self.call_any(function, *args, **kwargs)
        return value

    def call_any(self, function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function(*args, **kwargs)`` on the loop (awaiting it if it returns an
        awaitable) and return its value in the calling thread.

        Raises:
            InvalidStateError: the portal is closed (or was closed during the call), or the
                call comes from the portal's own thread (it would deadlock).
            Exception: whatever ``function`` raised, as it was raised.
        """
        if self.in_portal_thread():
            raise InvalidStateError(
                "a sync chucky client cannot be called from its own event loop (an async tool "
                "handler): use the async client there"
            )
        if self._closed:
            raise InvalidStateError("the client is closed")

        async def invoke() -> Any:
            value = function(*args, **kwargs)
            if inspect.isawaitable(value):
                return await value
            return value

        try:
            future = asyncio.run_coroutine_threadsafe(invoke(), self._loop)
        except RuntimeError as exc:  # the loop stopped between the check and the call
            raise InvalidStateError("the client is closed") from exc
        try:
            return future.result()
        except concurrent.futures.CancelledError as exc:
            if self._closed:
                raise InvalidStateError("the client was closed during the call") from exc
            raise
        except BaseException:
            # Ctrl-C (or any exception in the waiting thread): do not leave the work running.
            future.cancel()
            raise

    def close(self, final: Callable[[], Awaitable[None]] | None = None) -> None:
        """Run ``final()`` on the loop, then stop it and join its thread. Idempotent.

        Waits for sync tool handlers still running in worker threads (they cannot be stopped).
        """
        with self._close_lock:
            if self._closed:
                return
            if self.in_portal_thread():
                raise InvalidStateError("a sync chucky client cannot be closed from its own loop")
            try:
                if final is not None:
                    with contextlib.suppress(Exception):
                        self.call(final)
            finally:
                self._closed = True
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join()
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._loop.close()

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._loop.shutdown_asyncgens()


def to_sync(value: Any, portal: LoopPortal) -> Any:
    """The sync face of ``value``, an async method's return value (see the module docstring);
    plain values are returned as they are."""
    for kind, wrapper in _WRAPPERS:
        if isinstance(value, kind):
            return wrapper(value, portal)
    if isinstance(value, AsyncIterator) and not hasattr(value, "__aenter__"):
        return SyncIterator(value, portal)
    if hasattr(value, "__aenter__") or _has_coroutine_methods(value):
        return SyncProxy(value, portal)
    return value


_ASYNC_TYPES: dict[type[Any], bool] = {}


def _has_coroutine_methods(value: Any) -> bool:
    kind = type(value)
    known = _ASYNC_TYPES.get(kind)
    if known is None:
        plain = issubclass(kind, type | str | bytes | int | float | dict | list | tuple)
        known = not plain and any(
            inspect.iscoroutinefunction(getattr(kind, name, None))
            for name in dir(kind)
            if not name.startswith("_")
        )
        _ASYNC_TYPES[kind] = known
    return known


class SyncIterator(Iterator[T]):
    """An async iterator read from another thread: each ``next()`` runs ``__anext__`` on the
    portal's loop.

    Breaking out of a ``for`` loop behaves as breaking out of the ``async for`` does: the
    dropped async generator is closed on its loop by asyncio's own finalizer hook.
    :meth:`close` (or leaving a ``with`` block) closes it at once, as
    :func:`contextlib.aclosing` does for the async client."""

    def __init__(self, iterator: AsyncIterator[T], portal: LoopPortal) -> None:
        self._iterator = iterator
        self._portal = portal
        self._done = False

    def __iter__(self) -> SyncIterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        try:
            item: T = self._portal.call(self._iterator.__anext__)
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self._done = True
            raise
        return to_sync(item, self._portal)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Close the underlying async iterator (``aclose()``) on the loop. Idempotent."""
        iterator, self._done = self._iterator, True
        aclose = getattr(iterator, "aclose", None)
        if aclose is None or self._portal.closed or self._portal.in_portal_thread():
            return
        with contextlib.suppress(InvalidStateError):
            self._portal.call(aclose)

    def __enter__(self) -> SyncIterator[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncProxy:
    """The sync face of any async object: its coroutine methods block and return sync faces,
    its async iterators iterate, its async context manager is a context manager; other
    attributes are read through. What the async client's newer methods return (a stream
    object, a conversation) gets a sync face this way without code of its own."""

    def __init__(self, target: Any, portal: LoopPortal) -> None:
        self._target = target
        self._portal = portal

    def __getattr__(self, name: str) -> Any:
        return delegate(getattr(self._target, name), self._portal)

    def __iter__(self) -> Iterator[Any]:
        if not hasattr(self._target, "__aiter__"):
            raise TypeError(f"{type(self._target).__name__} is not iterable")
        return SyncIterator(self._portal.call_any(self._target.__aiter__), self._portal)

    def __enter__(self) -> Any:
        entered = self._portal.call(self._target.__aenter__)
        return self if entered is self._target else to_sync(entered, self._portal)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self._portal.call(  # type: ignore[no-any-return]
            self._target.__aexit__, exc_type, exc, tb
        )

    def __repr__(self) -> str:
        return f"<sync {self._target!r}>"


def delegate(attribute: Any, portal: LoopPortal) -> Any:
    """The sync face of an attribute read from an async object: a method becomes a blocking
    function whose call runs on the loop and whose value is made sync; a value is made sync."""
    if not callable(attribute) or isinstance(attribute, type):
        return to_sync(attribute, portal)

    def call(*args: Any, **kwargs: Any) -> Any:
        return to_sync(portal.call_any(attribute, *args, **kwargs), portal)

    call.__name__ = getattr(attribute, "__name__", "call")
    call.__doc__ = getattr(attribute, "__doc__", None)
    return call
