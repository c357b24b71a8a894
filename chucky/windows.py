"""Budget windows (docs/protocol.md section 7): when a token's budget resets.

``hour``, ``day`` and ``week`` are fixed-length periods counted from an anchor; ``month`` is a
calendar month on the anchor's day-of-month; ``lifetime`` never resets.

A token proposes an anchor (:func:`token_anchor`: its ``windowStart``, else its ``iat``).
:func:`window_bounds` and :func:`window_key` count from it: the windows as one token sees them.
The server counts from the anchor it stored for the user instead (the first token's, whatever
later tokens say, so minting a token per page load cannot multiply a budget):
:func:`anchored_bounds` and :func:`anchored_key` take that anchor explicitly, and
:func:`anchored_key` names ``lifetime`` windows ``"lifetime"`` alone, as they have one instance.

Pure: no I/O, and no hidden clock (``now`` is a parameter; the real clock is read only when it is
``None``).
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, Protocol, get_args

from .errors import ValidationError

__all__ = [
    "LIFETIME_KEY",
    "WINDOWS",
    "BudgetWindow",
    "Window",
    "anchored_bounds",
    "anchored_key",
    "as_datetime",
    "format_utc",
    "from_unix",
    "parse_window_start",
    "to_unix",
    "to_utc",
    "token_anchor",
    "window_bounds",
    "window_key",
]

Window = Literal["hour", "day", "week", "month", "lifetime"]
WINDOWS: Final[tuple[str, ...]] = get_args(Window)
_FIXED_WINDOWS: Final = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}
_BROKEN_UTC = re.compile(r"([+-]\d{2}(?::?\d{2})?)[Zz]$")  # the official client's "+00:00Z"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)

LIFETIME_KEY: Final = "lifetime"
"""The ledger key of a ``lifetime`` window (:func:`anchored_key`): it has one instance."""


class BudgetWindow(Protocol):
    """What window math needs of a budget (:class:`chucky.tokens.TokenBudget` has it)."""

    @property
    def window(self) -> str: ...

    @property
    def window_start(self) -> str | None: ...


def to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def as_datetime(now: datetime | float | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if isinstance(now, datetime):
        return to_utc(now)
    return datetime.fromtimestamp(now, UTC)


def format_utc(value: datetime) -> str:
    return to_utc(value).replace(tzinfo=None).isoformat() + "Z"


def parse_window_start(value: str) -> datetime:
    """Parse a ``windowStart`` leniently.

    Accepts ISO 8601 with ``Z`` or ``+hh:mm`` offsets, fractions of a second, a bare date, no
    offset (UTC), and the official client's broken ``+00:00Z``.

    Args:
        value: The string from the token.

    Returns:
        An aware datetime in UTC.

    Raises:
        ValidationError: Not an ISO 8601 date or date-time.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"Invalid windowStart {value!r}: expected an ISO 8601 string")
    text = _BROKEN_UTC.sub(r"\1", value.strip())
    if text[-1] in "zZ":
        text = text[:-1] + "+00:00"
    try:
        return to_utc(datetime.fromisoformat(text))
    except ValueError as exc:
        raise ValidationError(f"Invalid windowStart {value!r}: not ISO 8601") from exc


def _add_months(anchor: datetime, months: int) -> datetime:
    index = anchor.year * 12 + anchor.month - 1 + months
    year, month = divmod(index, 12)
    day = min(anchor.day, calendar.monthrange(year, month + 1)[1])
    return anchor.replace(year=year, month=month + 1, day=day)


def to_unix(value: datetime) -> float:
    """Unix seconds of ``value`` (naive = UTC), by exact arithmetic: no platform limits."""
    return (to_utc(value) - _EPOCH) / _SECOND


def from_unix(seconds: float) -> datetime:
    """The aware UTC datetime of Unix ``seconds`` (to the microsecond); inverse of
    :func:`to_unix`.

    Raises:
        ValidationError: Out of the range of dates.
    """
    try:
        return _EPOCH + timedelta(seconds=seconds)
    except (OverflowError, ValueError) as exc:
        raise ValidationError(f"Budget window out of range: {exc}") from exc


