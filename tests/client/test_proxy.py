"""The TCP proxy of the reconnect tests (tests/support/proxy.py), on its own: an echo server
behind it, plain sockets in front."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from support.proxy import TcpProxy
from support.timing import ticks

PATIENCE = ticks(100)


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1; yields its port."""
    handlers: set[asyncio.Task[None]] = set()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
            handlers.discard(task)

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@asynccontextmanager
async def proxied() -> AsyncIterator[TcpProxy]:
    async with echo_server() as port, TcpProxy("127.0.0.1", port) as proxy:
        yield proxy


async def client(proxy: TcpProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(PATIENCE):
        return await reader.readexactly(n)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What arrives until the connection ends (a reset counts as an end)."""
    received = b""
    async with asyncio.timeout(PATIENCE):
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                return received
            if not data:
                return received
            received += data


async def test_forwards_both_ways_and_counts() -> None:
    async with proxied() as proxy:
        reader, writer = await client(proxy)
        writer.write(b"hello")
        assert await read_exactly(reader, 5) == b"hello"
        assert proxy.accepted == 1
        assert proxy.live == 1
        assert proxy.bytes == {"up": 5, "down": 5}
        writer.close()
        await writer.wait_closed()


async def test_cut_resets_every_live_connection() -> None:
    async with proxied() as proxy:
        first = await client(proxy)
        second = await client(proxy)
        await proxy.wait_accepted(2)
        for _, writer in (first, second):
            writer.write(b"x")
        for reader, _ in (first, second):
            assert await read_exactly(reader, 1) == b"x"
        assert proxy.cut() == 2
        for reader, writer in (first, second):
            assert await read_until_closed(reader) == b""
            writer.transport.abort()
        assert proxy.cuts == 2
        assert proxy.live == 0
        # New connections are served as before.
        reader, writer = await client(proxy)
        writer.write(b"again")
        assert await read_exactly(reader, 5) == b"again"
        writer.transport.abort()


async def test_cut_after_forwards_exactly_n_bytes_downstream() -> None:
    async with proxied() as proxy:
        reader, writer = await client(proxy)
        writer.write(b"ab")
        assert await read_exactly(reader, 2) == b"ab"
        proxy.cut_after(3, "down")
        writer.write(b"0123456789")
        assert await read_until_closed(reader) == b"012"
        await proxy.wait_cuts(1)
        assert proxy.bytes["down"] == 5
        writer.transport.abort()


async def test_cut_after_upstream_bytes() -> None:
    async with proxied() as proxy:
        reader, writer = await client(proxy)
        proxy.cut_after(4, "up")
        writer.write(b"abcdefgh")
        # The echo server got exactly 4 bytes and may have echoed them before the cut.
        assert (await read_until_closed(reader)) in (b"", b"abcd")
        await proxy.wait_cuts(1)
        assert proxy.bytes["up"] == 4
        writer.transport.abort()


async def test_cut_when_a_chunk_matches() -> None:
    async with proxied() as proxy:
        reader, writer = await client(proxy)
        proxy.cut_when(lambda direction, data: direction == "down" and b"STOP" in data)
        writer.write(b"go")
        assert await read_exactly(reader, 2) == b"go"
        writer.write(b"STOP")
        assert await read_until_closed(reader) == b""
        assert proxy.cuts == 1
        writer.transport.abort()


async def test_stall_holds_data_without_closing_and_resume_releases_it() -> None:
    async with proxied() as proxy:
        reader, writer = await client(proxy)
        proxy.stall()
        writer.write(b"held")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(ticks(4)):
                await reader.readexactly(4)
        assert proxy.live == 1 and proxy.cuts == 0
        proxy.resume()
        assert await read_exactly(reader, 4) == b"held"
        writer.transport.abort()


async def test_delay_holds_each_chunk() -> None:
    async with proxied() as proxy:
        reader, writer = await client(proxy)
        proxy.delay(ticks(4))
        loop = asyncio.get_running_loop()
        began = loop.time()
        writer.write(b"slow")
        assert await read_exactly(reader, 4) == b"slow"
        # Up and down are each held once: at least the delay (not asserted to the tick).
        assert loop.time() - began >= ticks(4)
        proxy.delay(0)
        writer.transport.abort()


async def test_refuse_accepts_and_resets_new_connections() -> None:
    async with proxied() as proxy:
        proxy.refuse(True)
        reader, writer = await client(proxy)
        assert await read_until_closed(reader) == b""
        writer.transport.abort()
        assert (proxy.accepted, proxy.refused, proxy.live) == (1, 1, 0)
        proxy.refuse(False)
        reader, writer = await client(proxy)
        writer.write(b"ok")
        assert await read_exactly(reader, 2) == b"ok"
        writer.transport.abort()


async def test_closing_the_proxy_ends_every_task_and_connection() -> None:
    before = asyncio.all_tasks()
    async with echo_server() as port:
        async with TcpProxy("127.0.0.1", port) as proxy:
            reader, writer = await client(proxy)
            writer.write(b"x")
            assert await read_exactly(reader, 1) == b"x"
            proxy.stall()  # a pump waits on purpose: it must still end
            writer.write(b"y")
        assert await read_until_closed(reader) == b""
        writer.transport.abort()
    assert asyncio.all_tasks() - before == set()


async def test_a_target_that_is_gone_resets_the_client() -> None:
    async with echo_server() as port:
        pass  # closed: nothing listens on the port any more
    async with TcpProxy("127.0.0.1", port) as proxy:
        reader, writer = await client(proxy)
        assert await read_until_closed(reader) == b""
        writer.transport.abort()
        assert proxy.accepted == 1 and proxy.live == 0
