"""Runs client-side tool calls concurrently, each answered exactly once.

The connection's reader task hands every ``tool_call`` frame to :meth:`ToolRunner.submit`, which
returns at once: the call runs in its own task, so a slow tool never stalls the socket (the
official client ran handlers inline in its reader) and several calls of one model response run
side by side (docs/protocol.md section 6: the server accepts results in any order).

Every call ends in exactly one ``send_result(call_id, result)``: unknown tool, invalid arguments,
a handler exception and a handler timeout all become ``isError`` results with a readable text.
Two things end a call without an answer:

* :meth:`ToolRunner.cancel` / :meth:`ToolRunner.cancel_all`: the server abandoned the call (it
  interrupted the turn, the call timed out on its side, the turn ended) and no longer waits
  for its result; a late result would only earn an error frame;
* :meth:`ToolRunner.aclose`: the session is going away.

A call moves through the states of :class:`CallState`::

    RUNNING --handler done--> ANSWERING --result sent (or the send failed)--> gone
       \\--cancel()--> CANCELLED --task done--> gone

Only a RUNNING call can be cancelled: once its handler has finished, its result is on its way
and is sent exactly once (a server that abandoned the call meanwhile drops it quietly,
docs/protocol.md section 10).

A handler runs at most once per ``callId`` (docs/protocol.md section 10, *tool calls across a
reconnect*): a server that resumed a session sends a pending ``tool_call`` again, since its
result may have been lost with the socket. The runner remembers the last
:data:`REMEMBERED_CALLS` ``callId``s it was given: a ``tool_call`` for one whose handler has
returned is answered again with the same result, without running the handler; one whose
handler is still running (or was cancelled) is ignored.

Cancelling an async handler raises :class:`asyncio.CancelledError` in it at its current
``await`` (its ``finally`` blocks run). A sync handler runs in a worker thread, which Python
cannot stop: the call is over at once for the runner, the thread runs on to the end, and its
return value (or exception) is discarded. The same holds for a handler that catches the
``CancelledError`` and returns anyway: its value is discarded.
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from chucky.errors import ValidationError
from chucky.messages import ResultMessage
from chucky.tools import ToolRegistry, ToolResult, error_result

from ._redact import redacting_logger

if TYPE_CHECKING:
    from .client.hooks import ToolHooks

__all__ = ["REMEMBERED_CALLS", "CallState", "ToolRunner"]

logger = redacting_logger("chucky.client.tools")

SendResult = Callable[[str, ToolResult], Awaitable[None]]

REMEMBERED_CALLS: Final = 1024
"""How many ``callId``s (and results) a runner remembers to run each handler at most once."""


class CallState(enum.Enum):
    """Where a call in flight is (see the module docstring)."""

    RUNNING = "running"  # the handler runs (or is about to): cancel() stops it
    ANSWERING = "answering"  # the handler finished; its result is being sent
    CANCELLED = "cancelled"  # abandoned: the task is being cancelled, nothing will be sent


@dataclass(eq=False, slots=True)
class _Call:
    call_id: str
    tool_name: str
    state: CallState = CallState.RUNNING


class ToolRunner:
    """Executes the tool calls of one session, concurrently, with a per-call timeout.

    Each call is answered once, unless it is cancelled (:meth:`cancel`, :meth:`cancel_all`:
    the server abandoned it) or the runner is closed (:meth:`aclose`).

    Args:
        registry: The session's client tools.
        send_result: Sends a ``tool_result`` frame; called once per call with its ``callId``.
        timeout: Seconds a handler may run before its call is answered with a timeout error;
            ``None`` for no limit.
        hooks: ``can_use_tool`` and the ``PreToolUse`` / ``PostToolUse`` / ``Stop`` hooks run
            around each call (:mod:`chucky.client.hooks`).
        session_id: Tells the hooks the session's id.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        send_result: SendResult,
        *,
        timeout: float | None = 60.0,
        hooks: ToolHooks | None = None,
        session_id: Callable[[], str | None] | None = None,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self.hooks = hooks if hooks else None
        self._session_id = session_id or (lambda: None)
        self._send_result = send_result
        # Every call in flight, by its task. Looked up by callId with a scan: a handful of
        # calls are in flight at most, and a server that repeats a callId gets both cancelled.
        self._calls: dict[asyncio.Task[None], _Call] = {}
        # Every callId submitted (the most recent REMEMBERED_CALLS): its result once its
        # handler returned, None before that (or if it was cancelled).
        self._seen: OrderedDict[str, ToolResult | None] = OrderedDict()
        self._closed = False

    @property
    def pending(self) -> int:
        """The number of calls in flight (running or sending their result)."""
        return len(self._calls)

    @property
    def running(self) -> list[str]:
        """The ``callId`` of every call whose handler is still running, oldest first."""
        return [call.call_id for call in self._calls.values() if call.state is CallState.RUNNING]

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
        call = _Call(call_id, tool_name)
        if call_id in self._seen:
            # Sent again (a resumed session): never run a handler twice for one callId.
            result = self._seen[call_id]
            if result is None:
                logger.debug("Ignoring tool call %s again: running or abandoned", call_id)
                return
            call.state = CallState.ANSWERING
            coro = self._answer_again(call, result)
        else:
            self._seen[call_id] = None
            if len(self._seen) > REMEMBERED_CALLS:
                self._seen.popitem(last=False)
            coro = self._run(call, arguments)
        task = asyncio.get_running_loop().create_task(coro, name=f"chucky-tool-call-{call_id}")
        self._calls[task] = call
        task.add_done_callback(self._forget)

    async def _answer_again(self, call: _Call, result: ToolResult) -> None:
        logger.debug("Answering tool call %s again with its result", call.call_id)
        await self._send(call, result)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)

    async def _run(self, call: _Call, arguments: Any) -> None:
        if self.hooks is None:
            result = await self.execute(call.tool_name, arguments)
        else:
            result = await self.hooks.run_tool(
                call.tool_name,
                call.call_id,
                arguments,
                self.execute,
                session_id=self._session_id(),
            )
        if call.state is not CallState.RUNNING:
            # Cancelled, but the handler swallowed the CancelledError and returned.
            logger.debug("Discarding the result of cancelled tool call %s", call.call_id)
            return
        call.state = CallState.ANSWERING
        if call.call_id in self._seen:
            self._seen[call.call_id] = result
        await self._send(call, result)

    async def _send(self, call: _Call, result: ToolResult) -> None:
        try:
            await self._send_result(call.call_id, result)
        except Exception:  # the connection is gone: nobody is waiting for this answer any more
            logger.debug("Could not send the result of tool call %s", call.call_id, exc_info=True)

    def cancel(self, call_id: str, *, reason: str = "cancelled") -> bool:
        """Stop the call ``call_id`` without answering it: the server abandoned it.

        Returns at once; the handler's cleanup runs in its own task (:meth:`wait_idle` or
        :meth:`aclose` wait for it). An async handler gets :class:`asyncio.CancelledError`; a
        sync handler's thread runs on and its return value is discarded. A call whose handler
        already finished is not affected (its result is due and is sent once); an unknown
        ``call_id`` is not an error.

        Args:
            call_id: The ``callId`` of the ``tool_call`` frame.
            reason: Why (``interrupted``, ``timeout``, ``turn_ended``...); logged and given
                as the ``CancelledError``'s message.

        Returns:
            Whether a running call was cancelled.
        """
        found = False
        for task, call in list(self._calls.items()):
            if call.call_id == call_id and call.state is CallState.RUNNING:
                self._cancel(task, call, reason)
                found = True
        if not found:
            logger.debug("No running tool call %s to cancel (%s)", call_id, reason)
        return found

    def cancel_all(self, *, reason: str = "cancelled") -> list[str]:
        """Stop every call whose handler is still running, without answering them.

        Calls already sending their result are not affected. Returns at once, like
        :meth:`cancel`.

        Args:
            reason: Why (``interrupted``, ``turn_ended``, ``connection_lost``...); logged and
                given as the ``CancelledError``'s message.

        Returns:
            The ``callId`` of each call cancelled.
        """
        cancelled = []
        for task, call in list(self._calls.items()):
            if call.state is CallState.RUNNING:
                self._cancel(task, call, reason)
                cancelled.append(call.call_id)
        return cancelled

    def _cancel(self, task: asyncio.Task[None], call: _Call, reason: str) -> None:
        call.state = CallState.CANCELLED
        task.cancel(f"tool call {call.call_id} abandoned: {reason}")
        logger.info("Cancelled tool call %s (%s): %s", call.call_id, call.tool_name, reason)

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
                raise  # we are being cancelled (cancel, aclose)
            return self._failed(found.name, exc)  # the handler raised it on its own

    def _failed(self, name: str, exc: BaseException) -> ToolResult:
        logger.warning("Tool %r raised %s", name, type(exc).__name__, exc_info=exc)
        return error_result(f"Tool {name!r} failed: {type(exc).__name__}: {exc}")

    async def turn_ended(self, result: ResultMessage) -> None:
        """Run the ``Stop`` hooks (if any) for a turn that ended with ``result``; never raises."""
        if self.hooks is not None and self.hooks.has_stop:
            await self.hooks.run_stop(result, session_id=self._session_id())

    async def wait_idle(self) -> None:
        """Wait until no call is in flight (calls submitted meanwhile are waited for too)."""
        while self._calls:
            await asyncio.wait(set(self._calls))

    async def aclose(self) -> None:
        """Cancel every call in flight and wait for them to finish. Idempotent.

        Cancelled calls are not answered. If the caller is cancelled while waiting, the calls
        are still cancelled and finish on their own (:func:`asyncio.wait` does not cancel what
        it waits for).
        """
        self._closed = True
        tasks = set(self._calls)
        for task, call in self._calls.items():
            call.state = CallState.CANCELLED
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
