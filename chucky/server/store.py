"""Where sessions live: the :class:`SessionStore` seam and its in-memory implementation.

The agent loop and the connection handler only talk to :class:`SessionStore`. This module holds
the in-memory store (sessions survive reconnects, not restarts); a SQL store behind the same
interface is a later step (ARCHITECTURE.md, "State and scale-out").
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MemoryStore", "SessionRecord", "SessionStore", "new_id"]


def new_id() -> str:
    """A new session or message id (a UUID4 string, as the official SDKs use)."""
    return str(uuid.uuid4())


@dataclass(slots=True)
class SessionRecord:
    """One session: its owner, its model and its transcript.

    ``transcript`` holds every message in the Anthropic Messages API shape plus its ``uuid``:
    ``{"uuid": ..., "role": "user" | "assistant", "content": str | [blocks]}``. Change it only
    through :meth:`append` and :meth:`replace_transcript`, which keep the provider's view.
    """

    session_id: str
    project_id: str
    user_id: str
    model: str
    created_at: float
    last_activity_at: float
    transcript: list[dict[str, Any]] = field(default_factory=list)
    spent_microdollars: int = 0
    # The transcript as providers take it, kept alongside so a model call does not copy the
    # whole history (every call of a long session used to).
    _model_view: list[dict[str, Any]] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self._rebuild_view()

    def _rebuild_view(self) -> None:
        self._model_view = [{"role": m["role"], "content": m["content"]} for m in self.transcript]

    def append(self, role: str, content: Any, message_uuid: str | None = None) -> str:
        """Add a message; returns its uuid."""
        message_uuid = message_uuid or new_id()
        self.transcript.append({"uuid": message_uuid, "role": role, "content": content})
        self._model_view.append({"role": role, "content": content})
        return message_uuid

    def replace_transcript(self, transcript: list[dict[str, Any]]) -> None:
        """Set the whole transcript (resume at a message, fork)."""
        self.transcript = transcript
        self._rebuild_view()

    def model_messages(self) -> list[dict[str, Any]]:
        """The transcript as a provider takes it (``role`` and ``content`` only).

        The same list on every call: providers read it and must not change it.
        """
        return self._model_view


class SessionStore(ABC):
    """Durable session state, scoped by owner (project ``iss`` + user ``sub``)."""

    @abstractmethod
    async def create(self, project_id: str, user_id: str, model: str, now: float) -> SessionRecord:
        """A new, empty session owned by (project, user)."""

    @abstractmethod
    async def get(self, session_id: str, project_id: str, user_id: str) -> SessionRecord | None:
        """The session if it exists AND belongs to (project, user); else ``None``.

        A session of someone else is indistinguishable from one that does not exist.
        """

    @abstractmethod
    async def latest(self, project_id: str, user_id: str) -> SessionRecord | None:
        """The owner's most recently active session."""

    @abstractmethod
    async def save(self, record: SessionRecord) -> None:
        """Persist the record's transcript, model, spend and activity time."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class MemoryStore(SessionStore):
    """Sessions in this process's memory, the ``max_sessions`` most recently used."""

    def __init__(self, *, max_sessions: int = 10_000) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, SessionRecord] = OrderedDict()

    async def create(self, project_id: str, user_id: str, model: str, now: float) -> SessionRecord:
        record = SessionRecord(new_id(), project_id, user_id, model, now, now)
        self._sessions[record.session_id] = record
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return record

    async def get(self, session_id: str, project_id: str, user_id: str) -> SessionRecord | None:
        record = self._sessions.get(session_id)
        if record is None or record.project_id != project_id or record.user_id != user_id:
            return None
        self._sessions.move_to_end(session_id)
        return record

    async def latest(self, project_id: str, user_id: str) -> SessionRecord | None:
        for record in reversed(self._sessions.values()):
            if record.project_id == project_id and record.user_id == user_id:
                return record
        return None

    async def save(self, record: SessionRecord) -> None:
        if record.session_id in self._sessions:
            self._sessions.move_to_end(record.session_id)
