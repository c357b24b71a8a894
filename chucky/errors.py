"""The chucky exception tree.

Every error the library raises is a :class:`ChuckyError`; no exception of websockets, pyjwt,
pydantic or the provider SDKs escapes the public API (they are chained as ``__cause__``).
``ChuckyError`` subclasses :class:`RuntimeError` because the official client raised
``RuntimeError`` and its documentation catches that. Where a builtin fits, the class inherits it
too, so ``except TimeoutError`` and ``except ConnectionError`` keep working::

    RuntimeError
     └── ChuckyError                      code, message, details, session_id
          ├── AuthenticationError         AUTHENTICATION_ERROR   bad, expired or unknown token
          ├── BudgetExceededError         BUDGET_EXCEEDED        window budget used up
          ├── ConcurrencyLimitError       CONCURRENCY_LIMIT      too many live sessions
          ├── RateLimitError              RATE_LIMIT             too many turns per minute
          ├── SessionError                SESSION_ERROR          session busy / not yours
          │    └── SessionNotFoundError                          unknown session id
          ├── ValidationError (+ValueError) VALIDATION_ERROR     malformed frame, options or tool
          │    └── StructuredOutputTruncatedError                output cut by max_tokens
          ├── ProviderError               PROVIDER_ERROR         the model provider failed
          ├── ProtocolError                                      the peer broke the protocol
          ├── InvalidStateError                                  local misuse (send when closed)
          ├── ConnectionError (+builtins)                        socket failed, closed or silent
          │    └── HandshakeError                                upgrade refused, no ``ready``
          └── TimeoutError (+builtins)                           an explicit deadline passed

Codes are the ``code`` field of an ``error`` frame (docs/protocol.md section 8). A frame is
mapped to a class by :func:`error_from_payload`: by ``code``, then by ``details.reason``, then by
words in the message (the same words the official TypeScript client's classifier looks for).
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final

if TYPE_CHECKING:
    from .messages import Usage

__all__ = [
    "AuthenticationError",
    "BudgetExceededError",
    "ChuckyError",
    "ConcurrencyLimitError",
    "ConnectionError",
    "ErrorCode",
    "HandshakeError",
    "InvalidStateError",
    "ProtocolError",
    "ProviderError",
    "RateLimitError",
    "SessionError",
    "SessionNotFoundError",
    "StructuredOutputTruncatedError",
    "TimeoutError",
    "ValidationError",
    "error_from_payload",
]


class ErrorCode:
    """The ``code`` values of docs/protocol.md section 8."""

    AUTHENTICATION_ERROR: Final = "AUTHENTICATION_ERROR"
    BUDGET_EXCEEDED: Final = "BUDGET_EXCEEDED"
    CONCURRENCY_LIMIT: Final = "CONCURRENCY_LIMIT"
    RATE_LIMIT: Final = "RATE_LIMIT"
    SESSION_ERROR: Final = "SESSION_ERROR"
    VALIDATION_ERROR: Final = "VALIDATION_ERROR"
    PROVIDER_ERROR: Final = "PROVIDER_ERROR"
    INTERNAL_ERROR: Final = "INTERNAL_ERROR"


class ChuckyError(RuntimeError):
    """Base class of every chucky error.

    Attributes:
        message: A human-readable description.
        code: The protocol error code (``"BUDGET_EXCEEDED"`` ...) or ``None`` for local errors.
        details: Structured data from the server (``reason``, ``limit``, ``retryAfter`` ...).
        session_id: The session the error belongs to, when known.
    """

    default_code: ClassVar[str | None] = ErrorCode.INTERNAL_ERROR
    # The ``details.reason`` a payload carries when none was given: set where the code alone
    # would map back to a parent class (``SESSION_ERROR`` is a plain :class:`SessionError`).
    default_reason: ClassVar[str | None] = None

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.details: dict[str, Any] = dict(details or {})
        self.session_id = session_id

    @property
    def reason(self) -> str | None:
        """The fine-grained code in ``details.reason`` (``token_expired`` ...), if any."""
        reason = self.details.get("reason")
        return reason if isinstance(reason, str) else self.default_reason

    def to_payload(self) -> dict[str, Any]:
        """The ``payload`` of an ``error`` frame describing this error."""
        payload: dict[str, Any] = {
            "message": self.message,
            "code": self.code or ErrorCode.INTERNAL_ERROR,
        }
        details = dict(self.details)
        if self.default_reason is not None and not isinstance(details.get("reason"), str):
            details["reason"] = self.default_reason
        if details:
            payload["details"] = details
        return payload

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class AuthenticationError(ChuckyError):
    """The token is malformed, expired, badly signed or names an unknown project."""

    default_code = ErrorCode.AUTHENTICATION_ERROR


class BudgetExceededError(ChuckyError):
    """The user's AI or compute budget for the current window is used up."""

    default_code = ErrorCode.BUDGET_EXCEEDED


