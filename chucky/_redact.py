"""Keep tokens and secrets out of logs (STYLE.md 7)."""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["RedactingFilter", "redact", "redacting_logger"]

_PATTERNS: Final = (
    re.compile(r"(token=)[^&\s'\"]+", re.I),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I),
    re.compile(r"(hk_live_)[0-9a-f]{4,}", re.I),
)


def redact(text: str) -> str:
    """``text`` with token query values, bearer tokens and project secrets masked."""
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1<redacted>", text)
    return text


class RedactingFilter(logging.Filter):
    """Masks tokens in a record's message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def redacting_logger(name: str) -> logging.Logger:
    """A logger (for a library such as websockets) whose records are redacted first."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
