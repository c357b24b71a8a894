"""Runs client-side tool calls concurrently, each answered exactly once.

The connection's reader task hands every ``tool_call`` frame to :meth:`ToolRunner.submit`, which
returns at once: the call runs in its own task, so a slow tool never stalls the socket (the
official client ran handlers inline in its reader) and several calls of one model response run
side by side (PROTOCOL.md section 6: the server accepts results in any order).

Every call ends in exactly one ``send_result(call_id, result)``: unknown tool, invalid arguments,
a handler exception and a handler timeout all become ``isError`` results with a readable text.
Only :meth:`ToolRunner.aclose` (the session is going away) ends a call without an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from chucky.errors import ValidationError
from chucky.tools import ToolRegistry, ToolResult, error_result

__all__ = ["ToolRunner"]

logger = logging.getLogger("chucky.client.tools")

SendResult = Callable[[str, ToolResult], Awaitable[None]]


class ToolRunner:
    """Executes the tool calls of one session, concurrently, with a per-call timeout.

    Args:
        registry: The session's client tools.
        send_result: Sends a ``tool_result`` frame; called once per call with its ``callId``.
        timeout: Seconds a handler may run before its call is answered with a timeout error;
            ``None`` for no limit.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        send_result: SendResult,
        *,
        timeout: float | None = 60.0,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self._send_result = send_result
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def pending(self) -> int:
        """The number of calls in flight (running or sending their result)."""
        return len(self._tasks)

    def submit(self, call_id: str, tool_name: str, arguments: Any) -> None:
        """Start a call in its own task and return immediately.

        Must be called from a running event loop. After :meth:`aclose` the call is dropped
        (logged at DEBUG): the session is closing and the answer could not be delivered.

        Args:
            call_id: The ``callId`` of the ``tool_call`` frame.
            tool_name: The tool name (bare, or ``mcp__<server>__<tool>``).
            arguments: The ``input`` of the frame (``None`` counts as ``{}``).
        """
        if self._closed:
            logger.debug("Dropping tool call %s (%s): the runner is closed", call_id, tool_name)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(call_id, tool_name, arguments), name=f"chucky-tool-call-{call_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, call_id: str, tool_name: str, arguments: Any) -> None:
        result = await self.execute(tool_name, arguments)
        try:
            await self._send_result(call_id, result)
        except Exception:  # the connection is gone: nobody is waiting for this answer any more
            logger.debug("Could not send the result of tool call %s", call_id, exc_info=True)

    async def execute(self, tool_name: str, arguments: Any) -> ToolResult:
        """Run one call to completion and return its result; never raises (except on
        cancellation).

        Args:
            tool_name: The tool name (bare, or ``mcp__<server>__<tool>``).
            arguments: The call's arguments (``None`` counts as ``{}``).

        Returns:
            The handler's result, or an ``isError`` result describing what went wrong.
        """
        found = self.registry.get(tool_name) if isinstance(tool_name, str) else None
        if found is None:
            available = ", ".join(self.registry.names) or "none"
            return error_result(f"Unknown tool {tool_name!r}. Available tools: {available}")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, Mapping):
            return error_result(
                f"Invalid arguments for tool {found.name!r}: expected an object, "
                f"got {type(arguments).__name__}"
            )
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                # On timeout the handler's task is cancelled. A sync handler runs in a worker
                # thread, which cannot be killed: it runs on, and its return value is discarded.
                return await found.call(arguments)
        except ValidationError as exc:
            return error_result(exc.message)
        except TimeoutError as exc:
            if deadline.expired():
                return error_result(f"Tool {found.name!r} timed out after {self.timeout:g} s")
            return self._failed(found.name, exc)
        except Exception as exc:
            return self._failed(found.name, exc)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled (aclose)
            return self._failed(found.name, exc)  # the handler raised it on its own

    def _failed(self, name: str, exc: BaseException) -> ToolResult:
        logger.warning("Tool %r raised %s", name, type(exc).__name__, exc_info=exc)
        return error_result(f"Tool {name!r} failed: {type(exc).__name__}: {exc}")

    async def wait_idle(self) -> None:
        """Wait until no call is in flight (calls submitted meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def aclose(self) -> None:
        """Cancel every call in flight and wait for them to finish. Idempotent.

        Cancelled calls are not answered. If the caller is cancelled while waiting, the calls
        are still cancelled and finish on their own (:func:`asyncio.wait` does not cancel what
        it waits for).
        """
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
