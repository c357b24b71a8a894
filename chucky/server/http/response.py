"""The response writer of one plain-HTTP exchange: a whole response, or a chunked stream.

:class:`H11Response` implements :class:`~chucky.server.http.interface.HttpResponse` on an
:class:`~chucky.server.http.channel.HttpChannel`; its states (idle, streaming, done) enforce
the call order that protocol documents.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import h11

from ... import errors

if TYPE_CHECKING:
    from .channel import HttpChannel

__all__ = ["H11Response"]


class _ResponseState(enum.Enum):
    IDLE = "idle"
    STREAMING = "streaming"
    DONE = "done"


class H11Response:
    """The :class:`HttpResponse` of one exchange on an :class:`HttpChannel`."""

    def __init__(self, channel: HttpChannel, *, head_only: bool) -> None:
        self._channel = channel
        self._head_only = head_only
        self._state = _ResponseState.IDLE

    @property
    def started(self) -> bool:
        return self._state is not _ResponseState.IDLE

    def _expect(self, state: _ResponseState, action: str) -> None:
        if self._state is not state:
            raise errors.InvalidStateError(f"cannot {action}: the response is {self._state.value}")

    async def send_json(
        self, status: int, body: object, headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        await self._send_whole(status, "application/json", data, headers)

    async def send_text(
        self,
        status: int,
        text: str,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        await self._send_whole(status, content_type, text.encode(), headers)

    async def _send_whole(
        self, status: int, content_type: str, data: bytes, headers: Mapping[str, str] | None
    ) -> None:
        self._expect(_ResponseState.IDLE, "send a response")
        channel = self._channel
        head = channel.response_head(status, content_type, headers, content_length=len(data))
        self._state = _ResponseState.DONE
        body = b"" if self._head_only else channel.encode(h11.Data(data=data))
        await channel.write(head + body + channel.encode(h11.EndOfMessage()))

    async def start_stream(
        self, status: int, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._expect(_ResponseState.IDLE, "start a stream")
        head = self._channel.response_head(status, content_type, headers, content_length=None)
        self._state = _ResponseState.STREAMING
        await self._channel.write(head)

    async def write(self, data: str | bytes) -> None:
        self._expect(_ResponseState.STREAMING, "write")
        if isinstance(data, str):
            data = data.encode()
        if data and not self._head_only:
            await self._channel.write(self._channel.encode(h11.Data(data=data)))
        elif self._channel.gone:
            raise errors.ConnectionError("the HTTP client went away")

    async def end(self) -> None:
        if self._state is _ResponseState.DONE:
            return
        self._expect(_ResponseState.STREAMING, "end the stream")
        self._state = _ResponseState.DONE
        await self._channel.write(self._channel.encode(h11.EndOfMessage()))

    async def wait_disconnected(self) -> None:
        await self._channel.wait_disconnected()
