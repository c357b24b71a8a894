"""The request head sniffer (pure: bytes in, verdict out).

It decides, from the first bytes of a connection, whether websockets or plain HTTP serves it
(see :mod:`chucky.server.http.connection`).
"""

from __future__ import annotations

import enum
import re
from typing import Final

from .limits import DEFAULT_MAX_HEAD_BYTES

__all__ = ["HeadKind", "RequestHeadSniffer"]


class HeadKind(enum.Enum):
    """The verdict of :class:`RequestHeadSniffer` on what has arrived so far."""

    INCOMPLETE = "incomplete"
    """No blank line yet and still under the size cap: wait for more bytes."""
    WEBSOCKET = "websocket"
    """A complete head asking for a WebSocket upgrade: websockets handles the connection."""
    HTTP = "http"
    """A complete head of anything else (including malformed heads): plain HTTP handles it."""
    TOO_LARGE = "too_large"
    """The head is longer than the cap; plain HTTP answers 431."""


_HEAD_END: Final = re.compile(rb"\n\r?\n")


class RequestHeadSniffer:
    """Buffers the start of a connection until the request head is complete, then classifies it.

    Scanning is incremental, so a client that sends one byte at a time costs linear work.

    Args:
        max_head_bytes: The size cap of the head (request line plus headers).
    """

    def __init__(self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES) -> None:
        self.max_head_bytes = max_head_bytes
        self._buffer = bytearray()
        # RFC 9112 section 2.2: a server SHOULD ignore empty lines before the request line.
        self._start = 0
        self._skipping = True
        self._scanned = 0

    @property
    def buffered(self) -> bytes:
        """Everything received, less the empty lines before the request line."""
        return bytes(self._buffer[self._start :])

    def feed(self, data: bytes) -> HeadKind:
        """Add received bytes and classify what has arrived so far."""
        self._buffer += data
        if self._skipping:
            while self._start < len(self._buffer) and self._buffer[self._start] in b"\r\n":
                self._start += 1
            if self._start < len(self._buffer):
                self._skipping = False
                self._scanned = self._start
        if not self._skipping:
            match = _HEAD_END.search(self._buffer, max(self._start, self._scanned - 2))
            self._scanned = len(self._buffer)
            if match is not None:
                if match.end() - self._start > self.max_head_bytes:
                    return HeadKind.TOO_LARGE
                head = bytes(self._buffer[self._start : match.start()])
                return HeadKind.WEBSOCKET if _asks_for_websocket(head) else HeadKind.HTTP
        if len(self._buffer) - self._start > self.max_head_bytes:
            return HeadKind.TOO_LARGE
        return HeadKind.INCOMPLETE


def _asks_for_websocket(head: bytes) -> bool:
    """Whether a request head is a WebSocket upgrade websockets would consider (RFC 6455 4.1)."""
    request_line, *header_lines = head.split(b"\n")
    if request_line.split(b" ", 1)[0] != b"GET":
        return False
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"upgrade":
            tokens = (token.strip().lower() for token in value.split(b","))
            if b"websocket" in tokens:
                return True
    return False