class ConcurrencyLimitError(ChuckyError):
    """Too many live sessions for this user or project."""

    default_code = ErrorCode.CONCURRENCY_LIMIT


class RateLimitError(ChuckyError):
    """Too many turns per minute; :attr:`retry_after` says how long to wait (seconds)."""

    default_code = ErrorCode.RATE_LIMIT

    @property
    def retry_after(self) -> float | None:
        """``details.retryAfter`` in seconds, or ``None`` when absent or unusable."""
        value = self.details.get("retryAfter")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        seconds = float(value)
        # A NaN or negative delay would break the caller's sleep.
        return seconds if math.isfinite(seconds) and seconds >= 0 else None


class SessionError(ChuckyError):
    """The session cannot be used: busy, or not owned by this user."""

    default_code = ErrorCode.SESSION_ERROR


class SessionNotFoundError(SessionError):
    """No session with that id exists for this project and user."""

    default_reason = "session_not_found"


class ValidationError(ChuckyError, ValueError):
    """A frame, an option or a tool definition is invalid."""

    default_code = ErrorCode.VALIDATION_ERROR


class StructuredOutputTruncatedError(ValidationError):
    """A turn with ``output_format`` ended without structured output because the model's
    answer was cut by the token limit (``max_tokens``, or what the budget allowed).

    Attributes:
        usage: The turn's token usage (a :class:`~chucky.messages.Usage`).
        details: ``reason`` (``max_tokens``), ``subtype`` (the result's), ``result`` (the
            :class:`~chucky.client.results.PromptResult`).
    """

    def __init__(
        self,
        message: str = "",
        *,
        usage: Usage | None = None,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details, session_id=session_id)
        self.usage = usage


class ProviderError(ChuckyError):
    """The model provider failed (after retries, where retries apply).

    Attributes:
        retryable: Whether another attempt may succeed (an overloaded or rate-limited provider,
            a timeout, a dropped connection) rather than fail the same way (a request the
            provider rejected, a provider that is not installed). Given to the constructor, it
            is also written to ``details["retryable"]`` and decides the default
            ``details["reason"]`` (``provider_unavailable`` / ``provider_rejected``), which is
            what travels on the wire; an error built from a frame reads it back from there.
        retry_after: Seconds the provider asked to wait before another attempt (its
            ``retry-after`` header), if it said; ``None`` otherwise and on the client side.
    """

    default_code = ErrorCode.PROVIDER_ERROR

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code, details=details, session_id=session_id)
        if retryable is None:
            flag = self.details.get("retryable")
            retryable = flag if isinstance(flag, bool) else self.reason == "provider_unavailable"
        else:
            self.details["retryable"] = retryable
            self.details.setdefault(
                "reason", "provider_unavailable" if retryable else "provider_rejected"
            )
        self.retryable: bool = retryable
        self.retry_after: float | None = retry_after


class ProtocolError(ChuckyError):
    """The remote peer violated the wire protocol (docs/protocol.md)."""

    default_code = None


class InvalidStateError(ChuckyError):
    """A method was called in a state that does not allow it (local misuse)."""

    default_code = None


class ConnectionError(ChuckyError, builtins.ConnectionError):
    """The WebSocket could not be opened, was closed, or the server stopped answering."""

    default_code = None


class HandshakeError(ConnectionError):
    """The server did not complete the handshake (no ``ready``, a bad HTTP status ...)."""


