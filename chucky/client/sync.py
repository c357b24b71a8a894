"""The blocking client: :class:`SyncChucky` and :class:`SyncSession`.

They are the sync face of :class:`~chucky.client.chucky.Chucky` and
:class:`~chucky.client.session.Session` (as ``Anthropic`` is of ``AsyncAnthropic``): the same
methods, run by the async client itself on a private event loop in a thread of the client's
own (:class:`~chucky.client.portal.LoopPortal`). So they work in a plain script, in a thread
whose event loop is running (Jupyter, IPython, a FastAPI handler), and from many threads at
once; streams are iterators; errors are the same typed :mod:`chucky.errors`.

The methods of the existing API are spelled out here, typed; any other public method of the
async client (those added after this module) is reached through ``__getattr__`` and made sync
generically: a coroutine method blocks and returns its value, an async iterator becomes an
iterator, an async context manager a context manager, a returned ``Session`` a
:class:`SyncSession`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, Unpack

from ..messages import SDKMessage
from .chucky import Chucky
from .conversation import ConverseChunk, ConverseInput, OnToolCall
from .hooks import CanUseTool, HookMatcher
from .portal import LoopPortal, SyncIterator, SyncProxy, delegate, register_wrapper
from .reconnect import DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, OnReconnect, TokenProvider
from .results import PromptResult, StreamEvent
from .session import Content, Session, SessionState
from .settings import DEFAULT_MODEL, BaseSessionArgs, SessionArgs

__all__ = ["SyncChucky", "SyncSession"]


class _SyncFace:
    """What both sync faces share: the async object's other public attributes made blocking
    generically (:func:`~chucky.client.portal.delegate`), and ``with`` closing it."""

    _portal: LoopPortal

    def _target(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        # The async object's other methods (chat, converse, query, ...), made sync generically.
        if name.startswith("_"):
            raise AttributeError(name)
        return delegate(getattr(self._target(), name), self._portal)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SyncSession(_SyncFace):
    """The blocking face of a :class:`~chucky.client.session.Session`: one conversation over
    one WebSocket. Get it from :meth:`SyncChucky.create_session` or
    :meth:`SyncChucky.resume_session`; ``with session:`` closes it on exit.
    """

    def __init__(self, session: Session, portal: LoopPortal) -> None:
        self._session = session
        self._portal = portal

    @property
    def session(self) -> Session:
        """The async session underneath (use it only on the client's own loop)."""
        return self._session

    @property
    def state(self) -> SessionState:
        """The session's state (``NEW``, ``CONNECTING``, ``OPEN``, ``RECONNECTING``,
        ``CLOSED``)."""
        return self._session.state

    @property
    def session_id(self) -> str | None:
        """The server's id for this session; known after the first message of a turn."""
        return self._session.session_id

    @property
    def options(self) -> Any:
        """The :class:`~chucky.options.SessionOptions` sent in ``init``."""
        return self._session.options

    @property
    def info(self) -> dict[str, Any]:
        """The server's ``session_info`` (``sessionId``, ``model``, ``tools``, ...), if sent."""
        return self._session.info

    def send(self, message: Content, *, turn_timeout: float | None = None) -> None:
        """Start a turn with ``message``; see :meth:`Session.send
        <chucky.client.session.Session.send>` (same arguments and errors)."""
        self._portal.call(self._session.send, message, turn_timeout=turn_timeout)

    def stream(self) -> SyncIterator[SDKMessage]:
        """The messages of the current turn, up to and including its ``result``; see
        :meth:`Session.stream <chucky.client.session.Session.stream>`. Stopping early drops
        nothing: the rest waits for the next call."""
        messages: AsyncIterator[SDKMessage] = self._portal.call_any(self._session.stream)
        return SyncIterator(messages, self._portal)

    def receive(self) -> SyncIterator[SDKMessage]:
        """Alias of :meth:`stream` (the official V2 API name)."""
        return self.stream()

    def interrupt(self) -> None:
        """Stop the running turn and cancel its tool handlers; see :meth:`Session.interrupt
        <chucky.client.session.Session.interrupt>`."""
        self._portal.call(self._session.interrupt)

    def close(self) -> None:
        """Close the connection and stop its tasks. Idempotent; does nothing once the client
        is closed (closing the client closed the session)."""
        if not self._portal.closed:
            self._portal.call(self._session.close)

    def _target(self) -> Session:
        return self._session

    def __repr__(self) -> str:
        return f"Sync{self._session!r}"


register_wrapper(Session, SyncSession)


class SyncChucky(_SyncFace):
    """A blocking client of a Chucky server: :class:`~chucky.client.chucky.Chucky`'s API
    without ``await``.

    It takes :class:`~chucky.client.chucky.Chucky`'s arguments (see there). The client runs
    on an event loop in a thread of its own, started here and stopped by :meth:`close` (or
    the end of a ``with`` block), which closes every session and joins every thread the client
    started. One client may be shared by any number of threads. Tools may be sync functions
    (each call runs in a worker thread of the client) or async ones (run on its loop).
    ``token_provider`` and ``on_reconnect`` are called on the client's loop thread: a sync
    one should return quickly (an async one may wait).

    Raises:
        ValidationError: a missing token or invalid options (no thread is started then).
    """

    def __init__(
        self,
        token: str | None = None,
        url: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        system_prompt: str | None = None,
        max_turns: int | None = None,
        timeout: float | None = 30.0,
        keepalive_interval: float | None = 60.0,
        tool_timeout: float | None = 60.0,
        idle_timeout: float | None = None,
        turn_timeout: float | None = None,
        max_queue: int = 1024,
        can_use_tool: CanUseTool | None = None,
        hooks: Mapping[str, Sequence[HookMatcher]] | None = None,
        reconnect: bool = True,
        max_reconnect_attempts: int = DEFAULT_MAX_ATTEMPTS,
        reconnect_backoff: float = DEFAULT_BACKOFF,
        token_provider: TokenProvider | None = None,
        on_reconnect: OnReconnect | None = None,
        debug: bool = False,
        **options: Unpack[BaseSessionArgs],
    ) -> None:
        self._client = Chucky(
            token,
            url,
            model=model,
            system_prompt=system_prompt,
            max_turns=max_turns,
            timeout=timeout,
            keepalive_interval=keepalive_interval,
            tool_timeout=tool_timeout,
            idle_timeout=idle_timeout,
            turn_timeout=turn_timeout,
            max_queue=max_queue,
            can_use_tool=can_use_tool,
            hooks=hooks,
            reconnect=reconnect,
            max_reconnect_attempts=max_reconnect_attempts,
            reconnect_backoff=reconnect_backoff,
            token_provider=token_provider,
            on_reconnect=on_reconnect,
            debug=debug,
            **options,
        )
        self._portal = LoopPortal()

    @property
    def client(self) -> Chucky:
        """The async client underneath (use it only on this client's own loop)."""
        return self._client

    @property
    def url(self) -> str:
        """The server's WebSocket URL."""
        return self._client.url

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._portal.closed

    def create_session(self, **options: Unpack[SessionArgs]) -> SyncSession:
        """A new session; returns at once, the socket opens on the first ``send()``.

        Raises:
            ValidationError: invalid options, or two tools with the same name.
            InvalidStateError: the client is closed.
        """
        session: Session = self._portal.call_any(self._client.create_session, **options)
        return SyncSession(session, self._portal)

    def resume_session(self, session_id: str, /, **options: Unpack[SessionArgs]) -> SyncSession:
        """A session that continues ``session_id`` (same project and user only).

        Raises:
            ValidationError: invalid options.
            InvalidStateError: the client is closed.
        """
        session: Session = self._portal.call_any(self._client.resume_session, session_id, **options)
        return SyncSession(session, self._portal)

    def prompt(
        self,
        message: Content,
        *,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> PromptResult:
        """Run one turn in a fresh session and return its result; see :meth:`Chucky.prompt
        <chucky.client.chucky.Chucky.prompt>` (same arguments, result and errors).

        Raises:
            ChuckyError: as :meth:`Chucky.prompt <chucky.client.chucky.Chucky.prompt>`.
            InvalidStateError: the client is closed.
        """
        return self._portal.call(self._client.prompt, message, turn_timeout=turn_timeout, **options)

    def stream(
        self,
        message: Content,
        *,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> SyncIterator[StreamEvent]:
        """Run one turn in a fresh session, yielding :class:`StreamEvent` as it goes; see
        :meth:`Chucky.stream <chucky.client.chucky.Chucky.stream>`.

        Break out early and the session closes, as with the async client; ``with
        client.stream(...) as events:`` makes that immediate.

        Raises:
            ChuckyError: as :meth:`Chucky.stream <chucky.client.chucky.Chucky.stream>`.
            InvalidStateError: the client is closed.
        """
        events = self._client.stream(message, turn_timeout=turn_timeout, **options)
        return SyncIterator(events, self._portal)

    def chat(
        self,
        messages: ConverseInput,
        *,
        on_tool_call: OnToolCall | None = None,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> str:
        """The reply's final text; see :meth:`Chucky.chat <chucky.client.chucky.Chucky.chat>`
        (same arguments and errors)."""
        reply: str = self._portal.call(
            self._client.chat,
            messages,
            on_tool_call=on_tool_call,
            turn_timeout=turn_timeout,
            **options,
        )
        return reply

    def stream_text(
        self,
        messages: ConverseInput,
        *,
        on_tool_call: OnToolCall | None = None,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> SyncIterator[str]:
        """The reply's text in fragments; see :meth:`Chucky.stream_text
        <chucky.client.chucky.Chucky.stream_text>`."""
        fragments = self._client.stream_text(
            messages, on_tool_call=on_tool_call, turn_timeout=turn_timeout, **options
        )
        return SyncIterator(fragments, self._portal)

    def converse(
        self,
        messages: ConverseInput,
        *,
        on_tool_call: OnToolCall | None = None,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> SyncIterator[ConverseChunk]:
        """Typed chunks of one turn; see :meth:`Chucky.converse
        <chucky.client.chucky.Chucky.converse>`."""
        chunks = self._client.converse(
            messages, on_tool_call=on_tool_call, turn_timeout=turn_timeout, **options
        )
        return SyncIterator(chunks, self._portal)

    def stream_events(
        self,
        message: Content,
        *,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> SyncProxy:
        """One turn as typed events, in a ``with`` block: ``with client.stream_events("...")
        as stream:``; iterate it, or read ``stream.text_stream``, ``stream.until_done()``,
        ``stream.get_final_result()`` (all blocking). See :meth:`Chucky.stream_events
        <chucky.client.chucky.Chucky.stream_events>`; leaving the block early interrupts the
        turn."""
        stream = self._client.stream_events(message, turn_timeout=turn_timeout, **options)
        return SyncProxy(stream, self._portal)

    def clear_session(self, session_id: str) -> bool:
        """Delete a session and its messages; see :meth:`Chucky.clear_session
        <chucky.client.chucky.Chucky.clear_session>`."""
        deleted: bool = self._portal.call(self._client.clear_session, session_id)
        return deleted

    def close(self) -> None:
        """Close every session, then stop the client's loop and join its threads (a sync tool
        handler still running is waited for). Idempotent; calls after it raise
        :class:`~chucky.errors.InvalidStateError`."""
        self._portal.close(self._client.close)

    def _target(self) -> Chucky:
        return self._client

    def __repr__(self) -> str:
        return f"SyncChucky(url={self.url!r})"
