"""Keep tokens and secrets out of logs (STYLE.md 7).

Every logger of the package is made with :func:`redacting_logger`, and the server adds the
filter to the loggers of the libraries it runs (:func:`redact_library_loggers`): a filter acts
on the records its own logger creates, not on those a child logger propagates, so each logger
carries one. The filter masks the message, an exception's text and a stack.
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = [
    "LIBRARY_LOGGERS",
    "RedactingFilter",
    "redact",
    "redact_library_loggers",
    "redacting_logger",
]

_PATTERNS: Final = (
    re.compile(r"(token=)[^&\s'\"]+", re.I),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I),
    re.compile(r"(hk_live_)[0-9a-f]{4,}", re.I),
    # A JWT anywhere (a JSON body, a frame, a repr of bytes): header and payload are base64url
    # of JSON objects, so both start with "eyJ".
    re.compile(r"()eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*"),
)

LIBRARY_LOGGERS: Final = ("websockets", "websockets.server", "websockets.client", "asyncio")
"""Loggers of libraries whose records may quote a request line, a header or a frame."""


def redact(text: str) -> str:
    """``text`` with token query values, bearer tokens, JWTs and project secrets masked."""
    for pattern in _PATTERNS:
        text = pattern.sub(r"\1<redacted>", text)
    return text


class RedactingFilter(logging.Filter):
    """Masks tokens in a record (its message, its exception's text, its stack) before any
    handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # What a Formatter would print, masked; formatters use exc_text when it is set.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redacting_logger(name: str) -> logging.Logger:
    """The logger ``name``, its records redacted first."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger


def redact_library_loggers() -> None:
    """Redact the records of :data:`LIBRARY_LOGGERS` too (idempotent)."""
    for name in LIBRARY_LOGGERS:
        redacting_logger(name)
