"""A session as the server holds it: :class:`SessionRecord`, its transcript, and the view of
it that providers take (:class:`ModelView`). Part of the :mod:`chucky.server.store` interface,
which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .ids import new_id

__all__ = ["TURNS_KEPT", "ModelMessage", "ModelView", "SessionRecord"]


class ModelMessage(dict[str, Any]):
    """A message of a session's provider view (``role`` and ``content``): a plain ``dict`` that
    can be weakly referenced, so per-message costs (token estimates) can be remembered for as
    long as the message lives (:class:`chucky.server.providers.base.MessageMemo`)."""

    __slots__ = ("__weakref__",)


class ModelView(list[dict[str, Any]]):
    """A session's provider view: its messages as :class:`ModelMessage` objects.

    It changes only at its end (a message appended, the last one taken back), and every message
    appended is a new object; ``sums`` keeps running totals of per-message measures for
    :meth:`chucky.server.providers.base.MessageMemo.total`, so an estimate over the whole
    history costs the messages added since the last one, not the history's length.
    """

    __slots__ = ("sums",)

    def __init__(self, messages: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(messages)
        self.sums: dict[object, Any] = {}


@dataclass(slots=True)
class SessionRecord:
    """One session: its owner, its model and its transcript.

    ``transcript`` holds every message in the Anthropic Messages API shape plus its ``uuid``:
    ``{"uuid": ..., "role": "user" | "assistant", "content": str | [blocks]}``. Change it only
    through :meth:`append` and :meth:`replace_transcript`, which keep the provider's view and
    tell the store what it has not written yet.

    Attributes:
        persisted: How many messages of ``transcript`` the store holds (the store sets it).
        rewritten: The transcript was replaced since the last save (the store rewrites it).
        state: ``idle`` or ``running`` (recorded; informative).
        turns: The ends of the session's last :data:`TURNS_KEPT` turns that had a client turn
            id (``turnId``, docs/protocol.md section 10), oldest first: ``{turn_id:
            {"position": i, "count": n, "end": frame}}`` -- its user message is
            ``transcript[i]``, it added ``n`` messages, and ``frame`` is its end as sent (a
            ``result`` message or an ``error`` frame). Change it only through
            :meth:`record_turn`.
        turns_changed: ``turns`` changed since the last save (the store writes it).
    """

    session_id: str
    project_id: str
    user_id: str
    model: str
    created_at: float
    last_activity_at: float
    transcript: list[dict[str, Any]] = field(default_factory=list)
    spent_microdollars: int = 0
    state: str = "idle"
    persisted: int = 0
    rewritten: bool = False
    turns: dict[str, dict[str, Any]] = field(default_factory=dict)
    turns_changed: bool = False
    # The transcript as providers take it, kept alongside so a model call does not copy the
    # whole history (every call of a long session used to).
    _model_view: ModelView = field(default_factory=ModelView, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rebuild_view()

    def _rebuild_view(self) -> None:
        self._model_view = ModelView(
            ModelMessage(role=m["role"], content=m["content"]) for m in self.transcript
        )

    def append(self, role: str, content: Any, message_uuid: str | None = None) -> str:
        """Add a message; returns its uuid."""
        message_uuid = message_uuid or new_id()
        self.transcript.append({"uuid": message_uuid, "role": role, "content": content})
        self._model_view.append(ModelMessage(role=role, content=content))
        return message_uuid

    def drop_last(self) -> None:
        """Take back the last message, one the store does not hold (a turn refused at its
        start takes back its user message)."""
        assert len(self.transcript) > self.persisted or self.rewritten, "the message is stored"
        self.transcript.pop()
        self._model_view.pop()

    def replace_transcript(self, transcript: list[dict[str, Any]]) -> None:
        """Set the whole transcript (resume at a message, fork)."""
        self.transcript = transcript
        self.rewritten = True
        self._rebuild_view()

    def record_turn(self, turn_id: str, end: dict[str, Any]) -> None:
        """Keep the end of the turn whose user message has the ``uuid`` ``turn_id`` (it
        added every message from there on), for a client that re-sends the turn."""
        transcript = self.transcript
        position = next(
            (i for i in range(len(transcript) - 1, -1, -1) if transcript[i]["uuid"] == turn_id),
            None,
        )
        if position is None:
            return  # its user message was taken back (refused): it never ran
        turns = self.turns
        turns.pop(turn_id, None)
        turns[turn_id] = {"position": position, "count": len(transcript) - position, "end": end}
        while len(turns) > TURNS_KEPT:
            del turns[next(iter(turns))]
        self.turns_changed = True

    def model_messages(self) -> list[dict[str, Any]]:
        """The transcript as a provider takes it (``role`` and ``content`` only).

        The same list on every call: providers read it and must not change it.
        """
        return self._model_view


TURNS_KEPT = 16
"""Turn ends a session keeps for clients that re-send a turn (:meth:`SessionRecord.record_turn`)."""
