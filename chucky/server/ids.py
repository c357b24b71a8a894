"""Ids: UUID4 strings for sessions, messages and reservations, prefixed hex for the providers'.

Both are 122 random bits from ``os.urandom``, as :func:`uuid.uuid4`, but read 4 KiB at a time
(one ``getrandom`` call per 256 ids instead of one per id: a turn makes a dozen ids). Each
thread reads its own buffer, so two threads never hand out the same bytes.
"""

from __future__ import annotations

import os
import threading
from typing import Final

__all__ = ["new_id", "prefixed_id"]

_IDS_PER_READ: Final = 256
_VERSION_4: Final = (~(0xF000 << 64) & ~(0xC000 << 48), (0x4000 << 64) | (0x8000 << 48))


class _Entropy(threading.local):
    def __init__(self) -> None:
        self.buffer = b""
        self.offset = 0

    def take(self) -> int:
        """16 random bytes as an integer."""
        if self.offset >= len(self.buffer):
            self.buffer = os.urandom(16 * _IDS_PER_READ)
            self.offset = 0
        start = self.offset
        self.offset = start + 16
        return int.from_bytes(self.buffer[start : start + 16], "big")


_entropy = _Entropy()


def new_id() -> str:
    """A new random UUID (version 4) in its canonical form, as :func:`uuid.uuid4` gives it."""
    keep, version = _VERSION_4
    h = f"{(_entropy.take() & keep) | version:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def prefixed_id(prefix: str) -> str:
    """``<prefix>_`` and 32 random hex digits (``msg_...``, ``toolu_...``)."""
    return f"{prefix}_{_entropy.take():032x}"
