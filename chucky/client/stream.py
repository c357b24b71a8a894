"""A turn's stream you can hold: :class:`TurnStream` (``async with client.stream_events(...)``).

It is the asyncio shell of :class:`~chucky.client.events.TurnAccumulator`: it reads the turn's
messages from its session, feeds them to the accumulator and hands out the events. Every view
of it (``async for event in stream``, :attr:`TurnStream.text_stream`, :meth:`until_done`,
:meth:`get_final_result`) reads the same single stream of messages, so they can be mixed: what
one consumed, the others do not see again, and the accumulator saw it all.

Leaving the ``async with`` block before the turn's ``result`` (``break``, an exception, a
cancellation) interrupts the turn and waits, at most :data:`SETTLE_TIMEOUT` seconds, for the
result the interrupt produces -- the server has then settled the turn's cost and saved it --
before closing the session's socket. No task or socket outlives the block.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, Final, cast

from ..errors import ChuckyError, InvalidStateError
from ..messages import SDKMessage
from .events import TextDelta, TurnAccumulator, TurnEvent
from .results import PromptResult
from .session import Content, Session

__all__ = ["SETTLE_TIMEOUT", "TurnStream"]

SETTLE_TIMEOUT: Final = 10.0
"""Seconds a stream left early waits for its interrupted turn's ``result`` before closing."""


class TurnStream:
    """One turn, as typed events; an async context manager (see the module docstring).

    Made by :meth:`Chucky.stream_events <chucky.client.chucky.Chucky.stream_events>`; the turn
    is sent when the ``async with`` block is entered.

    Attributes:
        accumulator: The turn's :class:`~chucky.client.events.TurnAccumulator` (its text,
            tool calls and result so far).
    """

    def __init__(
        self,
        session: Session,
        message: Content,
        *,
        output_format: Any = None,
        turn_timeout: float | None = None,
    ) -> None:
        self.session = session
        self.accumulator = TurnAccumulator(output_format=output_format)
        self._message = message
        self._turn_timeout = turn_timeout
        self._events: AsyncGenerator[TurnEvent, None] | None = None
        self._failed = False  # reading raised: the turn is over or abandoned

    async def __aenter__(self) -> TurnStream:
        try:
            await self.session.send(self._message, turn_timeout=self._turn_timeout)
        except BaseException:
            await self.session.close()
            raise
        self._events = self._read()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # In its own task, awaited through a shield: a cancelled block still settles the turn.
        cleanup = asyncio.ensure_future(self._close())
        try:
            await asyncio.shield(cleanup)
        except asyncio.CancelledError:
            await cleanup  # bounded by SETTLE_TIMEOUT
            raise

    async def _close(self) -> None:
        events, self._events = self._events, None
        try:
            if events is not None and not (self.accumulator.done or self._failed):
                with contextlib.suppress(ChuckyError, builtins.TimeoutError):
                    await self.session.interrupt()
                    async with asyncio.timeout(SETTLE_TIMEOUT):
                        async for _ in events:
                            pass
            if events is not None:
                await events.aclose()
        finally:
            await self.session.close()

    async def _read(self) -> AsyncGenerator[TurnEvent, None]:
        try:
            # Session.stream() is an async generator: closed with us, not left to the GC.
            stream = cast("AsyncGenerator[SDKMessage, None]", self.session.stream())
            async with contextlib.aclosing(stream) as messages:
                async for message in messages:
                    for event in self.accumulator.feed(message):
                        yield event
        except BaseException:
            self._failed = True
            raise

    def _iterator(self) -> AsyncGenerator[TurnEvent, None]:
        if self._events is None:
            raise InvalidStateError("use the stream inside its `async with` block")
        return self._events

    def __aiter__(self) -> TurnStream:
        return self

    async def __anext__(self) -> TurnEvent:
        """The turn's next event (``StopAsyncIteration`` after the result).

        Raises:
            ChuckyError: as :meth:`until_done`.
        """
        return await anext(self._iterator())

    @property
    def text_stream(self) -> AsyncIterator[str]:
        """The assistant's text, fragment by fragment (the other events are skipped)."""
        return _TextStream(self)

    async def until_done(self) -> None:
        """Read the turn to its end.

        Raises:
            ChuckyError: the typed error that ended the turn (``error`` frame, timeout,
                connection lost, :class:`~chucky.errors.StructuredOutputTruncatedError` ...).
        """
        async for _ in self:
            pass

    async def get_final_result(self) -> PromptResult:
        """Read the turn to its end and return its result.

        Returns:
            The turn's :class:`~chucky.client.results.PromptResult` (``structured_output``
            validated as the ``output_format`` model, if one was given).

        Raises:
            ChuckyError: as :meth:`until_done`.
        """
        if self.accumulator.result is None:
            await self.until_done()
        if self.accumulator.result is None:
            raise self.accumulator.error or InvalidStateError("the turn ended without a result")
        return self.accumulator.result

    @property
    def current_text(self) -> str:
        """The assistant text received so far."""
        return self.accumulator.text

    def __repr__(self) -> str:
        return f"TurnStream(session={self.session!r}, done={self.accumulator.done})"


class _TextStream:
    """:attr:`TurnStream.text_stream`: not a generator, so breaking out of it leaves nothing
    suspended behind."""

    __slots__ = ("_stream",)

    def __init__(self, stream: TurnStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _TextStream:
        return self

    async def __anext__(self) -> str:
        while True:
            event = await anext(self._stream)
            if isinstance(event, TextDelta):
                return event.text
