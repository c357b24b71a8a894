"""Session options: the ``init`` payload of docs/protocol.md section 5.

:class:`SessionOptions` is the one model of those options. Python code uses snake_case names
(``system_prompt``, ``max_turns``); the wire carries camelCase (``systemPrompt``, ``maxTurns``).
The server validates an ``init`` payload with it (unknown keys ignored, ``null`` = absent, wrong
types rejected); the client builds it from keyword arguments and sends
:meth:`SessionOptions.to_wire`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "McpServerConfig",
    "OutputFormat",
    "SessionOptions",
    "SystemPromptPreset",
    "ToolDefinition",
]


class _Options(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        protected_namespaces=(),
        # Options travel as JSON, which has no infinity or NaN (``"inf"`` would validate).
        allow_inf_nan=False,
    )


class SystemPromptPreset(_Options):
    """``{"type": "preset", "preset": "claude_code", "append": ...}``."""

    type: Literal["preset"] = "preset"
    preset: str = "claude_code"
    append: str | None = None


def _drop_null_required(schema: Any) -> Any:
    # docs/protocol.md section 5: tolerate ``"required": null`` (the official client sends it).
    if isinstance(schema, dict):
        return {
            key: _drop_null_required(value)
            for key, value in schema.items()
            if not (key == "required" and value is None)
        }
    if isinstance(schema, list):
        return [_drop_null_required(item) for item in schema]
    return schema


class ToolDefinition(_Options):
    """A client tool as declared on the wire: ``{name, description, inputSchema, executeIn}``."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)
    description: str = ""
    input_schema: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    execute_in: str | None = None

    @field_validator("input_schema", mode="before")
    @classmethod
    def _tolerate_schema(cls, value: Any) -> Any:
        if value is None:
            return {"type": "object", "properties": {}}
        return _drop_null_required(value)

    @property
    def runs_on_client(self) -> bool:
        """``executeIn`` ``client``, ``browser`` or absent (docs/protocol.md section 6)."""
        return self.execute_in in (None, "client", "browser")


class McpServerConfig(_Options):
    """An entry of ``mcpServers``: a client-tools server, a stdio server or a remote server."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    version: str | None = None
    type: str | None = None
    tools: list[ToolDefinition] | None = None
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    url: str | None = None
    headers: dict[str, str] | None = None

    @property
    def is_client_tools(self) -> bool:
        """Whether this server's tools are executed by the client."""
        return self.tools is not None and self.command is None and self.url is None


class OutputFormat(_Options):
    """``{"type": "json_schema", "schema": {...}}``."""

    type: Literal["json_schema"] = "json_schema"
    schema_: dict[str, Any] = Field(alias="schema")


ToolsOption = list[str | ToolDefinition] | dict[str, Any] | str


_TOOL_CHOICE_TYPES: Final = ("auto", "any", "none", "tool")


def normalize_tool_choice(value: Any) -> dict[str, Any] | list[dict[str, Any]] | None:
    """A ``toolChoice`` option in the Anthropic form (our extension key).

    ``"auto"``, ``"any"`` and ``"none"`` become ``{"type": ...}``; any other string names a tool:
    ``{"type": "tool", "name": ...}``. A mapping must already be one of those forms. A list (not
    empty) gives the choice of each model call of a turn in order, its last entry binding the
    calls after it: ``["get_weather", "none"]`` calls the tool, then answers with its result.

    Raises:
        ValueError: an unknown type, a ``tool`` choice without a name, or an empty list.
    """
    if value is None:
        return None
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError("a toolChoice list needs at least one choice")
        return [_one_tool_choice(item) for item in value]
    return _one_tool_choice(value)


def _one_tool_choice(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"type": value} if value in ("auto", "any", "none") else _named(value)
    if isinstance(value, Mapping):
        kind = value.get("type")
        if kind not in _TOOL_CHOICE_TYPES:
            raise ValueError(f"toolChoice type must be one of {', '.join(_TOOL_CHOICE_TYPES)}")
        if kind == "tool":
            return _named(value.get("name"))
        return {"type": kind}
    raise ValueError("toolChoice must be a string, an object or a list of them")


def _named(name: Any) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError("a tool toolChoice needs the tool's name")
    return {"type": "tool", "name": name}


