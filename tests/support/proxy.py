"""A TCP proxy under test control: cut, stall and delay the connections between a client and a
server, at a moment the test chooses (issue 13: chaos tests of reconnect).

::

    async with TcpProxy("127.0.0.1", server_port) as proxy:
        client = Chucky(token, proxy.url("/ws"))
        ...
        proxy.cut()                              # every live connection, now
        proxy.cut_after(200, "down")             # after 200 more server->client bytes
        proxy.cut_when(lambda d, data: b'"seq":5' in data)   # before the chunk that matches
        proxy.stall(); proxy.resume()            # a half-open link: nothing flows, nothing closes
        proxy.delay(0.2)                         # each chunk waits 0.2 s
        proxy.refuse(True)                       # new connections are accepted and dropped
        await proxy.wait_accepted(2)             # the second connection arrived

A cut aborts both sockets of every pair with ``SO_LINGER`` 0: each side sees a reset (or an
end of file), never a WebSocket close frame -- as when a network path dies. Directions are
``"up"`` (client to server) and ``"down"`` (server to client). Every task is owned and ended
by the ``async with`` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

__all__ = ["Direction", "TcpProxy"]

Direction = Literal["up", "down"]
CutWhen = Callable[[Direction, bytes], bool]

_CHUNK = 65536


@dataclass(eq=False)
class _Pair:
    """One proxied connection: the client's socket and the one to the target."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cut: bool = False

    def abort(self) -> None:
        self.cut = True
        for writer in (self.client, self.target):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            # Linger 0: close() sends a RST, not a FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _flushed(writer: asyncio.StreamWriter) -> None:
    """Wait until what was written left the process (drain() waits only above a high mark)."""
    writer.transport.set_write_buffer_limits(high=0)  # drain() now waits for an empty buffer
    with contextlib.suppress(ConnectionError):
        await writer.drain()


class TcpProxy:
    """Forwards TCP connections from ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Attributes:
        accepted: Connections accepted so far (refused ones included).
        refused: Connections refused (``refuse(True)``).
        cuts: Connection pairs cut.
        bytes: Bytes forwarded so far, per direction.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self.refused = 0
        self.cuts = 0
        self.bytes: dict[Direction, int] = {"up": 0, "down": 0}
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._delay = 0.0
        self._refusing = False
        self._cut_when: CutWhen | None = None
        self._byte_trigger: tuple[Direction, int] | None = None
        self._changed = asyncio.Condition()

    # -- control ---------------------------------------------------------------------------------

    def url(self, path: str = "/ws") -> str:
        """The ``ws://`` URL of the proxy, with ``path``."""
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def live(self) -> int:
        """Connection pairs open now."""
        return len(self._pairs)

    def cut(self) -> int:
        """Abort every live connection now (a reset on both sides); returns how many."""
        pairs = list(self._pairs)
        for pair in pairs:
            self._cut(pair)
        return len(pairs)

    def cut_after(self, n_bytes: int, direction: Direction = "down") -> None:
        """Cut every live connection once ``n_bytes`` more bytes went ``direction`` (the
        first ``n_bytes`` are forwarded, exactly; the rest of that chunk is not)."""
        self._byte_trigger = (direction, self.bytes[direction] + n_bytes)

    def cut_when(self, predicate: CutWhen | None) -> None:
        """Cut every live connection before forwarding the first chunk for which
        ``predicate(direction, data)`` is true (once; ``None`` disarms). A chunk is what one
        read returned: a frame may span two chunks on a loaded machine, so match short
        markers."""
        self._cut_when = predicate

    def stall(self) -> None:
        """Stop forwarding, in both directions, without closing anything (a half-open link)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again, the data held back first."""
        self._flowing.set()

    def delay(self, seconds: float) -> None:
        """Hold each chunk ``seconds`` before forwarding it (0: no delay)."""
        self._delay = seconds

    def refuse(self, refusing: bool = True) -> None:
        """Accept new connections and reset them at once (or, with ``False``, serve them)."""
        self._refusing = refusing

    async def wait_accepted(self, n: int, within: float = 10.0) -> None:
        """Wait until ``n`` connections were accepted in all."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.accepted >= n)

    async def wait_live(self, n: int, within: float = 10.0) -> None:
        """Wait until exactly ``n`` connection pairs are open."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.live == n)

    async def wait_cuts(self, n: int, within: float = 10.0) -> None:
        """Wait until ``n`` pairs were cut in all."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.cuts >= n)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, reset every connection and end every task. Idempotent."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._flowing.set()
        for pair in list(self._pairs):
            pair.abort()
        tasks = list(self._handlers)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- forwarding ------------------------------------------------------------------------------

    def _cut(self, pair: _Pair) -> None:
        if pair.cut:
            return
        pair.abort()
        self._pairs.discard(pair)
        self.cuts += 1
        self._notify()

    def _cut_all(self) -> None:
        for pair in list(self._pairs):
            self._cut(pair)

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio (3.11) logs an error for a connection callback task that ends cancelled:
        # aclose()'s cancellation ends it normally instead.
        with contextlib.suppress(asyncio.CancelledError):
            await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            self.accepted += 1
            self._notify()
            if self._refusing:
                self.refused += 1
                _reset(writer)
                return
            try:
                target_reader, target_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            pair = _Pair(writer, target_writer)
            self._pairs.add(pair)
            self._notify()
            up = asyncio.create_task(self._pump(pair, reader, target_writer, "up"))
            down = asyncio.create_task(self._pump(pair, target_reader, writer, "down"))
            pair.tasks = [up, down]
            try:
                await asyncio.gather(up, down)
            finally:
                for pump in pair.tasks:
                    pump.cancel()
                await asyncio.gather(*pair.tasks, return_exceptions=True)
                self._pairs.discard(pair)
                for side in (pair.client, pair.target):
                    side.transport.abort()
                self._notify()
        finally:
            self._handlers.discard(task)

    async def _pump(
        self,
        pair: _Pair,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
    ) -> None:
        try:
            while not pair.cut:
                data = await reader.read(_CHUNK)
                if not data:
                    # An orderly end of this direction: pass it on (a half close).
                    if writer.can_write_eof() and not writer.transport.is_closing():
                        writer.write_eof()
                    return
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if pair.cut:
                    return
                predicate = self._cut_when
                if predicate is not None and predicate(direction, data):
                    self._cut_when = None
                    self._cut_all()
                    return
                trigger = self._byte_trigger
                if trigger is not None and trigger[0] == direction:
                    room = trigger[1] - self.bytes[direction]
                    if room <= len(data):
                        self._byte_trigger = None
                        if room > 0:
                            writer.write(data[:room])
                            self.bytes[direction] += room
                            await _flushed(writer)
                        self._cut_all()
                        return
                writer.write(data)
                self.bytes[direction] += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
