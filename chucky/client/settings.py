"""Session options as keyword arguments, and how client defaults and per-call values combine.

Every option of docs/protocol.md section 5 is a snake_case keyword of ``Chucky(...)``, ``prompt``,
``stream`` and ``create_session`` (:class:`SessionArgs`); per-call values replace the client's
defaults; the result is one :class:`~chucky.options.SessionOptions` for the wire plus the
session's :class:`~chucky.tools.ToolRegistry` of handlers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import pydantic

from ..errors import ValidationError
from ..history import HistoryMessage, to_wire_history
from ..options import SessionOptions, SystemPromptPreset
from ..protocol.client import EXTENSIONS
from ..tools import McpSdkServerConfig, McpServer, Tool, ToolRegistry

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_URL",
    "BaseSessionArgs",
    "SessionArgs",
    "SessionSpec",
    "check_args",
    "resolve",
]

DEFAULT_URL = "wss://conjure.chucky.cloud/ws"
DEFAULT_MODEL = "claude-sonnet-5-5"

McpServers = (
    Mapping[str, McpServer | McpSdkServerConfig | Mapping[str, Any]]
    | Sequence[McpServer | McpSdkServerConfig | Mapping[str, Any]]
)


class BaseSessionArgs(TypedDict, total=False):
    """Session options other than ``model``, ``system_prompt`` and ``max_turns``."""

    fallback_model: str
    max_budget_usd: float
    max_thinking_tokens: int
    tools: Sequence[Tool | str]
    allowed_tools: Sequence[str]
    disallowed_tools: Sequence[str]
    mcp_servers: McpServers
    output_format: Mapping[str, Any] | type[pydantic.BaseModel]
    include_partial_messages: bool
    session_id: str
    resume: str
    continue_session: bool
    fork_session: bool
    resume_session_at: str
    permission_mode: str
    allow_dangerously_skip_permissions: bool
    env: Mapping[str, str]
    agents: Mapping[str, Any] | Sequence[Any]
    betas: Sequence[str]
    setting_sources: Sequence[str]
    job_id: str
    temperature: float
    max_tokens: int
    top_p: float
    top_k: int
    stop: str | Sequence[str]
    seed: int
    frequency_penalty: float
    presence_penalty: float
    tool_choice: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]]
    history: Sequence[HistoryMessage]
    """Messages that seed a new session's transcript (``init`` key ``messages``)."""


class SessionArgs(BaseSessionArgs, total=False):
    """Every session option, as keyword arguments (docs/protocol.md section 5, snake_case)."""

    model: str
    system_prompt: str | SystemPromptPreset | Mapping[str, Any]
    max_turns: int


_KNOWN = frozenset(SessionArgs.__annotations__)


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a session is opened with."""

    options: SessionOptions
    registry: ToolRegistry


def check_args(args: Mapping[str, Any], where: str) -> None:
    """Raise ``TypeError`` for keywords that are not session options (like a signature would)."""
    unknown = sorted(set(args) - _KNOWN)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")


def _output_format(value: Any) -> Any:
    if isinstance(value, type) and issubclass(value, pydantic.BaseModel):
        return {"type": "json_schema", "schema": value.model_json_schema()}
    if isinstance(value, Mapping) and value.get("type") != "json_schema":
        return {"type": "json_schema", "schema": dict(value)}
    return value


def resolve(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> SessionSpec:
    """Combine client defaults with per-call options.

    ``None`` values mean "not given". Tool objects in ``tools`` and the servers in
    ``mcp_servers`` become client-tools servers (the model sees ``mcp__<server>__<tool>``);
    names in ``tools`` are sent as the ``tools`` allowlist.

    Raises:
        ValidationError: an option has the wrong type, or two tools share a bare name.
    """
    args: dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
    args.update({k: v for k, v in overrides.items() if v is not None})
    tools = list(args.pop("tools", None) or [])
    mcp_servers = args.pop("mcp_servers", None)
    if "resume" in args:
        args.setdefault("session_id", args.pop("resume"))
    if "history" in args:
        args["messages"] = to_wire_history(args.pop("history")) or None
    if "output_format" in args:
        args["output_format"] = _output_format(args["output_format"])
    registry = ToolRegistry.build(tools, mcp_servers)
    names = [item for item in tools if isinstance(item, str)]
    try:
        options = SessionOptions.model_validate(
            {
                **args,
                "tools": names or None,
                "mcp_servers": registry.wire_servers() or None,
                "chucky_extensions": list(EXTENSIONS),
            }
        )
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValidationError(
            f"invalid session option {where}: {first['msg']}",
            details={"reason": "invalid_options"},
        ) from exc
    return SessionSpec(options, registry)
