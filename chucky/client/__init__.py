"""The asyncio client: :class:`Chucky`, :class:`Session` and what they return; their blocking
face :class:`SyncChucky`, :class:`SyncSession`."""

from .chucky import Chucky
from .results import PromptResult, StreamEvent
from .session import Session, SessionState
from .settings import DEFAULT_MODEL, DEFAULT_URL, SessionArgs
from .sync import SyncChucky, SyncSession

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_URL",
    "Chucky",
    "PromptResult",
    "Session",
    "SessionArgs",
    "SessionState",
    "StreamEvent",
    "SyncChucky",
    "SyncSession",
]
