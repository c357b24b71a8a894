"""Client-side tools: define them, group them into MCP servers, and run them.

A tool is a Python function the model may call; the server forwards the call to the client as a
``tool_call`` frame and waits for a ``tool_result`` (docs/protocol.md section 6)::

    from chucky import tool, text_result

    @tool("add", "Add two numbers")
    async def add(a: float, b: float) -> str:
        return str(a + b)

The input schema is inferred from the signature (or given as a pydantic model or a JSON Schema
dict); arguments are validated before the handler runs; whatever the handler returns is turned into
a :class:`ToolResult`. Handlers may take keyword arguments, one ``dict`` (``async def
greet(args: dict)``, as in the official client's examples) or the pydantic model instance.

Tools are grouped into client-tools servers (:func:`create_mcp_server`,
:func:`create_sdk_mcp_server`); the model sees them as ``mcp__<server>__<tool>``. One session's
tools are held by a :class:`ToolRegistry`, which :class:`chucky.tool_runner.ToolRunner` executes.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field

from chucky import _schema
from chucky.errors import ValidationError

__all__ = [
    "McpSdkServerConfig",
    "McpServer",
    "Tool",
    "ToolRegistry",
    "ToolResult",
    "create_mcp_server",
    "create_sdk_mcp_server",
    "error_result",
    "image_result",
    "text_result",
    "tool",
]

INLINE_SERVER_NAME = "inline-tools"
_MCP_RESULT_KEYS = frozenset({"content", "isError", "is_error", "_meta", "structuredContent"})


class ToolResult(BaseModel):
    """What a tool call returns: MCP content items and an error flag.

    Accepts the official client's positional form ``ToolResult([items], True)`` too.

    Args:
        content: MCP content items: ``{"type": "text", "text": ...}``, ``{"type": "image",
            "data": <base64>, "mimeType": ...}``, ``{"type": "resource", "uri": ...}``.
        is_error: Whether the call failed (the model sees the content as an error). Also
            accepted as ``isError`` (the wire spelling).

    Raises:
        pydantic.ValidationError: ``content`` is not a list of dicts.
    """

    content: list[dict[str, Any]] = Field(default_factory=list)
    is_error: bool = Field(False, validation_alias=AliasChoices("is_error", "isError"))

    def __init__(self, content: Any = None, is_error: Any = None, **data: Any) -> None:
        if content is not None:
            data["content"] = content
        if is_error is not None:
            data["is_error"] = is_error
        super().__init__(**data)

    @property
    def text(self) -> str:
        """The text items of :attr:`content`, joined with newlines."""
        return "\n".join(
            item["text"]
            for item in self.content
            if item.get("type") == "text" and isinstance(item.get("text"), str)
        )

    def to_wire(self) -> dict[str, Any]:
        """The ``result`` of a ``tool_result`` frame: ``{"content": [...], "isError": bool}``."""
        return {"content": [dict(item) for item in self.content], "isError": self.is_error}

    @classmethod
    def from_value(cls, value: object) -> ToolResult:
        """Normalise whatever a handler returned into a :class:`ToolResult`. Never raises.

        Args:
            value: A :class:`ToolResult`; an MCP result dict (``{"content": [...],
                "isError": bool}``, ``is_error`` also accepted); an object with ``content`` and
                ``is_error`` attributes (the official client's dataclass); a ``str`` (one text
                item); ``None`` (an empty text item); a non-empty list of content items
                (dicts with a ``type``); ``bytes`` (decoded as UTF-8); a pydantic model or any
                other value (its JSON, or ``str(value)`` when it is not JSON-serialisable).

        Returns:
            The normalised result; ``content`` is always a list of dicts.
        """
        try:
            return _from_value(value)
        except Exception:
            return text_result(_safe_str(value))


def text_result(text: str) -> ToolResult:
    """A successful result holding one text item.

    Args:
        text: The text the model will see.

    Returns:
        The result.
    """
    return ToolResult(content=[{"type": "text", "text": text}])


def error_result(message: str) -> ToolResult:
    """A failed result (``isError: true``) holding one text item.

    Args:
        message: The error text the model will see.

    Returns:
        The result.
    """
    return ToolResult(content=[{"type": "text", "text": message}], is_error=True)


def image_result(data: bytes | str, mime_type: str = "image/png") -> ToolResult:
    """A successful result holding one image item.

    Args:
        data: The image bytes (base64-encoded here), or a string already base64-encoded.
        mime_type: The image's media type.

    Returns:
        The result.
    """
    encoded = base64.b64encode(data).decode("ascii") if isinstance(data, bytes) else data
    return ToolResult(content=[{"type": "image", "data": encoded, "mimeType": mime_type}])


def _from_value(value: object) -> ToolResult:
    if isinstance(value, ToolResult):
        return value
    if value is None:
        return text_result("")
    if isinstance(value, str):
        return text_result(value)
    if isinstance(value, bytes | bytearray):
        return text_result(bytes(value).decode("utf-8", errors="replace"))
    if isinstance(value, Mapping):
        if "content" in value and set(value) <= _MCP_RESULT_KEYS and _is_content(value["content"]):
            flag = value.get("isError", value.get("is_error", False))
            return ToolResult(content=_items(value["content"]), is_error=bool(flag))
    elif hasattr(value, "content") and hasattr(value, "is_error"):  # official ToolResult
        content = value.content
        if _is_content(content):
            return ToolResult(content=_items(content), is_error=bool(value.is_error))
    if isinstance(value, list | tuple) and value and _is_content(list(value)):
        return ToolResult(content=_items(value))
    if isinstance(value, BaseModel):
        return text_result(value.model_dump_json())
    try:
        return text_result(json.dumps(value, ensure_ascii=False))
    except (TypeError, ValueError):
        return text_result(_safe_str(value))


def _is_content(content: object) -> bool:
    return isinstance(content, str) or (
        isinstance(content, list | tuple)
        and all(isinstance(i, Mapping) and isinstance(i.get("type"), str) for i in content)
    )


def _items(content: str | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [dict(item) for item in content]


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return object.__repr__(value)


ToolSchema = type[BaseModel] | Mapping[str, Any]


class Tool:
    """A client-side tool: definition (name, description, input schema) and handler.

    Usually built with :func:`tool`. Calling the object calls the handler unchanged, so decorated
    functions stay unit-testable; :meth:`call` is what the runner uses (validate, run,
    normalise).

    Args:
        name: The bare tool name (what ``tool_call`` frames carry).
        description: What the tool does, for the model.
        input_schema: A pydantic model class, a JSON Schema dict, a ``{"name": type}`` map, or
            ``None`` to infer the schema from the handler's signature.
        handler: The function to run, sync (run in a worker thread) or async.
        execute_in: Where the tool runs (``"client"``; ``"browser"`` is the same to a server).
        namespace: Extra names for resolving string annotations (``from __future__ import
            annotations`` with types local to a function). :func:`tool` passes its caller's
            locals.

    Raises:
        ValidationError: The name, handler or schema is unusable.

    Attributes:
        name: The bare tool name.
        description: The description sent to the model.
        input_schema: The JSON Schema of the arguments (an object schema).
        execute_in: ``"client"`` unless given.
        function: The original handler (also available as :attr:`handler`).
    """

    def __init__(
        self,
        name: str,
        description: str,
        input_schema: ToolSchema | None = None,
        handler: Callable[..., Any] | None = None,
        execute_in: str = "client",
        *,
        namespace: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValidationError(f"A tool name must be a non-empty string, got {name!r}")
        if not callable(handler):
            raise ValidationError(f"Tool {name!r} needs a callable handler, got {handler!r}")
        self.name = name
        self.description = description or ""
        self.execute_in = execute_in
        self.function: Callable[..., Any] = handler
        self.__wrapped__ = handler
        self.__doc__ = getattr(handler, "__doc__", None)
        self._is_async = _is_async_callable(handler)
        self._binder = _schema.ArgumentBinder(name, handler, input_schema, namespace)
        self.input_schema: dict[str, Any] = self._binder.input_schema

    @property
    def handler(self) -> Callable[..., Any]:
        """The original handler (the same object as :attr:`function`)."""
        return self.function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the original handler with exactly these arguments."""
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r}, execute_in={self.execute_in!r})"

    def to_definition(self) -> dict[str, Any]:
        """The wire definition: ``{"name", "description", "inputSchema", "executeIn"}``."""
        return {
            "name": self.name,
            "description": self.description,
            "inputSchema": copy.deepcopy(self.input_schema),
            "executeIn": self.execute_in,
        }

    async def call(self, arguments: Mapping[str, Any]) -> ToolResult:
        """Validate ``arguments``, run the handler and normalise what it returns.

        Sync handlers run in a worker thread so they never block the event loop.

        Args:
            arguments: The ``input`` of the ``tool_call`` frame.

        Returns:
            The handler's return value as a :class:`ToolResult`.

        Raises:
            ValidationError: The arguments do not match the schema; the message names the
                offending field.
            Exception: Whatever the handler raises, unchanged.
        """
        args, kwargs = self._binder.bind(arguments)
        if self._is_async:
            value = await self.function(*args, **kwargs)
        else:
            value = await asyncio.to_thread(self.function, *args, **kwargs)
            if inspect.isawaitable(value):  # a sync wrapper around a coroutine function
                value = await value
        return ToolResult.from_value(value)


