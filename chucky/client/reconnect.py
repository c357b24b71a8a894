"""Automatic reconnect: a session that survives the network (our ``seq`` extension,
docs/protocol.md section 10).

When a session's socket is lost unexpectedly -- no close frame (a reset, a cut, a server that
died), a close code that says "try again" (1001 going away, 1011-1014), a keepalive timeout --
and the server numbers its frames (it accepted ``seq``), the
:class:`~chucky.client.connection.ClientConnection` does not fail its inbox: the
:class:`Reconnector` opens new sockets until one resumes the session, and the application's
``async for`` over the session goes on: no frame lost, none repeated, no tool handler run twice.

Attempts: the first at once, then after a full-jitter exponential backoff (a uniform draw in
``[0, min(cap, base * 2**(n-1))]`` after the ``n``-th failure, at least a ``retryAfter`` the
server asked for), at most ``max_attempts``. Each attempt takes a fresh token from the
client's ``token_provider`` when it has one (tokens expire), connects, sends the resume ``init``
(``sessionId``, ``lastSeq``) and waits ``timeout`` seconds for ``resumed`` or
``replay_unavailable`` (after ``replay_unavailable`` the server may wait for the session's turn
to end elsewhere: no deadline then, the keepalive watches the socket).

What an attempt's failure means (:func:`retryable`): a refused token (HTTP 401/403,
``AUTHENTICATION_ERROR``), a used-up budget, an unknown session, an invalid resume and a server
that does not resume at all end the reconnect at once, with that typed error; a server that
cannot be reached, a socket lost again, a busy session, a concurrency or rate limit, a
server error are tried again. When the attempts are used up, the inbox fails with
:class:`~chucky.errors.ConnectionError` (``details``: ``reason`` ``reconnect_failed``,
``attempts``, ``cause``; the last failure is its ``__cause__``).

The application hears of it through ``on_reconnect`` (sync or async; an exception in it is
logged and ignored), called with a :class:`ReconnectEvent` before each attempt
(``reconnecting``), when the session is back (``resumed``, ``replay_unavailable``) and when the
client gives up (``failed``); and through ``Session.state``, ``RECONNECTING`` meanwhile.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from .._redact import redacting_logger
from ..errors import (
    AuthenticationError,
    BudgetExceededError,
    ChuckyError,
    ConnectionError,
    HandshakeError,
    InvalidStateError,
    ProtocolError,
    RateLimitError,
    SessionNotFoundError,
    ValidationError,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_BACKOFF_CAP",
    "DEFAULT_MAX_ATTEMPTS",
    "RESUMABLE_CLOSE_CODES",
    "OnReconnect",
    "ReconnectEvent",
    "ReconnectOutcome",
    "ReconnectPolicy",
    "Reconnector",
    "TokenProvider",
    "backoff_delay",
    "get_token",
    "retryable",
]

logger = redacting_logger("chucky.client")

DEFAULT_MAX_ATTEMPTS: Final = 10
DEFAULT_BACKOFF: Final = 0.25
DEFAULT_BACKOFF_CAP: Final = 8.0
"""The longest wait between two attempts, in seconds."""

RESUMABLE_CLOSE_CODES: Final = frozenset({1001, 1011, 1012, 1013, 1014})
"""Close codes after which a session is resumed: going away (a server shutting down, a
restart), internal error, service restart, try again later, bad gateway. Any other close frame
(1000 normal, 1008 after a fatal error, ...) ends the session; no close frame at all (1006: a
reset, a cut, an abort) is resumed."""

ReconnectOutcome = Literal["reconnecting", "resumed", "replay_unavailable", "failed"]

TokenProvider = Callable[[], str | Awaitable[str]]
"""Returns the token for a new connection (sync or async): called for the first socket of each
session and for each reconnect attempt, so an expired token can be replaced."""


@dataclass(frozen=True, slots=True)
class ReconnectEvent:
    """What ``on_reconnect`` is told about a session's reconnect.

    Attributes:
        session_id: The session being resumed.
        attempt: The attempt (1 for the first); for ``failed``, the attempts made.
        outcome: ``reconnecting`` (an attempt starts), ``resumed`` (the server replayed what
            was missed), ``replay_unavailable`` (the server opened the session again from its
            store; unfinished turns were sent again), ``failed`` (the client gave up).
        replayed: Frames the server replayed (``resumed``).
        error: For ``reconnecting``, why (the loss, or the previous attempt's failure); for
            ``failed``, the error the session's stream raises.
    """

    session_id: str | None
    attempt: int
    outcome: ReconnectOutcome
    replayed: int = 0
    error: ChuckyError | None = None


OnReconnect = Callable[[ReconnectEvent], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How a client reconnects (``Chucky(reconnect=True, ...)``)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    backoff_cap: float = DEFAULT_BACKOFF_CAP
    on_reconnect: OnReconnect | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValidationError(
                f"max_reconnect_attempts must be an integer >= 1, got {self.max_attempts!r}",
                details={"reason": "invalid_options"},
            )
        for name, value in (("reconnect_backoff", self.backoff), ("backoff_cap", self.backoff_cap)):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValidationError(
                    f"{name} must be a number of seconds >= 0, got {value!r}",
                    details={"reason": "invalid_options"},
                )


def backoff_delay(
    failures: int, base: float, cap: float, draw: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before the next attempt after ``failures`` failed ones: 0 for the
    first, then full jitter, ``draw() * min(cap, base * 2**(failures - 1))``."""
    if failures <= 0:
        return 0.0
    return draw() * min(cap, base * 2.0 ** min(failures - 1, 30))


def retryable(error: ChuckyError) -> bool:
    """Whether another attempt may succeed where this one failed (see the module docstring)."""
    if isinstance(
        error,
        AuthenticationError
        | BudgetExceededError
        | SessionNotFoundError
        | ValidationError
        | ProtocolError
        | InvalidStateError,
    ):
        return False
    if error.reason == "resume_unsupported":
        return False
    if isinstance(error, HandshakeError):
        status = error.details.get("status")
        # An HTTP answer: a proxy or a server restarting (5xx, 429) is worth another try; a
        # wrong path or a refused request is not.
        return not isinstance(status, int) or status >= 500 or status in (408, 429)
    return True


async def get_token(token: str | None, provider: TokenProvider | None) -> str:
    """The token for a new socket: from ``provider`` when there is one, else ``token``.

    Raises:
        AuthenticationError: the provider returned no token (or a ``ChuckyError`` it raised).
        ConnectionError: the provider failed otherwise (another attempt may succeed).
    """
    if provider is None:
        if not token:
            raise AuthenticationError("no token (pass token= or token_provider=)")
        return token
    try:
        value = provider()
        if inspect.isawaitable(value):
            value = await value
    except ChuckyError:
        raise
    except Exception as exc:
        raise ConnectionError(
            f"token_provider failed: {type(exc).__name__}", details={"reason": "token_provider"}
        ) from exc
    if not isinstance(value, str) or not value:
        raise AuthenticationError("token_provider returned no token")
    return value


class Resumable(Protocol):
    """What the :class:`Reconnector` drives: a
    :class:`~chucky.client.connection.ClientConnection`."""

    @property
    def session_id(self) -> str | None: ...

    async def attempt_resume(self) -> tuple[ReconnectOutcome, int]:
        """One attempt: a new socket that resumes the session; returns the outcome
        (``resumed`` or ``replay_unavailable``) and the frames replayed. Raises the attempt's
        failure as a :class:`~chucky.errors.ChuckyError`."""

    def attached(self) -> bool:
        """Whether the socket of the last successful attempt is still alive."""

    def give_up(self, error: ChuckyError) -> None:
        """Fail the session with ``error``."""


class Reconnector:
    """Drives a :class:`Resumable` back to a live socket (see the module docstring).

    ``sleep`` and ``draw`` (the random draw of the jitter) may be replaced by tests.
    """

    def __init__(
        self,
        policy: ReconnectPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._sleep = sleep
        self._draw = draw

    async def run(self, target: Resumable, cause: ChuckyError) -> None:
        """Resume ``target``'s session after its socket was lost with ``cause``."""
        policy = self.policy
        failures = 0
        last = cause
        while failures < policy.max_attempts:
            delay = backoff_delay(failures, policy.backoff, policy.backoff_cap, self._draw)
            if isinstance(last, RateLimitError) and last.retry_after is not None:
                delay = max(delay, min(last.retry_after, policy.backoff_cap))
            if delay > 0:
                await self._sleep(delay)
            attempt = failures + 1
            await self._emit(ReconnectEvent(target.session_id, attempt, "reconnecting", error=last))
            try:
                outcome, replayed = await target.attempt_resume()
            except ChuckyError as exc:
                logger.info(
                    "reconnect attempt %d of session %s failed: %s",
                    attempt,
                    target.session_id,
                    exc,
                )
                if not retryable(exc):
                    await self._fail(target, exc, attempt)
                    return
                failures, last = attempt, exc
                continue
            logger.info(
                "session %s back after %d attempt(s): %s", target.session_id, attempt, outcome
            )
            await self._emit(ReconnectEvent(target.session_id, attempt, outcome, replayed=replayed))
            if target.attached():
                return
            # Lost again while the turns were sent again: a new outage, counted afresh.
            failures, last = 0, ConnectionError("the connection was lost again after a resume")
        error = ConnectionError(
            f"could not reconnect after {failures} attempt(s): {last.message or last}",
            details={
                "reason": "reconnect_failed",
                "attempts": failures,
                "cause": last.message or type(last).__name__,
            },
            session_id=target.session_id,
        )
        error.__cause__ = last
        await self._fail(target, error, failures)

    async def _fail(self, target: Resumable, error: ChuckyError, attempts: int) -> None:
        target.give_up(error)
        await self._emit(ReconnectEvent(target.session_id, attempts, "failed", error=error))

    async def _emit(self, event: ReconnectEvent) -> None:
        callback = self.policy.on_reconnect
        if callback is None:
            return
        try:
            value = callback(event)
            if inspect.isawaitable(value):
                await value
        except Exception:
            logger.exception("on_reconnect raised (ignored)")
