"""The default limits of the plain-HTTP front: request head and body sizes, the open timeout."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_HEAD_BYTES", "DEFAULT_OPEN_TIMEOUT"]

DEFAULT_MAX_HEAD_BYTES: Final = 80 * 1024
"""Request line plus headers: room for a 64 KiB URL (docs/protocol.md section 1) and 16 KiB more."""

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""The largest request body accepted; longer ones are answered 413."""

DEFAULT_OPEN_TIMEOUT: Final = 10.0
"""Seconds a client has to send a complete request head (and, for HTTP, the body)."""
