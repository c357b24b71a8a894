"""What a client keeps so that a session survives a lost socket (our ``seq`` extension,
docs/protocol.md section 10, *``seq``: sessions that survive the network*). Pure: no I/O, no
clock; :class:`~chucky.protocol.client.ClientProtocol` owns one of each.

* :class:`SeqCursor`: the highest ``seq`` received (``lastSeq`` of a resume), so that a frame
  replayed twice is dropped (never repeated), and the ``seq`` to ``ack``.
* :class:`OpenTurns`: the turns sent and not ended yet, oldest first, each with its ``turnId``
  and the text of its frame, sent again (same id) after a resume: the server runs a turn once
  per id.
* :class:`DeliveredUuids`: the ``uuid`` of the last messages handed to the application. The
  server sends a re-sent turn's stored messages (and its ``result``) again with their first
  ``uuid``; after a resume, those already delivered are dropped.
* :func:`resume_payload`: the ``init`` payload that resumes a session.
"""

from __future__ import annotations

import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "RESUME_DROPPED_KEYS",
    "SEQ_EXTENSION",
    "TURN_ID_PATTERN",
    "DeliveredUuids",
    "OpenTurn",
    "OpenTurns",
    "SeqCursor",
    "new_turn_id",
    "resume_payload",
]

SEQ_EXTENSION: Final = "seq"
"""The name our client announces in ``chuckyExtensions`` when it may reconnect."""

TURN_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,100}")
"""What a server accepts as a ``turnId`` (docs/protocol.md section 10)."""

RESUME_DROPPED_KEYS: Final = ("continue", "forkSession", "resumeSessionAt", "messages", "resume")
"""``init`` keys that opened the session the first time and must not act again on a resume:
the session to resume is named by ``sessionId`` (a ``continue`` or a fork resolved to it), and
a history seeded once must not be appended twice."""


def new_turn_id() -> str:
    """A fresh ``turnId`` (32 hex digits)."""
    return uuid.uuid4().hex


def resume_payload(
    init_payload: Mapping[str, Any], *, session_id: str, last_seq: int
) -> dict[str, Any]:
    """The ``init`` payload of a resume: the first one, without :data:`RESUME_DROPPED_KEYS`,
    naming ``session_id`` and ``last_seq`` and announcing ``seq``."""
    payload = {k: v for k, v in init_payload.items() if k not in RESUME_DROPPED_KEYS}
    payload["chuckyExtensions"] = with_seq(payload.get("chuckyExtensions"))
    payload["sessionId"] = session_id
    payload["lastSeq"] = last_seq
    return payload


def with_seq(extensions: Any) -> list[str]:
    """``extensions`` (a list of names, or nothing) with ``seq`` added once."""
    names = [name for name in extensions if isinstance(name, str)] if extensions else []
    if SEQ_EXTENSION not in names:
        names.append(SEQ_EXTENSION)
    return names


class SeqCursor:
    """The ``seq`` numbering as the client sees it.

    ``last_seq`` is the highest ``seq`` received; a frame at or below it was received already
    (a replay that overlaps) and is dropped. ``numbered`` tells whether the server numbers its
    frames at all: a server that does not announce ``seq`` cannot resume a session.
    """

    __slots__ = ("acked", "last_seq", "numbered")

    def __init__(self) -> None:
        self.last_seq = 0
        self.acked = 0
        self.numbered = False

    def accept(self, seq: int | None) -> bool:
        """Whether the frame numbered ``seq`` is new (an unnumbered frame always is)."""
        if seq is None:
            return True
        self.numbered = True
        if seq <= self.last_seq:
            return False
        self.last_seq = seq
        return True

    def restart(self) -> None:
        """A new numbering starts (after ``replay_unavailable``: the next frame is ``seq`` 1)."""
        self.last_seq = 0
        self.acked = 0

    def take_ack(self) -> int | None:
        """The ``seq`` to acknowledge now, if there is one not acknowledged yet."""
        if not self.numbered or self.last_seq <= self.acked:
            return None
        self.acked = self.last_seq
        return self.last_seq


@dataclass(frozen=True, slots=True)
class OpenTurn:
    """A turn sent and not ended: its id and, when it may be sent again, its frame."""

    turn_id: str
    frame: str | None


class OpenTurns:
    """The turns sent and not ended, oldest first (a server ends them in order, section 4)."""

    __slots__ = ("_turns",)

    def __init__(self) -> None:
        self._turns: deque[OpenTurn] = deque()

    def __len__(self) -> int:
        return len(self._turns)

    def __iter__(self) -> Iterator[OpenTurn]:
        return iter(self._turns)

    def add(self, turn_id: str, frame: str | None) -> None:
        self._turns.append(OpenTurn(turn_id, frame))

    def end_oldest(self) -> OpenTurn | None:
        """The oldest turn ended (its ``result`` or ending ``error`` came); ``None`` if none
        was open."""
        return self._turns.popleft() if self._turns else None

    def frames(self) -> list[str]:
        """The frames to send again after a resume, oldest first."""
        return [turn.frame for turn in self._turns if turn.frame is not None]

    def clear(self) -> int:
        count = len(self._turns)
        self._turns.clear()
        return count


class DeliveredUuids:
    """A bounded set of message ``uuid``s, the oldest forgotten first."""

    __slots__ = ("_limit", "_order", "_set")

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._order: deque[str] = deque()
        self._set: set[str] = set()

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, value: object) -> bool:
        return value in self._set

    def add(self, value: str) -> None:
        if value in self._set:
            return
        if len(self._order) >= self._limit:
            self._set.discard(self._order.popleft())
        self._order.append(value)
        self._set.add(value)

    def clear(self) -> None:
        self._order.clear()
        self._set.clear()


TurnIdFactory = Callable[[], str]
