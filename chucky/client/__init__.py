"""The asyncio client: :class:`Chucky`, :class:`Session` and what they return; their blocking
face :class:`SyncChucky`, :class:`SyncSession`."""

from .chucky import Chucky
from .events import (
    StructuredOutputDone,
    TextDelta,
    TextDone,
    ToolCallArgumentsDone,
    ToolCallStarted,
    ToolResultEvent,
    TurnAccumulator,
    TurnEvent,
    TurnResult,
)
from .hooks import (
    CanUseTool,
    HookCallback,
    HookContext,
    HookMatcher,
    PermissionResult,
    PermissionResultAllow,
    PermissionResultDeny,
    ToolPermissionContext,
)
from .oneshot import query
from .reconnect import ReconnectEvent, ReconnectOutcome, TokenProvider
from .results import PromptResult, StreamEvent
from .session import Session, SessionState
from .settings import DEFAULT_MODEL, DEFAULT_URL, SessionArgs
from .stream import TurnStream
from .sync import SyncChucky, SyncSession

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_URL",
    "CanUseTool",
    "Chucky",
    "HookCallback",
    "HookContext",
    "HookMatcher",
    "PermissionResult",
    "PermissionResultAllow",
    "PermissionResultDeny",
    "PromptResult",
    "ReconnectEvent",
    "ReconnectOutcome",
    "Session",
    "SessionArgs",
    "SessionState",
    "StreamEvent",
    "StructuredOutputDone",
    "SyncChucky",
    "SyncSession",
    "TextDelta",
    "TextDone",
    "TokenProvider",
    "ToolCallArgumentsDone",
    "ToolCallStarted",
    "ToolPermissionContext",
    "ToolResultEvent",
    "TurnAccumulator",
    "TurnEvent",
    "TurnResult",
    "TurnStream",
    "query",
]
