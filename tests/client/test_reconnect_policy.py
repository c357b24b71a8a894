"""The reconnect policy on its own (chucky.client.reconnect): backoff, what is retried, tokens,
and the Reconnector driving a scripted target -- no sockets, no clock (sleep is injected)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from chucky.client.reconnect import (
    DEFAULT_BACKOFF,
    DEFAULT_BACKOFF_CAP,
    ReconnectEvent,
    Reconnector,
    ReconnectOutcome,
    ReconnectPolicy,
    backoff_delay,
    get_token,
    retryable,
)
from chucky.errors import (
    AuthenticationError,
    BudgetExceededError,
    ChuckyError,
    ConcurrencyLimitError,
    ConnectionError,
    HandshakeError,
    ProviderError,
    RateLimitError,
    SessionError,
    SessionNotFoundError,
    TimeoutError,
    ValidationError,
)


def test_the_first_attempt_is_at_once_then_full_jitter_doubling_to_the_cap() -> None:
    delays = [backoff_delay(n, DEFAULT_BACKOFF, DEFAULT_BACKOFF_CAP, lambda: 1.0) for n in range(9)]
    assert delays == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff_delay(3, 0.25, 8.0, lambda: 0.5) == 0.5
    assert backoff_delay(3, 0.25, 8.0, lambda: 0.0) == 0.0
    assert backoff_delay(10_000, 0.25, 8.0, lambda: 1.0) == 8.0  # no overflow


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionError("lost"), True),
        (TimeoutError("slow"), True),
        (SessionError("busy", details={"reason": "session_busy"}), True),
        (ConcurrencyLimitError("too many"), True),
        (RateLimitError("slow down"), True),
        (ProviderError("down"), True),
        (ChuckyError("internal"), True),
        (HandshakeError("503", details={"status": 503}), True),
        (HandshakeError("429", details={"status": 429}), True),
        (HandshakeError("no status"), True),
        (HandshakeError("404", details={"status": 404}), False),
        (AuthenticationError("expired"), False),
        (BudgetExceededError("spent"), False),
        (SessionNotFoundError("gone"), False),
        (ValidationError("bad lastSeq"), False),
        (ConnectionError("old node", details={"reason": "resume_unsupported"}), False),
    ],
)
def test_what_is_tried_again(error: ChuckyError, expected: bool) -> None:
    assert retryable(error) is expected


async def test_get_token_from_the_token_or_a_sync_or_async_provider() -> None:
    assert await get_token("t", None) == "t"

    async def async_provider() -> str:
        return "a"

    assert await get_token("t", lambda: "s") == "s"
    assert await get_token(None, async_provider) == "a"
    with pytest.raises(AuthenticationError):
        await get_token(None, None)
    with pytest.raises(AuthenticationError):
        await get_token(None, lambda: "")


async def test_a_failing_provider_is_a_connection_error_unless_it_raised_a_chucky_error() -> None:
    def broken() -> str:
        raise OSError("backend down")

    with pytest.raises(ConnectionError) as caught:
        await get_token(None, broken)
    assert retryable(caught.value)
    assert "backend down" not in caught.value.message  # may quote a secret

    def refusing() -> str:
        raise AuthenticationError("user logged out")

    with pytest.raises(AuthenticationError):
        await get_token(None, refusing)


class Target:
    """A scripted :class:`~chucky.client.reconnect.Resumable`."""

    def __init__(self, script: list[ChuckyError | tuple[ReconnectOutcome, int]]) -> None:
        self.script: Iterator[ChuckyError | tuple[ReconnectOutcome, int]] = iter(script)
        self.session_id = "sess-1"
        self.given_up: ChuckyError | None = None
        self.attempts = 0
        self.alive: list[bool] = []

    async def attempt_resume(self) -> tuple[ReconnectOutcome, int]:
        self.attempts += 1
        step = next(self.script)
        if isinstance(step, ChuckyError):
            raise step
        return step

    def attached(self) -> bool:
        return self.alive.pop(0) if self.alive else True

    def give_up(self, error: ChuckyError) -> None:
        self.given_up = error


def reconnector(events: list[ReconnectEvent], sleeps: list[float], **policy: Any) -> Reconnector:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return Reconnector(
        ReconnectPolicy(on_reconnect=events.append, **policy), sleep=sleep, draw=lambda: 1.0
    )


async def test_the_reconnector_backs_off_and_gives_up_with_the_attempts_made() -> None:
    events: list[ReconnectEvent] = []
    sleeps: list[float] = []
    lost = ConnectionError("lost")
    target = Target([ConnectionError(f"refused {n}") for n in range(4)])
    await reconnector(events, sleeps, max_attempts=4).run(target, lost)
    assert target.attempts == 4
    assert sleeps == [0.25, 0.5, 1.0]
    error = target.given_up
    assert isinstance(error, ConnectionError)
    assert error.details == {"reason": "reconnect_failed", "attempts": 4, "cause": "refused 3"}
    assert error.session_id == "sess-1"
    assert isinstance(error.__cause__, ConnectionError)
    assert [(e.outcome, e.attempt) for e in events] == [
        ("reconnecting", 1),
        ("reconnecting", 2),
        ("reconnecting", 3),
        ("reconnecting", 4),
        ("failed", 4),
    ]
    assert events[0].error is lost
    assert events[-1].error is error


async def test_a_fatal_failure_ends_at_once_with_its_own_error() -> None:
    events: list[ReconnectEvent] = []
    sleeps: list[float] = []
    expired = AuthenticationError("token expired")
    target = Target([ConnectionError("refused"), expired])
    await reconnector(events, sleeps).run(target, ConnectionError("lost"))
    assert target.attempts == 2 and target.given_up is expired
    assert [e.outcome for e in events] == ["reconnecting", "reconnecting", "failed"]


async def test_success_reports_the_outcome_and_the_frames_replayed() -> None:
    events: list[ReconnectEvent] = []
    sleeps: list[float] = []
    target = Target([SessionError("busy", details={"reason": "session_busy"}), ("resumed", 7)])
    await reconnector(events, sleeps).run(target, ConnectionError("lost"))
    assert target.given_up is None
    assert events[-1] == ReconnectEvent("sess-1", 2, "resumed", replayed=7)


async def test_a_rate_limit_waits_at_least_its_retry_after_within_the_cap() -> None:
    events: list[ReconnectEvent] = []
    sleeps: list[float] = []
    limited = RateLimitError("slow down", details={"retryAfter": 3})
    target = Target([limited, ("resumed", 0)])
    await reconnector(events, sleeps).run(target, ConnectionError("lost"))
    assert sleeps == [3.0]
    flood = RateLimitError("slow down", details={"retryAfter": 3600})
    target = Target([flood, ("resumed", 0)])
    await reconnector(events, sleeps := []).run(target, ConnectionError("lost"))
    assert sleeps == [DEFAULT_BACKOFF_CAP]


async def test_lost_again_right_after_a_resume_is_a_new_outage() -> None:
    events: list[ReconnectEvent] = []
    sleeps: list[float] = []
    target = Target([("resumed", 1), ConnectionError("refused"), ("replay_unavailable", 0)])
    target.alive = [False, True]
    await reconnector(events, sleeps).run(target, ConnectionError("lost"))
    assert [(e.outcome, e.attempt) for e in events] == [
        ("reconnecting", 1),
        ("resumed", 1),
        ("reconnecting", 1),  # counted afresh, at once
        ("reconnecting", 2),
        ("replay_unavailable", 2),
    ]
    assert sleeps == [0.25]


async def test_an_on_reconnect_that_raises_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(event: ReconnectEvent) -> None:
        raise ValueError("oops")

    target = Target([("resumed", 0)])
    policy = ReconnectPolicy(on_reconnect=broken)
    with caplog.at_level(logging.ERROR, logger="chucky.client"):
        await Reconnector(policy).run(target, ConnectionError("lost"))
    assert target.given_up is None
    assert caplog.text.count("on_reconnect raised") == 2


@pytest.mark.parametrize(
    "options",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"backoff": -0.1},
        {"backoff": float("nan")},
        {"backoff_cap": float("inf")},
    ],
)
def test_an_invalid_policy_is_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ReconnectPolicy(**options)