def _is_async_callable(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - objects with an async __call__
    )


def tool(
    name: str, description: str, schema: ToolSchema | None = None
) -> Callable[[Callable[..., Any]], Tool]:
    """Decorator turning a sync or async function into a :class:`Tool`.

    Async handlers run on the event loop, sync ones in a worker thread. When the server abandons
    a call (interrupt, its own tool timeout, the end of the turn), an async handler is cancelled
    (:class:`asyncio.CancelledError` at its current ``await``; clean up in ``finally``), while a
    sync handler's thread cannot be stopped: it runs to its end and its return value is
    discarded. Either way no result is sent for an abandoned call.

    Args:
        name: The bare tool name.
        description: What the tool does, for the model (the docstring's summary is not used;
            its ``Args:`` section describes the parameters).
        schema: A pydantic model class, a JSON Schema dict (``"required": null`` and arrays
            without ``items`` tolerated), a ``{"name": type}`` map, or ``None`` (default) to
            infer the schema from the signature.

    Returns:
        A decorator returning the :class:`Tool`.

    Raises:
        ValidationError: (from the decorator) the schema cannot be built.
    """

    def decorator(func: Callable[..., Any]) -> Tool:
        caller = sys._getframe(1)
        try:
            namespace = dict(caller.f_locals) if caller.f_code.co_name != "<module>" else None
        finally:
            del caller  # frames hold references to every local: do not keep one
        return Tool(name, description, schema, func, namespace=namespace)

    return decorator


