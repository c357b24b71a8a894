"""The exception tree and the mapping of error frames (chucky.errors).

The codes are those of docs/protocol.md section 8.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky import errors
from chucky.errors import (
    AuthenticationError,
    BudgetExceededError,
    ChuckyError,
    ConcurrencyLimitError,
    ConnectionError,
    ErrorCode,
    HandshakeError,
    InvalidStateError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    SessionError,
    SessionNotFoundError,
    TimeoutError,
    ValidationError,
    error_from_payload,
)
from chucky.protocol.frames import FrameError

CLASSES = [
    getattr(errors, name)
    for name in errors.__all__
    if isinstance(getattr(errors, name), type) and issubclass(getattr(errors, name), Exception)
]

BY_CODE = {
    "AUTHENTICATION_ERROR": AuthenticationError,
    "BUDGET_EXCEEDED": BudgetExceededError,
    "CONCURRENCY_LIMIT": ConcurrencyLimitError,
    "RATE_LIMIT": RateLimitError,
    "SESSION_ERROR": SessionError,
    "VALIDATION_ERROR": ValidationError,
    "PROVIDER_ERROR": ProviderError,
    "INTERNAL_ERROR": ChuckyError,
}


# --- the tree ---------------------------------------------------------------------------------


def test_every_public_class_is_listed() -> None:
    assert {cls.__name__ for cls in CLASSES} == {
        "ChuckyError",
        "AuthenticationError",
        "BudgetExceededError",
        "ConcurrencyLimitError",
        "RateLimitError",
        "SessionError",
        "SessionNotFoundError",
        "ValidationError",
        "StructuredOutputTruncatedError",
        "ProviderError",
        "ProtocolError",
        "InvalidStateError",
        "ConnectionError",
        "HandshakeError",
        "TimeoutError",
    }


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_is_a_chucky_error_and_a_runtime_error(cls: type[Exception]) -> None:
    assert issubclass(cls, ChuckyError)
    assert issubclass(cls, RuntimeError)
    exc = cls("boom")
    assert isinstance(exc, ChuckyError)
    assert str(exc) == exc.message == "boom"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (ConnectionError, builtins.ConnectionError),
        (HandshakeError, builtins.ConnectionError),
        (TimeoutError, builtins.TimeoutError),
        (ValidationError, ValueError),
        (FrameError, ValueError),
    ],
)
def test_builtins_are_inherited_where_they_fit(cls: type[Exception], builtin: type) -> None:
    assert issubclass(cls, builtin)
    with pytest.raises(builtin):
        raise cls("x")


def test_subclasses() -> None:
    assert issubclass(SessionNotFoundError, SessionError)
    assert issubclass(HandshakeError, ConnectionError)
    assert issubclass(FrameError, ValidationError)
    assert not issubclass(ConnectionError, TimeoutError)
    assert not issubclass(ValidationError, SessionError)


def test_errors_do_not_shadow_the_builtins_module() -> None:
    assert ConnectionError is not builtins.ConnectionError
    assert TimeoutError is not builtins.TimeoutError


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        *((cls, code) for code, cls in BY_CODE.items()),
        (SessionNotFoundError, "SESSION_ERROR"),
        (ProtocolError, None),
        (InvalidStateError, None),
        (ConnectionError, None),
        (HandshakeError, None),
        (TimeoutError, None),
    ],
)
def test_default_codes(cls: type[ChuckyError], code: str | None) -> None:
    assert cls("x").code == code


def test_attributes() -> None:
    exc = RateLimitError(
        "Rate limit exceeded", code="CUSTOM", details={"reason": "rate_limited"}, session_id="s"
    )
    assert exc.message == "Rate limit exceeded"
    assert exc.code == "CUSTOM"
    assert exc.details == {"reason": "rate_limited"}
    assert exc.reason == "rate_limited"
    assert exc.session_id == "s"
    assert repr(exc) == "RateLimitError('Rate limit exceeded', code='CUSTOM')"
    bare = ChuckyError()
    assert (bare.message, bare.details, bare.session_id, bare.reason) == ("", {}, None, None)


def test_details_are_copied() -> None:
    details = {"limit": 5}
    exc = BudgetExceededError("x", details=details)
    details["limit"] = 6
    assert exc.details == {"limit": 5}
    exc.to_payload()["details"]["limit"] = 7
    assert exc.details == {"limit": 5}


def test_reason_must_be_a_string() -> None:
    assert ChuckyError("x", details={"reason": 5}).reason is None


def test_codes() -> None:
    assert {getattr(ErrorCode, name) for name in dir(ErrorCode) if not name.startswith("_")} == set(
        BY_CODE
    )


# --- error_from_payload -----------------------------------------------------------------------


@pytest.mark.parametrize(("code", "cls"), BY_CODE.items())
def test_maps_by_code(code: str, cls: type[ChuckyError]) -> None:
    # The text says something else: the code wins.
    exc = error_from_payload({"message": "session budget rate limit invalid", "code": code})
    assert type(exc) is cls
    assert exc.code == code
    assert exc.message == "session budget rate limit invalid"


@pytest.mark.parametrize(
    ("code", "reason", "cls"),
    [
        ("SESSION_ERROR", "session_not_found", SessionNotFoundError),
        ("SESSION_ERROR", "session_busy", SessionError),
        ("AUTHENTICATION_ERROR", "token_expired", AuthenticationError),
        ("BUDGET_EXCEEDED", "compute_budget_exhausted", BudgetExceededError),
        # A reason refines a code only to a subclass.
        ("VALIDATION_ERROR", "session_not_found", ValidationError),
        ("RATE_LIMIT", "user_budget_exhausted", RateLimitError),
        ("PROVIDER_ERROR", "invalid_frame", ProviderError),
        ("SESSION_ERROR", "unheard_of", SessionError),
        # No (known) code: the reason decides.
        (None, "session_not_found", SessionNotFoundError),
        (None, "rate_limited", RateLimitError),
        (None, "concurrent_limit_reached", ConcurrencyLimitError),
        (None, "unknown_project", AuthenticationError),
        (None, "invalid_options", ValidationError),
        (None, "provider_rejected", ProviderError),
        ("SOMETHING_NEW", "user_budget_exhausted", BudgetExceededError),
        # INTERNAL_ERROR is the base class: any known reason is a refinement.
        ("INTERNAL_ERROR", "session_busy", SessionError),
    ],
)
def test_maps_by_reason(code: str | None, reason: str, cls: type[ChuckyError]) -> None:
    payload: dict[str, Any] = {"message": "Something", "details": {"reason": reason}}
    if code is not None:
        payload["code"] = code
    exc = error_from_payload(payload)
    assert type(exc) is cls
    assert exc.reason == reason


@pytest.mark.parametrize(
    ("message", "cls"),
    [
        ("Budget exceeded for user", BudgetExceededError),
        ("Concurrency limit reached", ConcurrencyLimitError),
        ("too many concurrent sessions", ConcurrencyLimitError),
        ("Rate limit exceeded", RateLimitError),
        ("rate-limit", RateLimitError),
        ("ratelimited", RateLimitError),
        ("429 Too Many Requests", RateLimitError),
        ("Unauthorized", AuthenticationError),
        ("unauthorised", AuthenticationError),
        ("Authentication failed", AuthenticationError),
        ("Invalid token", AuthenticationError),
        ("Forbidden", AuthenticationError),
        ("Session abc was not found", SessionNotFoundError),
        ("Session busy", SessionError),
        ("Invalid frame", ValidationError),
        ("validation failed", ValidationError),
        ("Provider unavailable", ProviderError),
        ("Overloaded", ProviderError),
        ("model not available", ProviderError),
        ("Something exploded", ChuckyError),
        ("", ChuckyError),
    ],
)
def test_maps_by_message_text(message: str, cls: type[ChuckyError]) -> None:
    for payload in ({"message": message}, {"message": message, "code": "BRAND_NEW"}):
        exc = error_from_payload(payload)
        assert type(exc) is cls
        assert exc.message == message


def test_unknown_code_is_kept() -> None:
    exc = error_from_payload({"message": "Something exploded", "code": "BRAND_NEW"})
    assert type(exc) is ChuckyError
    assert exc.code == "BRAND_NEW"


def test_missing_code_gets_the_class_default() -> None:
    assert error_from_payload({"message": "Budget exceeded"}).code == "BUDGET_EXCEEDED"
    assert error_from_payload({"message": "?"}).code == "INTERNAL_ERROR"


def test_internal_error_is_not_reclassified_by_text() -> None:
    exc = error_from_payload({"message": "budget session invalid", "code": "INTERNAL_ERROR"})
    assert type(exc) is ChuckyError


def test_details_and_session_id() -> None:
    payload = {
        "message": "Rate limit",
        "code": "RATE_LIMIT",
        "details": {"reason": "rate_limited", "retryAfter": 30, "limit": 10},
    }
    exc = error_from_payload(payload, session_id="s1")
    assert isinstance(exc, RateLimitError)
    assert exc.details == payload["details"]
    assert exc.details is not payload["details"]
    assert exc.session_id == "s1"
    assert exc.retry_after == 30.0


@pytest.mark.parametrize(
    ("payload", "cls", "message"),
    [
        (None, ChuckyError, "Unknown error"),
        ("Budget exceeded", BudgetExceededError, "Budget exceeded"),
        ("kaboom", ChuckyError, "kaboom"),
        (["x"], ChuckyError, "['x']"),
        (42, ChuckyError, "42"),
        ({}, ChuckyError, "Unknown error"),
        ({"code": "RATE_LIMIT"}, RateLimitError, "Unknown error"),
        ({"message": None, "code": "RATE_LIMIT"}, RateLimitError, "Unknown error"),
        ({"message": 5}, ChuckyError, "Unknown error"),
        ({"message": "Invalid", "code": 5}, ValidationError, "Invalid"),
        ({"message": "m", "details": "token_expired"}, ChuckyError, "m"),
        ({"message": "m", "details": ["rate_limited"]}, ChuckyError, "m"),
        ({"message": "m", "details": {"reason": ["rate_limited"]}}, ChuckyError, "m"),
    ],
)
def test_tolerates_any_payload(payload: Any, cls: type[ChuckyError], message: str) -> None:
    exc = error_from_payload(payload, session_id="s")
    assert type(exc) is cls
    assert exc.message == message
    assert exc.session_id == "s"
    assert isinstance(exc.details, dict)


def test_non_dict_details_become_empty() -> None:
    assert error_from_payload({"message": "m", "details": "x"}).details == {}


# --- to_payload -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        AuthenticationError("Unauthorized: token expired", details={"reason": "token_expired"}),
        BudgetExceededError(
            "Budget exceeded", details={"reason": "user_budget_exhausted", "limit": 1, "used": 2}
        ),
        ConcurrencyLimitError("Concurrency limit reached"),
        RateLimitError("Rate limit", details={"reason": "rate_limited", "retryAfter": 2.5}),
        SessionError("Session busy", details={"reason": "session_busy"}),
        SessionNotFoundError("Session not found: s"),
        SessionNotFoundError("Session not found: s", details={"reason": "session_not_found"}),
        ValidationError("Invalid frame", details={"reason": "invalid_frame", "type": "x"}),
        ProviderError("Provider failed", details={"reason": "provider_unavailable"}),
        ChuckyError("Internal error"),
        ChuckyError("odd", code="BRAND_NEW"),
    ],
    ids=repr,
)
def test_to_payload_round_trip(exc: ChuckyError) -> None:
    payload = exc.to_payload()
    assert payload["message"] == exc.message
    assert payload["code"] == exc.code
    again = error_from_payload(payload)
    assert type(again) is type(exc)
    assert again.message == exc.message
    assert again.code == exc.code
    assert again.reason == exc.reason
    assert again.to_payload() == payload


def test_to_payload_shapes() -> None:
    assert ValidationError("Invalid").to_payload() == {
        "message": "Invalid",
        "code": "VALIDATION_ERROR",
    }
    assert SessionNotFoundError("Session not found").to_payload() == {
        "message": "Session not found",
        "code": "SESSION_ERROR",
        "details": {"reason": "session_not_found"},
    }
    assert SessionNotFoundError("x", details={"reason": "custom"}).to_payload()["details"] == {
        "reason": "custom"
    }
    # Local errors have no code; on the wire they are internal errors.
    assert ProtocolError("peer broke the protocol").to_payload() == {
        "message": "peer broke the protocol",
        "code": "INTERNAL_ERROR",
    }


def test_a_session_not_found_error_knows_its_reason() -> None:
    assert SessionNotFoundError("x").reason == "session_not_found"
    assert SessionNotFoundError("x").details == {}
    assert SessionError("x").reason is None


# --- RateLimitError.retry_after ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, 30.0),
        (2.5, 2.5),
        (0, 0.0),
        (None, None),
        ("30", None),
        (True, None),
        (-1, None),
        (math.nan, None),
        (math.inf, None),
    ],
)
def test_retry_after(value: Any, expected: float | None) -> None:
    exc = RateLimitError("Rate limit", details={"retryAfter": value})
    assert exc.retry_after == expected


def test_retry_after_missing() -> None:
    assert RateLimitError("Rate limit").retry_after is None


# --- property ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "message": st.text() | json_values,
        "code": st.sampled_from([*BY_CODE, "X"]) | json_values,
        "details": st.fixed_dictionaries(
            {},
            optional={
                "reason": st.sampled_from(["session_not_found", "rate_limited", "x"]) | json_values,
                "retryAfter": json_values,
            },
        )
        | json_values,
    },
)


@given(payloads | json_values)
def test_error_from_payload_never_raises(payload: Any) -> None:
    exc = error_from_payload(payload)
    assert isinstance(exc, ChuckyError)
    assert isinstance(exc.message, str)
    assert exc.code is None or isinstance(exc.code, str)
    if isinstance(exc, RateLimitError):
        assert exc.retry_after is None or exc.retry_after >= 0
    again = error_from_payload(exc.to_payload())
    assert isinstance(again, type(exc)) or type(exc) is ChuckyError
