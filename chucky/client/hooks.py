"""Permissions and hooks around client tool calls: ``can_use_tool`` and ``PreToolUse`` /
``PostToolUse`` / ``Stop`` hooks, in the shape of claude-agent-sdk.

The client's :class:`~chucky.tool_runner.ToolRunner` runs every call the server sends through
:meth:`ToolHooks.run_tool`, in this order::

    PreToolUse hooks (in registration order)
       a hook answers "deny"            -> the call ends with an error result (the reason)
       a hook answers "allow"           -> can_use_tool is skipped
       a hook gives "updatedInput"      -> the arguments are replaced (later hooks see them)
    can_use_tool(name, input, context)  (unless a hook allowed the call)
       PermissionResultDeny(message)    -> the call ends with an error result (the message)
       PermissionResultAllow(updated_input=...) -> the arguments are replaced
    the tool's handler
    PostToolUse hooks (in registration order)
       {"decision": "block", "reason"}  -> the result becomes an error result (the reason)
       "additionalContext"              -> appended to the result as a text item

A denial reaches the model as an ``isError`` tool result, so the model sees why. A hook or a
``can_use_tool`` that raises or passes its timeout fails closed: the call ends with an error
result naming it. ``Stop`` hooks run when a turn's ``result`` arrives, before the application
reads it (the socket's reader waits for them; keep them short); what they return is ignored
(the turn is over on the server) and an exception is logged.

Callbacks may be ``async def`` or plain functions.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

from .._redact import redacting_logger
from ..errors import ValidationError
from ..messages import ResultMessage
from ..tools import ToolResult, error_result

__all__ = [
    "CanUseTool",
    "HookCallback",
    "HookContext",
    "HookEvent",
    "HookMatcher",
    "PermissionResult",
    "PermissionResultAllow",
    "PermissionResultDeny",
    "ToolHooks",
    "ToolPermissionContext",
]

logger = redacting_logger("chucky.client.hooks")

HookEvent: TypeAlias = Literal["PreToolUse", "PostToolUse", "Stop"]
"""The hook events this client runs."""

_EVENTS: frozenset[str] = frozenset(get_args(HookEvent))


@dataclass(frozen=True, slots=True)
class HookContext:
    """What a hook callback is told beside its input.

    Attributes:
        session_id: The session the call belongs to (``None`` before the server named it).
    """

    session_id: str | None


HookCallback: TypeAlias = Callable[
    [dict[str, Any], str | None, HookContext],
    Awaitable[Mapping[str, Any] | None] | Mapping[str, Any] | None,
]
"""``hook(input_data, tool_use_id, context) -> dict | None`` (sync or async)."""


@dataclass(frozen=True, slots=True)
class HookMatcher:
    """Hook callbacks and the tools they apply to.

    Args:
        matcher: A regular expression the tool's name must match in full (``"greet"``,
            ``"add|sub"``) -- the name of the ``tool_call`` frame (the bare tool name;
            for an ``mcp__<server>__<tool>`` name, its bare part is tried too). ``None`` (or
            ``"*"``) matches every tool. Ignored for ``Stop``.
        hooks: The callbacks, run in order.
        timeout: Seconds each callback may take (``None``: no limit).
    """

    matcher: str | None = None
    hooks: Sequence[HookCallback] = field(default_factory=list)
    timeout: float | None = 60.0

    def matches(self, tool_name: str) -> bool:
        """Whether this matcher applies to ``tool_name``."""
        if self.matcher is None or self.matcher in ("", "*"):
            return True
        bare = tool_name.rsplit("__", 1)[-1]
        return any(re.fullmatch(self.matcher, name) for name in (tool_name, bare))


@dataclass(frozen=True, slots=True)
class ToolPermissionContext:
    """What ``can_use_tool`` is told beside the tool's name and input.

    Attributes:
        tool_use_id: The call's id (the ``callId`` of its ``tool_call`` frame).
        session_id: The session the call belongs to.
    """

    tool_use_id: str
    session_id: str | None


@dataclass(frozen=True, slots=True)
class PermissionResultAllow:
    """``can_use_tool``'s "yes".

    Args:
        updated_input: Arguments to run the tool with instead of the model's (``None``: as
            the model gave them).
    """

    updated_input: Mapping[str, Any] | None = None
    behavior: Literal["allow"] = "allow"


@dataclass(frozen=True, slots=True)
class PermissionResultDeny:
    """``can_use_tool``'s "no".

    Args:
        message: Why; the model sees it as the call's error result.
    """

    message: str = ""
    behavior: Literal["deny"] = "deny"


PermissionResult: TypeAlias = PermissionResultAllow | PermissionResultDeny

CanUseTool: TypeAlias = Callable[
    [str, dict[str, Any], ToolPermissionContext],
    Awaitable[PermissionResult] | PermissionResult,
]
"""``can_use_tool(tool_name, input, context) -> PermissionResult`` (sync or async)."""

Execute: TypeAlias = Callable[[str, Any], Awaitable[ToolResult]]


class _HookFailed(Exception):
    """A callback raised or timed out; the call fails closed."""


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], limit: float | None) -> Any:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        async with asyncio.timeout(limit):
            value = fn(*args)
            if inspect.isawaitable(value):
                value = await value
    except builtins.TimeoutError as exc:
        raise _HookFailed(f"{name} did not answer within {limit:g} s") from exc
    except Exception as exc:
        logger.warning("Hook %s raised %s", name, type(exc).__name__, exc_info=exc)
        raise _HookFailed(f"{name} failed: {type(exc).__name__}: {exc}") from exc
    return value


def _specific(output: Mapping[str, Any]) -> Mapping[str, Any]:
    value = output.get("hookSpecificOutput")
    return value if isinstance(value, Mapping) else {}


class ToolHooks:
    """A client's ``can_use_tool`` and hooks, run around each of its tool calls (see the
    module docstring for the order and what each answer does).

    Args:
        can_use_tool: Asked before each call (after the ``PreToolUse`` hooks).
        hooks: ``{"PreToolUse": [HookMatcher(...)], "PostToolUse": [...], "Stop": [...]}``.

    Raises:
        ValidationError: an unknown hook event, or something that is not a
            :class:`HookMatcher` or not callable.
    """

    __slots__ = ("_can_use_tool", "_hooks")

    def __init__(
        self,
        *,
        can_use_tool: CanUseTool | None = None,
        hooks: Mapping[str, Sequence[HookMatcher]] | None = None,
    ) -> None:
        if can_use_tool is not None and not callable(can_use_tool):
            raise ValidationError("can_use_tool must be callable")
        checked: dict[str, list[HookMatcher]] = {}
        for event, matchers in (hooks or {}).items():
            if event not in _EVENTS:
                raise ValidationError(
                    f"unknown hook event {event!r}; expected one of {', '.join(sorted(_EVENTS))}"
                )
            for matcher in matchers:
                if not isinstance(matcher, HookMatcher):
                    raise ValidationError(
                        f"hooks[{event!r}] holds a {type(matcher).__name__}, not a HookMatcher"
                    )
                if not all(callable(hook) for hook in matcher.hooks):
                    raise ValidationError(f"hooks[{event!r}]: every hook must be callable")
            checked[event] = list(matchers)
        self._can_use_tool = can_use_tool
        self._hooks = checked

    def __bool__(self) -> bool:
        return self._can_use_tool is not None or any(self._hooks.values())

    @property
    def has_stop(self) -> bool:
        """Whether any ``Stop`` hook is registered."""
        return bool(self._hooks.get("Stop"))

    async def _run_hooks(
        self,
        event: HookEvent,
        tool_name: str | None,
        input_data: dict[str, Any],
        tool_use_id: str | None,
        context: HookContext,
    ) -> list[Mapping[str, Any]]:
        outputs = []
        for matcher in self._hooks.get(event, ()):
            if tool_name is not None and not matcher.matches(tool_name):
                continue
            for hook in matcher.hooks:
                output = await _call(hook, (input_data, tool_use_id, context), matcher.timeout)
                if isinstance(output, Mapping):
                    outputs.append(output)
                    if event == "PreToolUse" and _specific(output).get("permissionDecision"):
                        return outputs  # a decision ends the PreToolUse round
        return outputs

    async def run_tool(
        self,
        tool_name: str,
        tool_use_id: str,
        arguments: Any,
        execute: Execute,
        *,
        session_id: str | None,
    ) -> ToolResult:
        """Run one call through the hooks and ``can_use_tool`` around ``execute``.

        Args:
            tool_name: The name the model called.
            tool_use_id: The call's id.
            arguments: The model's arguments.
            execute: Runs the tool (``ToolRunner.execute``).
            session_id: The call's session.

        Returns:
            The tool's result, or an error result for a denial or a failed hook.
        """
        if arguments is not None and not isinstance(arguments, Mapping):
            return await execute(tool_name, arguments)  # the runner reports the bad type
        context = HookContext(session_id)
        tool_input: dict[str, Any] = dict(arguments or {})
        allowed = False
        try:
            for output in await self._run_hooks(
                "PreToolUse",
                tool_name,
                self._input("PreToolUse", session_id, tool_name=tool_name, tool_input=tool_input),
                tool_use_id,
                context,
            ):
                specific = _specific(output)
                updated = specific.get("updatedInput")
                if isinstance(updated, Mapping):
                    tool_input = dict(updated)
                decision = specific.get("permissionDecision")
                reason = specific.get("permissionDecisionReason") or output.get("reason")
                if decision == "deny" or output.get("decision") == "block":
                    return error_result(reason or f"Tool {tool_name!r} was blocked by a hook")
                allowed = decision == "allow"
            if not allowed and self._can_use_tool is not None:
                verdict = await _call(
                    self._can_use_tool,
                    (tool_name, dict(tool_input), ToolPermissionContext(tool_use_id, session_id)),
                    None,
                )
                if isinstance(verdict, PermissionResultDeny):
                    return error_result(
                        verdict.message or f"Permission to use tool {tool_name!r} was denied"
                    )
                if not isinstance(verdict, PermissionResultAllow):
                    raise _HookFailed(
                        f"can_use_tool returned a {type(verdict).__name__}, "
                        "not PermissionResultAllow or PermissionResultDeny"
                    )
                if verdict.updated_input is not None:
                    tool_input = dict(verdict.updated_input)
            result = await execute(tool_name, tool_input)
            for output in await self._run_hooks(
                "PostToolUse",
                tool_name,
                self._input(
                    "PostToolUse",
                    session_id,
                    tool_name=tool_name,
                    tool_input=tool_input,
                    tool_response=result.to_wire(),
                ),
                tool_use_id,
                context,
            ):
                if output.get("decision") == "block":
                    reason = output.get("reason") or f"Tool {tool_name!r}: blocked by a hook"
                    result = error_result(str(reason))
                extra = _specific(output).get("additionalContext")
                if isinstance(extra, str) and extra:
                    result = ToolResult(
                        [*result.content, {"type": "text", "text": extra}], result.is_error
                    )
        except _HookFailed as exc:
            return error_result(f"Tool {tool_name!r} was not run: {exc}")
        return result

    async def run_stop(self, result: ResultMessage, *, session_id: str | None) -> None:
        """Run the ``Stop`` hooks for a turn that ended with ``result``; never raises (a
        failing hook is logged)."""
        input_data = self._input(
            "Stop", session_id, stop_hook_active=False, result=result.to_wire()
        )
        try:
            await self._run_hooks("Stop", None, input_data, None, HookContext(session_id))
        except _HookFailed as exc:
            logger.warning("Stop hook: %s", exc)

    @staticmethod
    def _input(event: HookEvent, session_id: str | None, **fields: Any) -> dict[str, Any]:
        return {"hook_event_name": event, "session_id": session_id, **fields}