@dataclass
class McpServer:
    """A named group of client-side tools (a client-tools server).

    Args:
        name: The server name (the model sees ``mcp__<name>__<tool>``).
        tools: The tools.
        version: The server version sent on the wire.
    """

    name: str
    tools: list[Tool] = field(default_factory=list)
    version: str = "1.0.0"

    def to_wire(self) -> dict[str, Any]:
        """The ``mcpServers`` entry: ``{"name", "version", "tools": [definitions]}``."""
        return {
            "name": self.name,
            "version": self.version,
            "tools": [t.to_definition() for t in self.tools],
        }


@dataclass
class McpSdkServerConfig:
    """An in-process server as returned by :func:`create_sdk_mcp_server`.

    Usable wherever an :class:`McpServer` is (it exposes ``tools``, ``version`` and
    ``to_wire()``).

    Args:
        type: Always ``"sdk"``.
        name: The server name.
        instance: The wrapped :class:`McpServer`.
    """

    type: Literal["sdk"] = "sdk"
    name: str = ""
    instance: McpServer | None = None

    @property
    def tools(self) -> list[Tool]:
        """The tools of the wrapped server."""
        return self.instance.tools if self.instance is not None else []

    @property
    def version(self) -> str:
        """The version of the wrapped server."""
        return self.instance.version if self.instance is not None else "1.0.0"

    def to_wire(self) -> dict[str, Any]:
        """The ``mcpServers`` entry, as :meth:`McpServer.to_wire`."""
        name = self.name or (self.instance.name if self.instance is not None else "")
        return McpServer(name, self.tools, self.version).to_wire()


def create_mcp_server(name: str, tools: Sequence[Tool], version: str = "1.0.0") -> McpServer:
    """Group tools into a client-tools server.

    Args:
        name: The server name.
        tools: The tools.
        version: The server version.

    Returns:
        The server.
    """
    return McpServer(name=name, tools=list(tools), version=version)


def create_sdk_mcp_server(
    name: str, version: str = "1.0.0", tools: Sequence[Tool] | None = None
) -> McpSdkServerConfig:
    """Group tools into an in-process server (the Claude Agent SDK's spelling).

    Args:
        name: The server name.
        version: The server version.
        tools: The tools.

    Returns:
        A config usable in ``mcp_servers`` (unlike the official client's, whose object the
        client could not use).
    """
    server = McpServer(name=name, tools=list(tools or []), version=version)
    return McpSdkServerConfig(type="sdk", name=name, instance=server)


ServerLike = McpServer | McpSdkServerConfig | Mapping[str, Any]