class TimeoutError(ChuckyError, builtins.TimeoutError):
    """An explicit deadline (connect, handshake, idle turn, a turn's ``turn_timeout``, tool
    call) passed."""

    default_code = None


_BY_CODE: Final[dict[str, type[ChuckyError]]] = {
    ErrorCode.AUTHENTICATION_ERROR: AuthenticationError,
    ErrorCode.BUDGET_EXCEEDED: BudgetExceededError,
    ErrorCode.CONCURRENCY_LIMIT: ConcurrencyLimitError,
    ErrorCode.RATE_LIMIT: RateLimitError,
    ErrorCode.SESSION_ERROR: SessionError,
    ErrorCode.VALIDATION_ERROR: ValidationError,
    ErrorCode.PROVIDER_ERROR: ProviderError,
    ErrorCode.INTERNAL_ERROR: ChuckyError,
}

_BY_REASON: Final[dict[str, type[ChuckyError]]] = {
    "token_expired": AuthenticationError,
    "invalid_token": AuthenticationError,
    "unknown_project": AuthenticationError,
    "user_budget_exhausted": BudgetExceededError,
    "compute_budget_exhausted": BudgetExceededError,
    "concurrent_limit_reached": ConcurrencyLimitError,
    "rate_limited": RateLimitError,
    "session_not_found": SessionNotFoundError,
    "session_busy": SessionError,
    "invalid_frame": ValidationError,
    "invalid_options": ValidationError,
    "provider_unavailable": ProviderError,
    "provider_rejected": ProviderError,
}

# Checked in order; the words are those of docs/protocol.md section 8 (and T's classifier).
_BY_TEXT: Final[tuple[tuple[re.Pattern[str], type[ChuckyError]], ...]] = (
    (re.compile(r"budget", re.I), BudgetExceededError),
    (re.compile(r"concurren", re.I), ConcurrencyLimitError),
    (re.compile(r"rate.?limit|too many requests", re.I), RateLimitError),
    (re.compile(r"unauthori[sz]ed|authenticat|token|forbidden", re.I), AuthenticationError),
    (re.compile(r"session.*not found", re.I), SessionNotFoundError),
    (re.compile(r"session", re.I), SessionError),
    (re.compile(r"invalid|validation", re.I), ValidationError),
    (re.compile(r"provider|overloaded|model", re.I), ProviderError),
)


def error_class_for(
    code: str | None, reason: str | None = None, message: str = ""
) -> type[ChuckyError]:
    """The exception class for an error ``code``, fine ``reason`` and ``message``.

    A known ``reason`` refines its ``code`` only to a subclass (``SESSION_ERROR`` with
    ``session_not_found`` is a :class:`SessionNotFoundError`); text decides only when neither
    the code nor the reason is known.
    """
    by_code = _BY_CODE.get(code) if code is not None else None
    by_reason = _BY_REASON.get(reason) if reason is not None else None
    if by_code is not None and by_code is not ChuckyError:
        if by_reason is not None and issubclass(by_reason, by_code):
            return by_reason
        return by_code
    if by_reason is not None:
        return by_reason
    if by_code is ChuckyError:
        return ChuckyError
    for pattern, cls in _BY_TEXT:
        if pattern.search(message):
            return cls
    return ChuckyError


def error_from_payload(
    payload: Mapping[str, Any] | None, *, session_id: str | None = None
) -> ChuckyError:
    """Build the typed exception for the ``payload`` of an ``error`` frame.

    Tolerates every shape a server may send: missing fields, a non-dict ``details``, a string
    payload.
    """
    if not isinstance(payload, Mapping):
        text = str(payload) if payload is not None else "Unknown error"
        return error_class_for(None, None, text)(text, session_id=session_id)
    raw_message = payload.get("message")
    message = raw_message if isinstance(raw_message, str) else "Unknown error"
    raw_code = payload.get("code")
    code = raw_code if isinstance(raw_code, str) else None
    raw_details = payload.get("details")
    details: dict[str, Any] = dict(raw_details) if isinstance(raw_details, Mapping) else {}
    raw_reason = details.get("reason")
    reason = raw_reason if isinstance(raw_reason, str) else None
    cls = error_class_for(code, reason, message)
    return cls(message, code=code or cls.default_code, details=details, session_id=session_id)
