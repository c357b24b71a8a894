"""Resuming a session when its replay is not available (the ``seq`` extension,
docs/protocol.md section 10).

A client that comes back with ``lastSeq`` to a server that cannot replay what it missed (the
grace passed, another node, a restart, a replay buffer that overflowed) gets
``replay_unavailable`` and the session as the store holds it. It then re-sends every turn it
did not see end, with the same ``turnId``. :class:`StoredTurns` answers those: a turn whose end
the session kept is answered with its messages and its end, as first sent; a turn whose user
message is stored but whose end is not (a server that died in the middle of it) is
``turn_lost``; any other id is a new turn.
"""

from __future__ import annotations

from ..errors import ChuckyError, SessionError
from ..protocol.frames import encode
from ..protocol.replay import ReplayBuffer
from ..protocol.server import ServerProtocol
from .store import SessionRecord
from .turn_frames import transcript_messages

__all__ = ["SessionReplay", "StoredTurns", "replay_unavailable", "turn_lost"]


class SessionReplay:
    """What a session whose client announced ``seq`` keeps for a resume, without I/O: it
    numbers each frame sent (:meth:`number`), keeps the last ones (:attr:`buffer`) and the
    ``tool_call`` frames still waiting for their result, and says what a resuming socket must
    get (:meth:`resume`). The connection writes; this decides."""

    __slots__ = ("_calls", "buffer", "proto")

    def __init__(self, proto: ServerProtocol, max_frames: int, max_bytes: int) -> None:
        self.proto = proto
        self.buffer = ReplayBuffer(max_frames, max_bytes)
        self._calls: dict[str, tuple[int, str]] = {}  # pending call -> (seq, unnumbered frame)

    def number(self, text: str) -> tuple[int, str]:
        """``text`` with the next ``seq``, kept for a resume."""
        seq, text = self.proto.stamp(text)
        self.buffer.append(seq, text)
        return seq, text

    def call_sent(self, call_id: str, seq: int, frame: str) -> None:
        """The ``tool_call`` ``frame`` went out as ``seq``: sent again to a client that
        resumes after it, until :meth:`call_done`."""
        self._calls[call_id] = (seq, frame)

    def call_done(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def resume(self, session_id: str, last_seq: int) -> list[str] | None:
        """The frames for a socket resuming after ``last_seq``: ``resumed``, the frames after
        it as first sent, then each pending tool call the client had received, numbered anew
        (its result may have been lost with the socket). ``None``: frames after ``last_seq``
        are no longer held."""
        missed = self.buffer.since(last_seq)
        if missed is None:
            return None
        frames = [self.proto.resumed(session_id, last_seq, len(missed))]
        frames.extend(text for _, text in missed)
        for call_id, (seq, frame) in list(self._calls.items()):
            if seq <= last_seq:
                again, text = self.number(frame)
                self._calls[call_id] = (again, frame)
                frames.append(text)
        return frames


def replay_unavailable(last_seq: int) -> ChuckyError:
    """The answer to a resume that cannot be replayed (not fatal: the session opens from the
    store)."""
    return SessionError(
        "Session resumed without replay: the frames after lastSeq are no longer held here; "
        "the session continues from the store (re-send the turns that did not end)",
        details={"reason": "replay_unavailable", "lastSeq": last_seq},
    )


def turn_lost(turn_id: str) -> ChuckyError:
    """The end of a re-sent turn cut short by a server that died while it ran."""
    return SessionError(
        f"Session turn {turn_id} was cut short by a server failure: its messages so far are in "
        "the session, its result was never written",
        details={"reason": "turn_lost", "turnId": turn_id},
    )


class StoredTurns:
    """The turns of a session opened by a resume without replay, by client turn id."""

    __slots__ = ("_session", "_uuids")

    def __init__(self, session: SessionRecord) -> None:
        self._session = session
        self._uuids: frozenset[str] | None = None

    def answer(self, turn_id: str) -> tuple[str, ...] | None:
        """The frames answering a re-sent turn (its messages, then its end), or ``None``: the
        session has no turn with this id, so it is a new one."""
        session = self._session
        stored = session.turns.get(turn_id)
        if stored is not None:
            position, count = int(stored["position"]), int(stored["count"])
            added = session.transcript[position + 1 : position + count]
            frames = [encode(m.to_wire()) for m in transcript_messages(session, added)]
            frames.append(encode(stored["end"]))
            return tuple(frames)
        if self._uuids is None:
            self._uuids = frozenset(str(m["uuid"]) for m in session.transcript)
        if turn_id in self._uuids:
            return (encode({"type": "error", "payload": turn_lost(turn_id).to_payload()}),)
        return None
