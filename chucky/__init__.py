"""chucky: run AI agent sessions over a WebSocket.

The SDK half (this package's top level) is an asyncio client for the hosted Chucky service and
for ``chucky serve``; the server half lives in :mod:`chucky.server` (``pip install
"chucky[server]"``).

Example::

    import asyncio
    from chucky import Chucky, create_budget, create_token

    token = create_token(user_id="user-123", project_id="proj",
                         secret="hk_live_0123456789abcdef0123456789abcdef",
                         budget=create_budget(ai_dollars=1.00, compute_hours=1, window="day"))

    async def main() -> None:
        async with Chucky(token=token, url="ws://127.0.0.1:8765/ws") as client:
            result = await client.prompt("What is 2 + 2?")
            print(result.result, result.total_cost_usd)

    asyncio.run(main())
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from .client import Chucky, PromptResult, Session, SessionState, StreamEvent
from .client.hooks import (
    HookMatcher,
    PermissionResultAllow,
    PermissionResultDeny,
    ToolPermissionContext,
)
from .client.oneshot import query
from .client.reconnect import ReconnectEvent
from .client.sync import SyncChucky, SyncSession
from .errors import (
    AuthenticationError,
    BudgetExceededError,
    ChuckyError,
    ConcurrencyLimitError,
    ConnectionError,
    HandshakeError,
    InvalidStateError,
    ProtocolError,
    ProviderError,
    RateLimitError,
    SessionError,
    SessionNotFoundError,
    StructuredOutputTruncatedError,
    TimeoutError,
    ValidationError,
)
from .messages import (
    AssistantMessage,
    ContentBlock,
    DocumentBlock,
    ErrorMessage,
    ImageBlock,
    ResultMessage,
    SDKMessage,
    StreamEventMessage,
    SystemMessage,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    Usage,
    UserMessage,
    get_assistant_text,
    get_result_text,
)
from .options import SessionOptions
from .tokens import (
    DecodedToken,
    TokenBudget,
    TokenClaims,
    TokenPermissions,
    create_budget,
    create_token,
    decode_token,
    is_token_expired,
    verify_claims,
    verify_token,
)
from .tools import (
    McpSdkServerConfig,
    McpServer,
    Tool,
    ToolResult,
    create_mcp_server,
    create_sdk_mcp_server,
    error_result,
    image_result,
    text_result,
    tool,
)

__all__ = [
    "AssistantMessage",
    "AuthenticationError",
    "BudgetExceededError",
    "Chucky",
    "ChuckyError",
    "ConcurrencyLimitError",
    "ConnectionError",
    "ContentBlock",
    "DecodedToken",
    "DocumentBlock",
    "ErrorMessage",
    "HandshakeError",
    "HookMatcher",
    "ImageBlock",
    "InvalidStateError",
    "McpSdkServerConfig",
    "McpServer",
    "PermissionResultAllow",
    "PermissionResultDeny",
    "PromptResult",
    "ProtocolError",
    "ProviderError",
    "RateLimitError",
    "ReconnectEvent",
    "ResultMessage",
    "SDKMessage",
    "Session",
    "SessionError",
    "SessionNotFoundError",
    "SessionOptions",
    "SessionState",
    "StreamEvent",
    "StreamEventMessage",
    "StructuredOutputTruncatedError",
    "SyncChucky",
    "SyncSession",
    "SystemMessage",
    "TextBlock",
    "ThinkingBlock",
    "TimeoutError",
    "TokenBudget",
    "TokenClaims",
    "TokenPermissions",
    "Tool",
    "ToolPermissionContext",
    "ToolResult",
    "ToolResultBlock",
    "ToolUseBlock",
    "Usage",
    "UserMessage",
    "ValidationError",
    "__version__",
    "create_budget",
    "create_mcp_server",
    "create_sdk_mcp_server",
    "create_token",
    "decode_token",
    "error_result",
    "get_assistant_text",
    "get_result_text",
    "image_result",
    "is_token_expired",
    "query",
    "text_result",
    "tool",
    "verify_claims",
    "verify_token",
]