class SessionOptions(_Options):
    """Every option of an ``init`` payload (docs/protocol.md section 5), all optional.

    ``None`` means "not set": the server default (or the client-wide default, when merging)
    applies.
    """

    model: str | None = None
    fallback_model: str | None = None
    system_prompt: str | SystemPromptPreset | None = None
    max_turns: int | None = Field(default=None, ge=1)
    max_budget_usd: float | None = Field(default=None, ge=0)
    max_thinking_tokens: int | None = Field(default=None, ge=0)
    tools: ToolsOption | None = None
    allowed_tools: list[str] | None = None
    disallowed_tools: list[str] | None = None
    mcp_servers: list[McpServerConfig] | dict[str, McpServerConfig] | None = None
    output_format: OutputFormat | None = None
    include_partial_messages: bool | None = None
    session_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("sessionId", "session_id", "resume"),
        serialization_alias="sessionId",
    )
    continue_session: bool | None = Field(
        default=None,
        validation_alias=AliasChoices("continue", "continue_session", "continueSession"),
        serialization_alias="continue",
    )
    fork_session: bool | None = None
    resume_session_at: str | None = None
    permission_mode: str | None = None
    allow_dangerously_skip_permissions: bool | None = None
    env: dict[str, str] | None = None
    agents: dict[str, Any] | list[Any] | None = None
    betas: list[str] | None = None
    setting_sources: list[str] | None = None
    job_id: str | None = None
    chucky_extensions: list[str] | None = None
    last_seq: int | None = Field(default=None, ge=0)
    """The ``seq`` extension's resume (docs/protocol.md section 10): the last frame received."""
    # Inference parameters: our extension keys (the hosted service ignores them).
    temperature: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    tool_choice: dict[str, Any] | list[dict[str, Any]] | None = None
    messages: list[Any] | None = None
    """A message history that seeds the session's transcript (our extension key, see
    :mod:`chucky.history`); validated by the server when it opens the session."""

    _unknown_keys: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _tool_choice(cls, value: Any) -> Any:
        return normalize_tool_choice(value)

    @model_validator(mode="wrap")
    @classmethod
    def _note_unknown_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        options = handler(data)
        if isinstance(data, Mapping) and isinstance(options, SessionOptions):
            known = _known_keys()
            unknown = tuple(key for key in data if key not in known and data[key] is not None)
            if unknown:
                options._unknown_keys = tuple(str(key) for key in unknown)
        return options

    def unsupported(self) -> list[str]:
        """The options set here that a chucky server does not act on, as the client spelled
        them: the keys it does not know, and :data:`IGNORED_OPTIONS` (docs/protocol.md
        section 5)."""
        ignored = [
            _wire_name(name)
            for name in IGNORED_OPTIONS
            if getattr(self, name) not in (None, [], {}, False)
        ]
        return sorted({*ignored, *self._unknown_keys})

    def inference_params(self) -> dict[str, Any]:
        """The inference parameters that are set (``max_tokens`` excepted), snake_case."""
        names = (
            "temperature",
            "top_p",
            "top_k",
            "stop",
            "seed",
            "frequency_penalty",
            "presence_penalty",
            "max_thinking_tokens",
        )
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    def to_wire(self) -> dict[str, Any]:
        """The camelCase ``init`` payload, without unset options."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def merged(self, overrides: SessionOptions) -> SessionOptions:
        """These options with every option set in ``overrides`` replacing ours."""
        update = {name: getattr(overrides, name) for name in overrides.model_fields_set}
        update = {name: value for name, value in update.items() if value is not None}
        return self.model_copy(update=update) if update else self

    def mcp_server_list(self) -> list[McpServerConfig]:
        """``mcp_servers`` as a list; in a name-keyed object the key is the server's name."""
        servers = self.mcp_servers
        if servers is None:
            return []
        if isinstance(servers, Mapping):
            # The key is the name the model sees (``mcp__<key>__<tool>``), as in T.
            return [server.model_copy(update={"name": key}) for key, server in servers.items()]
        return list(servers)

    def system_prompt_text(self) -> str | None:
        """The system prompt as text (a preset contributes only its ``append``)."""
        prompt = self.system_prompt
        if isinstance(prompt, SystemPromptPreset):
            return prompt.append
        return prompt


IGNORED_OPTIONS: Final = (
    "agents",
    "allow_dangerously_skip_permissions",
    "betas",
    "env",
    "setting_sources",
)
"""Options a chucky server accepts and does not act on (the hosted service's subagents, betas,
settings files and environment belong to Claude Code, which does not run here): reported back
as ``unsupportedOptions`` rather than silently dropped."""


def _wire_name(name: str) -> str:
    field = SessionOptions.model_fields[name]
    return field.alias or name


_KNOWN_KEYS: set[str] = set()


def _known_keys() -> set[str]:
    """Every spelling of every option (snake_case names, camelCase aliases, alias choices)."""
    if not _KNOWN_KEYS:
        for name, field in SessionOptions.model_fields.items():
            _KNOWN_KEYS.add(name)
            if field.alias:
                _KNOWN_KEYS.add(field.alias)
            choices = field.validation_alias
            if isinstance(choices, AliasChoices):
                _KNOWN_KEYS.update(c for c in choices.choices if isinstance(c, str))
            elif isinstance(choices, str):
                _KNOWN_KEYS.add(choices)
    return _KNOWN_KEYS
