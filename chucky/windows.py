"""Budget windows (PROTOCOL.md section 7): when a token's budget resets.

``hour``, ``day`` and ``week`` are fixed-length periods counted from ``windowStart``; ``month``
is a calendar month on the ``windowStart`` day-of-month; ``lifetime`` never resets. Usage is keyed
by (project, user, window instance): :func:`window_key` names the instance.

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
    "WINDOWS",
    "BudgetWindow",
    "Window",
    "as_datetime",
    "format_utc",
    "parse_window_start",
    "to_utc",
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


def window_bounds(
    budget: BudgetWindow, now: datetime | float | None = None, *, issued_at: int | None = None
) -> tuple[datetime, datetime | None]:
    """The window instance ``[start, end)`` that contains ``now`` (PROTOCOL.md section 7).

    ``hour``, ``day`` and ``week`` are fixed-length periods counted from the anchor; ``month``
    is a calendar month on the anchor's day-of-month and time (clamped to short months: anchor
    Jan 31 gives Feb 28/29, then Mar 31); ``lifetime`` is ``(anchor, None)``. The anchor is
    ``windowStart``, else ``issued_at``, else the Unix epoch. If ``now`` is before the anchor the
    first window is returned.

    Args:
        budget: The token's budget (anything with ``window`` and ``window_start``).
        now: The current time (default: the real clock).
        issued_at: The token's ``iat``, the anchor when ``windowStart`` is missing.

    Returns:
        ``(start, end)`` as aware UTC datetimes; ``end`` is ``None`` for ``lifetime``.

    Raises:
        ValidationError: A bad ``windowStart`` or unknown window, or dates out of range.
    """
    current = as_datetime(now)
    anchor = _EPOCH
    if budget.window_start is not None:
        anchor = parse_window_start(budget.window_start)
    try:
        if budget.window_start is None and issued_at is not None:
            anchor = datetime.fromtimestamp(issued_at, UTC)
        if budget.window == "lifetime":
            return anchor, None
        if budget.window == "month":
            months = (current.year - anchor.year) * 12 + current.month - anchor.month
            if months > 0 and _add_months(anchor, months) > current:
                months -= 1
            months = max(months, 0)
            return _add_months(anchor, months), _add_months(anchor, months + 1)
        length = _FIXED_WINDOWS[budget.window]
        start = anchor + max((current - anchor) // length, 0) * length
        return start, start + length
    except KeyError as exc:
        raise ValidationError(f"Unknown budget window {budget.window!r}") from exc
    except (OverflowError, OSError, ValueError) as exc:
        raise ValidationError(f"Budget window out of range: {exc}") from exc


def window_key(
    budget: BudgetWindow, now: datetime | float | None = None, issued_at: int | None = None
) -> str:
    """A stable name for the window instance containing ``now``, for usage ledger keys.

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
