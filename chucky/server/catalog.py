"""The tools a session offers the model (docs/protocol.md sections 5 and 6).

Client tools arrive in ``init`` as client-tools servers in ``mcpServers`` (and, in the legacy
form, as tool objects in ``tools``). The model sees each as ``mcp__<server>__<tool>``; the
``tool_call`` frame carries the bare ``<tool>`` name, which is how every official client looks
its handlers up. ``allowedTools`` / ``disallowedTools`` narrow what is offered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .._redact import redacting_logger
from ..errors import ValidationError
from ..options import SessionOptions, ToolDefinition
from .providers.base import ToolSpec

__all__ = ["ClientTool", "ToolCatalog", "mcp_content_to_blocks"]

logger = redacting_logger("chucky.server")

LEGACY_SERVER = "inline-tools"
MAX_TOOL_NAME = 128  # of mcp__<server>__<tool>; keeps every frame that lists tools small


@dataclass(frozen=True, slots=True)
class ClientTool:
    server: str
    definition: ToolDefinition

    @property
    def name(self) -> str:
        """The bare name the ``tool_call`` frame carries."""
        return self.definition.name

    @property
    def full_name(self) -> str:
        """The name the model sees."""
        return f"mcp__{self.server}__{self.definition.name}"


def _allowed(tool: ClientTool, patterns: Sequence[str]) -> bool:
    for pattern in patterns:
        if pattern in (
            "*",
            tool.full_name,
            tool.name,
            f"mcp__{tool.server}",
            f"mcp__{tool.server}__*",
        ):
            return True
    return False


class ToolCatalog:
    """A session's tools, resolved from its options."""

    def __init__(self, tools: Iterable[ClientTool], servers: Sequence[dict[str, Any]]) -> None:
        self._by_full_name = {tool.full_name: tool for tool in tools}
        self.servers = list(servers)

    @classmethod
    def from_options(cls, options: SessionOptions) -> ToolCatalog:
        """Collect the client tools of ``options`` and apply the allow and deny lists.

        Raises:
            ValidationError: two tools of one session share a bare name (``tool_call`` frames
                carry bare names, so the client could not tell them apart).
        """
        found: list[ClientTool] = []
        servers: list[dict[str, Any]] = []
        for server in options.mcp_server_list():
            name = server.name or "tools"
            if server.is_client_tools:
                servers.append({"name": name, "status": "connected"})
                found.extend(ClientTool(name, definition) for definition in server.tools or ())
            else:
                # stdio / sse / http servers are accepted and recorded, not run (yet).
                logger.info("MCP server %r (%s) is not run by this server", name, server.type)
                servers.append({"name": name, "status": "failed"})
        if isinstance(options.tools, list):
            legacy = [item for item in options.tools if isinstance(item, ToolDefinition)]
            if legacy:
                servers.append({"name": LEGACY_SERVER, "status": "connected"})
                found.extend(ClientTool(LEGACY_SERVER, definition) for definition in legacy)
        seen: dict[str, ClientTool] = {}
        for tool in found:
            _check_definition(tool)
            other = seen.get(tool.name)
            if other is not None:
                raise ValidationError(
                    f"Invalid options: tool {tool.name!r} is declared by both "
                    f"{other.server!r} and {tool.server!r}",
                    details={"reason": "invalid_options"},
                )
            seen[tool.name] = tool
        allowed = options.allowed_tools
        denied = options.disallowed_tools or []
        offered = [
            tool
            for tool in found
            if (allowed is None or _allowed(tool, allowed)) and not _allowed(tool, denied)
        ]
        return cls(offered, servers)

    def resolve(self, name: str) -> ClientTool | None:
        """The offered tool the model called ``name`` (full name, or a bare one if unique)."""
        tool = self._by_full_name.get(name)
        if tool is not None:
            return tool
        matches = [t for t in self._by_full_name.values() if t.name == name]
        return matches[0] if len(matches) == 1 else None

    @property
    def tools(self) -> list[ClientTool]:
        """The offered tools, in the order they are offered."""
        return list(self._by_full_name.values())

    @property
    def names(self) -> list[str]:
        """Full names, as the ``system`` init message lists them."""
        return list(self._by_full_name)

    @property
    def specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(tool.full_name, tool.definition.description, tool.definition.input_schema)
            for tool in self._by_full_name.values()
        ]


def _check_definition(tool: ClientTool) -> None:
    """A tool the model cannot be offered is refused at ``init``, not at the first call."""
    if len(tool.full_name) > MAX_TOOL_NAME:
        raise ValidationError(
            f"Invalid options: tool name {tool.full_name[:40]!r}... is longer than "
            f"{MAX_TOOL_NAME} characters",
            details={"reason": "invalid_options"},
        )
    try:
        from jsonschema import SchemaError, validators
    except ImportError:  # pragma: no cover - jsonschema comes with the server extra
        return
    schema = tool.definition.input_schema
    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(part) for part in exc.path) or "(root)"
        raise ValidationError(
            f"Invalid options: the input schema of tool {tool.name!r} is not a valid JSON "
            f"Schema at {where}: {exc.message[:200]}",
            details={"reason": "invalid_options", "tool": tool.name},
        ) from exc


def mcp_content_to_blocks(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """MCP result items (text, image, resource) as Anthropic ``tool_result`` content blocks."""
    blocks: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": str(item.get("text", ""))})
        elif kind == "image" and isinstance(item.get("data"), str):
            media_type = item.get("mimeType") or item.get("mime_type") or "image/png"
            blocks.append(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": item["data"]},
                }
            )
        elif kind == "resource":
            resource = item.get("resource") if isinstance(item.get("resource"), dict) else item
            text = resource.get("text") if isinstance(resource, dict) else None
            uri = resource.get("uri") if isinstance(resource, dict) else None
            blocks.append({"type": "text", "text": str(text if text is not None else uri or "")})
        else:
            blocks.append({"type": "text", "text": str(item.get("text", item))})
    return blocks
