"""The client: :class:`Chucky`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, Unpack

from .._redact import redacting_logger
from ..errors import ConnectionError, ValidationError
from ..messages import (
    AssistantMessage,
    ErrorMessage,
    ResultMessage,
    SDKMessage,
    StreamEventMessage,
)
from . import conversation
from .clearing import clear_session_request
from .connection import ConnectionSettings
from .conversation import ConverseChunk, ConverseInput, OnToolCall
from .hooks import CanUseTool, HookMatcher, ToolHooks
from .reconnect import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS,
    OnReconnect,
    ReconnectPolicy,
    TokenProvider,
)
from .results import PromptResult, StreamEvent
from .results import structured_result as _prompt_result
from .session import Content, Session, check_turn_timeout
from .settings import (
    DEFAULT_MODEL,
    DEFAULT_URL,
    BaseSessionArgs,
    SessionArgs,
    check_args,
    resolve,
)
from .stream import TurnStream

__all__ = ["Chucky"]

logger = redacting_logger("chucky.client")


def _bare(name: str) -> str:
    # The model sees ``mcp__<server>__<tool>``; users declared ``<tool>``.
    if name.startswith("mcp__"):
        return name.rsplit("__", 1)[-1]
    return name


class Chucky:
    """A client of a Chucky server (the hosted service, or ``chucky serve``).

    Args:
        token: The end-user token (a JWT from :func:`chucky.create_token`). The official
            client's ``Chucky(url, token)`` order works too: a ``ws://``/``wss://`` string in
            the first position is taken as the URL.
        url: The server's WebSocket URL.
        model: The default model name.
        system_prompt: The default system prompt.
        max_turns: The default limit on model calls per turn.
        **options: Default session options (every option of docs/protocol.md section 5 in
            snake_case: ``include_partial_messages``, ``tools``, ``mcp_servers``,
            ``max_budget_usd`` ...). Per-call values of these and of the three above override
            them.
        timeout: Seconds allowed to connect and complete the handshake.
        keepalive_interval: Seconds between keepalive pings; a server that answers nothing for
            about twice this long is declared gone (``None`` disables keepalive).
        tool_timeout: Seconds a client tool handler may run before it is answered with an error.
        idle_timeout: If set, a turn with no message from the server for this many seconds
            raises :class:`~chucky.errors.TimeoutError`. By default a turn may be silent
            for as long as the connection is alive.
        turn_timeout: If set, the seconds a turn may take, from ``send()`` (or ``prompt()``,
            ``stream()``) to its ``result``; past it the turn is interrupted server-side and
            :class:`~chucky.errors.TimeoutError` is raised (``details["reason"]``
            ``turn_timeout``). Per-call ``turn_timeout`` arguments override it. By default a
            turn has no deadline (the server's own model deadlines still end it).
        max_queue: Messages buffered per session before reading from the socket pauses.
        can_use_tool: Asked before each client tool call runs: allow, deny (the model sees the
            message as an error result) or allow with changed input (:mod:`chucky.client.hooks`).
        hooks: ``{"PreToolUse" | "PostToolUse" | "Stop": [HookMatcher(...)]}``, run around
            the client's tool calls and at the end of each turn (:mod:`chucky.client.hooks`).
        reconnect: Resume a session whose socket was lost unexpectedly (a reset, a cut, a
            server restart, a keepalive timeout), on servers that support it (our ``seq``
            extension, docs/protocol.md section 10): the session's ``stream()`` goes on with
            no message lost or repeated, and no tool handler runs twice for one call. Not on a
            clean close, nor after an authentication or budget error. While it tries,
            ``Session.state`` is ``RECONNECTING``; when it gives up, ``stream()`` raises
            :class:`~chucky.errors.ConnectionError` (``details``: ``reason``
            ``reconnect_failed``, ``attempts``), or at once the typed error that makes
            retrying pointless (:class:`~chucky.errors.AuthenticationError`,
            :class:`~chucky.errors.SessionNotFoundError`, ...). See
            :mod:`chucky.client.reconnect`.
        max_reconnect_attempts: Attempts per outage before giving up (the first at once).
        reconnect_backoff: Seconds of the exponential backoff between attempts: a random wait
            of up to ``reconnect_backoff * 2**(n-1)`` after the ``n``-th failed attempt,
            capped at 8 seconds.
        token_provider: Called (sync or async, no arguments) for the token of each new socket:
            each session's first, and each reconnect attempt (tokens expire). With it,
            ``token`` may be omitted.
        on_reconnect: Called (sync or async) with a
            :class:`~chucky.client.reconnect.ReconnectEvent` before each reconnect attempt
            (``outcome`` ``"reconnecting"``), when the session is back (``"resumed"``,
            ``"replay_unavailable"``) and when the client gives up (``"failed"``). It runs in
            the reconnect's own task (the first replayed messages may reach ``stream()``
            before ``"resumed"`` does); an exception it raises is logged and ignored.
        debug: Log frames at DEBUG level on the ``chucky.client`` logger.

    Raises:
        ValidationError: no ``token`` and no ``token_provider``, or an invalid option.
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
        if token is not None and token.startswith(("ws://", "wss://")):
            token, url = url, token
        if not token and token_provider is None:
            raise ValidationError(
                "a token is required (see chucky.create_token), or a token_provider"
            )
        if token_provider is not None and not callable(token_provider):
            raise ValidationError("token_provider must be a callable returning a token")
        policy = ReconnectPolicy(
            max_attempts=max_reconnect_attempts,
            backoff=reconnect_backoff,
            on_reconnect=on_reconnect,
        )
        check_args(options, "Chucky")
        if max_queue < 1:
            raise ValidationError("max_queue must be at least 1")
        self._defaults: dict[str, Any] = {
            **options,
            "model": model,
            "system_prompt": system_prompt,
            "max_turns": max_turns,
        }
        # Fail fast on bad defaults (duplicate tool names, wrong types).
        resolve(self._defaults, {})
        self._settings = ConnectionSettings(
            url=url or DEFAULT_URL,
            token=token,
            timeout=timeout,
            keepalive_interval=keepalive_interval,
            tool_timeout=tool_timeout,
            max_queue=max_queue,
            hooks=ToolHooks(can_use_tool=can_use_tool, hooks=hooks),
            reconnect=policy if reconnect else None,
            token_provider=token_provider,
        )
        self._idle_timeout = idle_timeout
        self._turn_timeout = check_turn_timeout(turn_timeout)
        # Strong references: an open session's socket lives on in its reader task even when
        # the application drops the Session object, and close() must still reach it.
        self._sessions: set[Session] = set()
        if debug:
            logger.setLevel(logging.DEBUG)

    @property
    def url(self) -> str:
        return self._settings.url

    def create_session(self, **options: Unpack[SessionArgs]) -> Session:
        """A new session; returns at once, the socket opens on the first ``send()``.

        Raises:
            ValidationError: invalid options, or two tools with the same name.
        """
        check_args(options, "create_session")
        session = Session(
            resolve(self._defaults, options),
            self._settings,
            idle_timeout=self._idle_timeout,
            turn_timeout=self._turn_timeout,
            on_close=self._sessions.discard,
        )
        self._sessions.add(session)
        return session

    def resume_session(self, session_id: str, /, **options: Unpack[SessionArgs]) -> Session:
        """A session that continues ``session_id`` (same project and user only).

        Raises:
            ValidationError: invalid options.
        """
        options["session_id"] = session_id
        return self.create_session(**options)

    async def prompt(
        self,
        message: Content,
        *,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> PromptResult:
        """Run one turn in a fresh session and return its result.

        With ``output_format=SomeModel`` (a pydantic model class), the server is sent the
        model's JSON Schema and the result's ``structured_output`` is a ``SomeModel`` instance.

        Args:
            message: The user's message.
            turn_timeout: Seconds the turn may take (``None``: the client's ``turn_timeout``).
            **options: Session options, overriding the client's.

        Raises:
            TimeoutError: the turn did not end within ``turn_timeout`` seconds; it was
                interrupted server-side.
            ChuckyError: the typed error the server answered with (``BudgetExceededError``,
                ``AuthenticationError``, ...), or a connection failure or timeout.
            ValidationError: the server's ``structured_output`` does not validate as the
                ``output_format`` model; ``details["structured_output"]`` holds the raw value
                and ``details["result"]`` the :class:`PromptResult`.
        """
        output_format = options.get("output_format", self._defaults.get("output_format"))
        async with self.create_session(**options) as session:
            await session.send(message, turn_timeout=turn_timeout)
            messages: list[SDKMessage] = []
            async for msg in session.stream():
                messages.append(msg)
                if isinstance(msg, ErrorMessage):
                    raise msg.exception
                if isinstance(msg, ResultMessage):
                    return _prompt_result(msg, messages, output_format)
        raise ConnectionError("the turn ended without a result")  # pragma: no cover

    async def stream(
        self,
        message: Content,
        *,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> AsyncGenerator[StreamEvent, None]:
        """Run one turn in a fresh session, yielding :class:`StreamEvent` as it goes.

        Events: ``message`` (assistant text; text deltas with ``include_partial_messages``),
        ``tool_use``, then ``result`` and ``done``; or ``error``. Break out early and the
        session closes (use :func:`contextlib.aclosing` to make that immediate).

        Args:
            message: The user's message.
            turn_timeout: Seconds the turn may take (``None``: the client's ``turn_timeout``).
            **options: Session options, overriding the client's.

        Raises:
            TimeoutError: the turn did not end within ``turn_timeout`` seconds (it was
                interrupted server-side), or the connection went silent.
            ConnectionError: the connection failed.
        """
        session = self.create_session(**options)
        try:
            await session.send(message, turn_timeout=turn_timeout)
            delta_seen = False
            async for msg in session.stream():
                if isinstance(msg, StreamEventMessage):
                    delta = msg.text_delta
                    if delta:
                        delta_seen = True
                        yield StreamEvent("message", delta, msg)
                elif isinstance(msg, AssistantMessage):
                    text = msg.text
                    if text and not delta_seen:
                        yield StreamEvent("message", text, msg)
                    delta_seen = False
                    for block in msg.tool_uses:
                        yield StreamEvent(
                            "tool_use",
                            block,
                            msg,
                            name=_bare(block.name),
                            input=block.input,
                            id=block.id,
                        )
                elif isinstance(msg, ResultMessage):
                    yield StreamEvent("result", msg, msg)
                    yield StreamEvent("done", {"sessionId": msg.session_id}, msg)
                elif isinstance(msg, ErrorMessage):
                    yield StreamEvent("error", msg, msg, error=msg.exception)
        finally:
            await session.close()

    def stream_events(
        self,
        message: Content,
        *,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> TurnStream:
        """One turn in a fresh session, as a :class:`~chucky.client.stream.TurnStream` of
        typed events: ``async with client.stream_events("...") as stream:``.

        The turn is sent when the block is entered. Iterate the stream for typed events
        (:mod:`chucky.client.events`), or read ``stream.text_stream``, ``await
        stream.until_done()``, ``await stream.get_final_result()``. Leaving the block before
        the turn's end interrupts the turn and closes the session.

        Args:
            message: The user's message.
            turn_timeout: Seconds the turn may take (``None``: the client's ``turn_timeout``).
            **options: Session options, overriding the client's.

        Raises:
            ValidationError: invalid options.
        """
        output_format = options.get("output_format", self._defaults.get("output_format"))
        return TurnStream(
            self.create_session(**options),
            message,
            output_format=output_format,
            turn_timeout=turn_timeout,
        )

    async def close(self) -> None:
        """Close every session this client opened. Idempotent."""
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.close()

    async def __aenter__(self) -> Chucky:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Chucky(url={self.url!r})"

    # Conversations (chucky.client.conversation) -----------------------------------------------

    async def converse(
        self,
        messages: ConverseInput,
        *,
        on_tool_call: OnToolCall | None = None,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> AsyncGenerator[ConverseChunk, None]:
        """Run one turn, yielding typed chunks: ``text`` fragments as they stream,
        ``tool_call`` for each tool call, then ``done`` -- or ``error`` if the turn failed.

        Args:
            messages: A user message, or a message history (:class:`~chucky.history.Message`
                models or role dicts) ending with the user's message; the messages before it
                seed the new session's transcript (system messages join the system prompt).
            on_tool_call: Called (sync or async) with each :class:`ToolCallChunk` before it
                is yielded; it observes, the tool handlers still answer.
            turn_timeout: Seconds the turn may take (``None``: the client's).
            **options: Session options (``session_id``, ``model``, ``temperature``,
                ``frequency_penalty`` ...), overriding the client's. Text streams in
                fragments unless ``include_partial_messages=False``.

        Raises:
            ValidationError: a malformed history, or one not ending with a user message.
            ConnectionError, TimeoutError: as :meth:`stream`. Errors the server answers
                come as an ``error`` chunk.
        """
        async for chunk in conversation.converse(
            self, messages, on_tool_call=on_tool_call, turn_timeout=turn_timeout, options=options
        ):
            yield chunk

    async def stream_text(
        self,
        messages: ConverseInput,
        *,
        on_tool_call: OnToolCall | None = None,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> AsyncGenerator[str, None]:
        """Run one turn, yielding the reply's text in fragments as the model streams it.

        Takes what :meth:`converse` takes.

        Raises:
            ChuckyError: the typed error the turn failed with (an error ``result`` raises a
                :class:`~chucky.errors.ChuckyError` whose ``details["reason"]`` is its
                subtype).
        """
        async for chunk in conversation.converse(
            self, messages, on_tool_call=on_tool_call, turn_timeout=turn_timeout, options=options
        ):
            if chunk.type == "text":
                yield chunk.text
            elif chunk.type == "error":
                raise chunk.error

    async def chat(
        self,
        messages: ConverseInput,
        *,
        on_tool_call: OnToolCall | None = None,
        turn_timeout: float | None = None,
        **options: Unpack[SessionArgs],
    ) -> str:
        """Run one turn and return the reply's final text.

        Takes what :meth:`converse` takes.

        Raises:
            ChuckyError: as :meth:`stream_text`.
        """
        async with contextlib.aclosing(
            conversation.converse(
                self,
                messages,
                on_tool_call=on_tool_call,
                turn_timeout=turn_timeout,
                options=options,
            )
        ) as chunks:
            async for chunk in chunks:
                if chunk.type == "done":
                    return chunk.text
                if chunk.type == "error":
                    raise chunk.error
        raise ConnectionError("the turn ended without a result")  # pragma: no cover

    async def clear_session(self, session_id: str) -> bool:
        """Delete one of this user's sessions and its messages on the server
        (``POST /sessions/clear``, a chucky server's route). Idempotent: resuming it
        afterwards raises :class:`~chucky.errors.SessionNotFoundError`.

        Returns:
            Whether a session was deleted (``False``: the user has none with that id).

        Raises:
            SessionError: ``session_busy``: the session is open on a connection (close it
                first: sessions of this client with that id are closed before the request).
            AuthenticationError: the token was refused.
            ConnectionError, TimeoutError: the server could not be reached in ``timeout``.
        """
        for session in list(self._sessions):
            if session.session_id == session_id:
                await session.close()
        return await clear_session_request(
            self._settings.url,
            await self._settings.get_token(),
            session_id,
            deadline=self._settings.timeout,
        )
