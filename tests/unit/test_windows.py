"""Window math from an explicit anchor (the server's stored one): chucky.windows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chucky.errors import ValidationError
from chucky.tokens import TokenBudget
from chucky.windows import (
    LIFETIME_KEY,
    anchored_bounds,
    anchored_key,
    from_unix,
    to_unix,
    token_anchor,
    window_bounds,
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def budget(window: str, start: str | None) -> TokenBudget:
    return TokenBudget.model_validate(
        {"ai": 1, "compute": 1, "window": window, "windowStart": start}
    )


ANCHOR = utc(2024, 1, 1, 6)


@pytest.mark.parametrize(
    ("window", "now", "key"),
    [
        ("hour", utc(2024, 1, 1, 7, 30), "hour:2024-01-01T07:00:00Z"),
        ("day", utc(2024, 1, 3, 5), "day:2024-01-02T06:00:00Z"),
        ("week", utc(2024, 1, 9), "week:2024-01-08T06:00:00Z"),
        ("month", utc(2024, 3, 1), "month:2024-02-01T06:00:00Z"),
        ("lifetime", utc(2024, 3, 1), LIFETIME_KEY),
        ("lifetime", utc(2099, 1, 1), "lifetime"),
    ],
)
def test_anchored_key(window: str, now: datetime, key: str) -> None:
    assert anchored_key(window, ANCHOR, now) == key


def test_anchored_bounds_of_lifetime_start_at_the_anchor() -> None:
    assert anchored_bounds("lifetime", ANCHOR, utc(2030, 1, 1)) == (ANCHOR, None)


def test_a_naive_anchor_is_utc_and_now_may_be_a_timestamp() -> None:
    naive = datetime(2024, 1, 1, 6)
    assert anchored_bounds("day", naive, utc(2024, 1, 1, 8).timestamp()) == (
        ANCHOR,
        utc(2024, 1, 2, 6),
    )


def test_anchored_bounds_reject_unknown_windows_and_overflows() -> None:
    with pytest.raises(ValidationError, match="Unknown budget window"):
        anchored_bounds("year", ANCHOR, ANCHOR)
    with pytest.raises(ValidationError, match="out of range"):
        anchored_bounds("day", utc(9999, 12, 31), utc(9999, 12, 31, 12))


def test_token_anchor_is_window_start_then_iat_then_the_epoch() -> None:
    assert token_anchor(budget("day", "2024-01-01T06:00:00+00:00Z"), 0) == ANCHOR
    iat = int(utc(2024, 5, 5).timestamp())
    assert token_anchor(budget("day", None), iat) == utc(2024, 5, 5)
    assert token_anchor(budget("day", None)) == utc(1970, 1, 1)


def test_unix_seconds_round_trip_to_the_microsecond() -> None:
    moment = utc(2027, 1, 15, 7, 59, 58, 123_457)
    assert from_unix(to_unix(moment)) == moment
    assert to_unix(datetime(1970, 1, 1, 0, 0, 1)) == 1.0
    assert from_unix(-86_400.0) == utc(1969, 12, 31)
    with pytest.raises(ValidationError):
        from_unix(1e300)


moments = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(
    window=st.sampled_from(["hour", "day", "week", "month", "lifetime"]),
    anchor=moments,
    now=moments,
)
def test_a_tokens_windows_are_the_windows_of_its_anchor(
    window: str, anchor: datetime, now: datetime
) -> None:
    token = budget(window, anchor.isoformat())
    assert window_bounds(token, now) == anchored_bounds(window, token_anchor(token), now)
    assert from_unix(to_unix(anchor)) == anchor