def token_anchor(budget: BudgetWindow, issued_at: int | None = None) -> datetime:
    """The anchor a token proposes for its windows: ``windowStart``, else ``issued_at``
    (its ``iat``), else the Unix epoch.

    Raises:
        ValidationError: A bad ``windowStart``, or an ``issued_at`` out of range.
    """
    if budget.window_start is not None:
        return parse_window_start(budget.window_start)
    if issued_at is None:
        return _EPOCH
    return from_unix(issued_at)


def anchored_bounds(
    window: str, anchor: datetime, now: datetime | float | None = None
) -> tuple[datetime, datetime | None]:
    """The window instance ``[start, end)`` that contains ``now``, counted from ``anchor``.

    ``hour``, ``day`` and ``week`` are fixed-length periods counted from the anchor; ``month``
    is a calendar month on the anchor's day-of-month and time (clamped to short months: anchor
    Jan 31 gives Feb 28/29, then Mar 31); ``lifetime`` is ``(anchor, None)``. If ``now`` is
    before the anchor the first window is returned.

    Args:
        window: ``hour``, ``day``, ``week``, ``month`` or ``lifetime``.
        anchor: Where the windows are counted from (naive = UTC).
        now: The current time (default: the real clock).

    Returns:
        ``(start, end)`` as aware UTC datetimes; ``end`` is ``None`` for ``lifetime``.

    Raises:
        ValidationError: An unknown window, or dates out of range.
    """
    current = as_datetime(now)
    anchor = to_utc(anchor)
    try:
        if window == "lifetime":
            return anchor, None
        if window == "month":
            months = (current.year - anchor.year) * 12 + current.month - anchor.month
            if months > 0 and _add_months(anchor, months) > current:
                months -= 1
            months = max(months, 0)
            return _add_months(anchor, months), _add_months(anchor, months + 1)
        length = _FIXED_WINDOWS[window]
        start = anchor + max((current - anchor) // length, 0) * length
        return start, start + length
    except KeyError as exc:
        raise ValidationError(f"Unknown budget window {window!r}") from exc
    except (OverflowError, OSError, ValueError) as exc:
        raise ValidationError(f"Budget window out of range: {exc}") from exc


def anchored_key(window: str, anchor: datetime, now: datetime | float | None = None) -> str:
    """The ledger name of the window instance containing ``now``, counted from ``anchor``.

    Returns:
        :data:`LIFETIME_KEY` for ``lifetime``; else ``"<window>:<start as ISO 8601 UTC with
        Z>"``, e.g. ``"day:2024-05-01T00:00:00Z"``.

    Raises:
        ValidationError: As :func:`anchored_bounds`.
    """
    start, _ = anchored_bounds(window, anchor, now)
    if window == "lifetime":
        return LIFETIME_KEY
    return f"{window}:{format_utc(start)}"


def window_bounds(
    budget: BudgetWindow, now: datetime | float | None = None, *, issued_at: int | None = None
) -> tuple[datetime, datetime | None]:
    """The window instance ``[start, end)`` that contains ``now`` (docs/protocol.md section 7), as
    the token alone defines it: :func:`anchored_bounds` from :func:`token_anchor`.

    Args:
        budget: The token's budget (anything with ``window`` and ``window_start``).
        now: The current time (default: the real clock).
        issued_at: The token's ``iat``, the anchor when ``windowStart`` is missing.

    Returns:
        ``(start, end)`` as aware UTC datetimes; ``end`` is ``None`` for ``lifetime``.

    Raises:
        ValidationError: A bad ``windowStart`` or unknown window, or dates out of range.
    """
    return anchored_bounds(budget.window, token_anchor(budget, issued_at), now)


def window_key(
    budget: BudgetWindow, now: datetime | float | None = None, issued_at: int | None = None
) -> str:
    """A stable name for the window instance containing ``now`` as the token alone defines it
    (:func:`window_bounds`; ``lifetime`` included with its start). The server's ledger uses
    :func:`anchored_key` with the user's stored anchor instead.

    Args:
        budget: The token's budget (anything with ``window`` and ``window_start``).
        now: The current time (default: the real clock).
        issued_at: The token's ``iat`` (anchor when ``windowStart`` is missing).

    Returns:
        ``"<window>:<start as ISO 8601 UTC with Z>"``, e.g. ``"day:2024-05-01T00:00:00Z"``.

    Raises:
        ValidationError: As :func:`window_bounds`.
    """
    start, _ = window_bounds(budget, now, issued_at=issued_at)
    return f"{budget.window}:{format_utc(start)}"
