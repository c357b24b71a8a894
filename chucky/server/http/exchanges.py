"""What the connections of one server share: the app, the limits, and the registry of exchanges.

:class:`HttpExchanges` tracks the connections websockets' ``Server`` does not know about (those
still being sniffed and those serving plain HTTP), so a shutdown can finish or cancel them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .interface import HttpApp

if TYPE_CHECKING:
    from .channel import HttpChannel
    from .connection import SniffingConnection

__all__ = ["HttpExchanges", "HttpFront"]


class HttpExchanges:
    """The plain-HTTP connections of one server, for a graceful shutdown.

    websockets' ``Server.close()`` knows nothing of them (nor of connections still being
    sniffed). Shut down in this order::

        ws_server.close()                   # stop listening, close WebSocket connections
        await exchanges.shutdown(grace)     # finish or cancel HTTP exchanges
        await ws_server.wait_closed()
    """

    def __init__(self) -> None:
        self._closing = False
        self._sniffing: set[SniffingConnection] = set()
        self._channels: dict[HttpChannel, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        """The number of plain-HTTP connections open now."""
        return len(self._channels)

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    def close(self) -> None:
        """Stop accepting: drop connections still being sniffed and idle keep-alive ones.

        Exchanges in flight run on; their responses carry ``Connection: close``. Idempotent.
        """
        self._closing = True
        for connection in list(self._sniffing):
            connection.drop()
        for channel in list(self._channels):
            channel.close_if_idle()

    async def drain(self, grace: float | None) -> bool:
        """Wait for in-flight exchanges to finish.

        Args:
            grace: Seconds to wait at most; ``None`` waits for ever.

        Returns:
            Whether every exchange finished in time.
        """
        tasks = set(self._channels.values())
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=grace)
        return not pending

    def cancel_all(self) -> None:
        """Cancel every exchange (its app sees ``CancelledError``) and drop sniffed connections."""
        for connection in list(self._sniffing):
            connection.drop()
        for task in self._channels.values():
            task.cancel()

    async def shutdown(self, grace: float | None) -> None:
        """:meth:`close`, :meth:`drain` for ``grace`` seconds, then :meth:`cancel_all`.

        Returns once every plain-HTTP connection is closed.
        """
        self.close()
        if await self.drain(grace):
            return
        self.cancel_all()
        tasks = set(self._channels.values())
        if tasks:
            await asyncio.wait(tasks)

    # Called by the connections.

    def _add_sniffing(self, connection: SniffingConnection) -> None:
        self._sniffing.add(connection)

    def _discard_sniffing(self, connection: SniffingConnection) -> None:
        self._sniffing.discard(connection)

    def _add_channel(self, channel: HttpChannel, task: asyncio.Task[None]) -> None:
        self._channels[channel] = task
        task.add_done_callback(lambda _: self._channels.pop(channel, None))


@dataclass(frozen=True)
class HttpFront:
    """What every connection of one server shares."""

    app: HttpApp
    exchanges: HttpExchanges
    max_head_bytes: int
    max_body_bytes: int
    open_timeout: float | None
    server_header: str | None