class ToolRegistry:
    """The client-side tools of one session, looked up by the name in ``tool_call`` frames.

    Build it with :meth:`build`. ``bool(registry)`` and ``len(registry)`` count tools with
    handlers (pass-through server configs are only sent on the wire).
    """

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._server_of: dict[str, str] = {}
        self._by_server: dict[str, dict[str, Tool]] = {}
        self._wire: list[McpServer | dict[str, Any]] = []

    @classmethod
    def build(
        cls,
        tools: Sequence[Tool | str] | None = None,
        mcp_servers: Mapping[str, ServerLike] | Sequence[ServerLike] | None = None,
        *,
        inline_server_name: str = INLINE_SERVER_NAME,
    ) -> ToolRegistry:
        """Collect a session's tools.

        Args:
            tools: Inline tools, grouped into a server named ``inline_server_name``. Strings are
                a name allowlist sent separately on the wire and are ignored here.
            mcp_servers: Servers keyed by name (the key wins over the server's own name: the
                model sees ``mcp__<key>__<tool>``) or a list. Plain dicts (stdio, sse or http
                server configs) are passed through to the wire (a dict keyed by name gets that
                ``name``) and contribute no handlers.
            inline_server_name: The name of the inline tools' server.

        Returns:
            The registry.

        Raises:
            ValidationError: Two tools share a bare name, two servers share a name, or an entry
                is neither a tool nor a server.
        """
        registry = cls()
        if isinstance(mcp_servers, Mapping):
            entries: list[tuple[str | None, object]] = list(mcp_servers.items())
        else:
            entries = [(None, server) for server in mcp_servers or ()]
        for key, server in entries:
            registry._add(key, server)
        inline = [t for t in tools or () if not isinstance(t, str)]
        if inline:
            registry._add(None, McpServer(inline_server_name, inline))
        return registry

    def _add(self, key: str | None, server: object) -> None:
        if isinstance(server, Mapping) and any(
            isinstance(t, Tool) for t in server.get("tools") or ()
        ):
            server = McpServer(
                str(server.get("name") or key),
                list(server["tools"]),
                server.get("version", "1.0.0"),
            )
        if isinstance(server, Mapping):
            config = dict(server)
            if key is not None:
                config["name"] = key
            self._claim_server(str(config.get("name", "")))
            self._wire.append(config)
            return
        if not isinstance(server, McpServer | McpSdkServerConfig):
            raise ValidationError(
                f"An MCP server must be an McpServer, a create_sdk_mcp_server() config or a "
                f"dict, got {type(server).__name__}"
            )
        instance = server.instance if isinstance(server, McpSdkServerConfig) else server
        name = key or server.name or (instance.name if instance is not None else "")
        self._claim_server(name)
        tools = list(server.tools)
        self._by_server[name] = {}
        for item in tools:
            if not isinstance(item, Tool):
                raise ValidationError(
                    f"Server {name!r} holds {item!r}, which is not a Tool (use @tool)"
                )
            other = self._server_of.get(item.name)
            if other is not None:
                raise ValidationError(
                    f"Duplicate client tool name {item.name!r} in servers {other!r} and "
                    f"{name!r}: tool_call frames carry the bare name, so it would be ambiguous"
                )
            self._tools[item.name] = item
            self._server_of[item.name] = name
            self._by_server[name][item.name] = item
        self._wire.append(McpServer(name, tools, server.version))

    def _claim_server(self, name: str) -> None:
        names = [s.name if isinstance(s, McpServer) else s.get("name") for s in self._wire]
        if name and name in names:
            raise ValidationError(f"Duplicate MCP server name {name!r}")

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``: a bare name or ``mcp__<server>__<tool>``.

        Args:
            name: The tool name.

        Returns:
            The tool, or ``None`` when no client tool has that name.
        """
        found = self._tools.get(name)
        if found is not None or not name.startswith("mcp__"):
            return found
        rest = name[len("mcp__") :]
        for server, tools in self._by_server.items():
            if rest.startswith(f"{server}__"):
                found = tools.get(rest[len(server) + 2 :])
                if found is not None:
                    return found
        return None

    @property
    def names(self) -> list[str]:
        """The bare names of all tools, in registration order."""
        return list(self._tools)

    def wire_servers(self) -> list[dict[str, Any]]:
        """The ``mcpServers`` list of the ``init`` payload (docs/protocol.md section 5)."""
        return [s.to_wire() if isinstance(s, McpServer) else dict(s) for s in self._wire]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __len__(self) -> int:
        return len(self._tools)

    def __bool__(self) -> bool:
        return bool(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry(names={self.names!r})"
