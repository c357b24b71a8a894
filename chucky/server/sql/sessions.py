"""Sessions and their transcripts in SQL.

A session is one ``sessions`` row; its transcript is one ``messages`` row per message, keyed by
(session, position). Saving appends the messages the store does not hold yet, or rewrites them
all after :meth:`~chucky.server.store.SessionRecord.replace_transcript`. Message content (a
string or a list of blocks) is stored as ASCII JSON, so lone surrogates and NUL characters
survive both engines.
"""

from __future__ import annotations

import json
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.engine import Row

from ...errors import SessionError, SessionNotFoundError
from ..store import SessionRecord
from .db import Db, Sql
from .schema import messages, sessions

__all__ = ["decode_content", "delete", "encode_content", "insert", "latest", "load", "save"]


def encode_content(content: Any) -> str:
    """The stored form of a message's content (ASCII JSON: escapes survive any text column)."""
    return json.dumps(content, ensure_ascii=True, separators=(",", ":"))


def decode_content(stored: str) -> Any:
    """The content :func:`encode_content` stored."""
    return json.loads(stored)


async def insert(connection: Db, record: SessionRecord) -> None:
    """Write a new session and its transcript (the caller updates ``persisted``)."""
    await connection.execute(
        sessions.insert().values(
            id=record.session_id,
            project_id=record.project_id,
            user_id=record.user_id,
            model=record.model,
            created_at=record.created_at,
            last_activity_at=record.last_activity_at,
            state=record.state,
            spent_microdollars=record.spent_microdollars,
            message_count=len(record.transcript),
            turns=encode_content(record.turns),
        )
    )
    await _insert_messages(connection, record, 0)


async def load(
    connection: Db, session_id: str, project_id: str, user_id: str
) -> SessionRecord | None:
    """The session with its transcript, if it belongs to (project, user)."""
    row = (
        await connection.execute(
            select(sessions).where(
                sessions.c.id == session_id,
                sessions.c.project_id == project_id,
                sessions.c.user_id == user_id,
            )
        )
    ).one_or_none()
    return None if row is None else await _with_transcript(connection, row)


async def latest(connection: Db, project_id: str, user_id: str) -> SessionRecord | None:
    """The owner's most recently active session, with its transcript."""
    row = (
        await connection.execute(
            select(sessions)
            .where(sessions.c.project_id == project_id, sessions.c.user_id == user_id)
            .order_by(sessions.c.last_activity_at.desc(), sessions.c.created_at.desc())
            .limit(1)
        )
    ).one_or_none()
    return None if row is None else await _with_transcript(connection, row)


_SAVE_ROW: Final = Sql(
    """
    UPDATE sessions
       SET model = :model, last_activity_at = :last_activity_at, state = :state,
           spent_microdollars = :spent_microdollars, message_count = :message_count
     WHERE id = :id
    RETURNING id
    """
)
_SAVE_ROW_AND_TURNS: Final = Sql(
    """
    UPDATE sessions
       SET model = :model, last_activity_at = :last_activity_at, state = :state,
           spent_microdollars = :spent_microdollars, message_count = :message_count,
           turns = :turns
     WHERE id = :id
    RETURNING id
    """
)
_FORGET_MESSAGES: Final = Sql("DELETE FROM messages WHERE session_id = :session_id")
_INSERT_MESSAGE: Final = Sql(
    """
    INSERT INTO messages (session_id, position, uuid, role, content)
    VALUES (:session_id, :position, :uuid, :role, :content)
    """
)


async def save(db: Db, record: SessionRecord) -> None:
    """Write what changed since the last save; the caller updates ``persisted``/``rewritten``.

    Raises:
        SessionNotFoundError: the session is not in the store.
    """
    values: dict[str, Any] = {
        "id": record.session_id,
        "model": record.model,
        "last_activity_at": record.last_activity_at,
        "state": record.state,
        "spent_microdollars": record.spent_microdollars,
        "message_count": len(record.transcript),
    }
    statement = _SAVE_ROW
    if record.turns_changed:  # a turn with an id ended: written with its end
        statement = _SAVE_ROW_AND_TURNS
        values["turns"] = encode_content(record.turns)
    updated = await db.first(statement, values)
    if updated is None:
        raise SessionNotFoundError(
            f"Session {record.session_id} not found",
            details={"reason": "session_not_found"},
            session_id=record.session_id,
        )
    if record.rewritten:
        await db.run(_FORGET_MESSAGES, {"session_id": record.session_id})
        await _insert_messages(db, record, 0)
    else:
        await _insert_messages(db, record, record.persisted)


_OWNED: Final = Sql(
    "SELECT id FROM sessions WHERE id = :id AND project_id = :project_id AND user_id = :user_id"
)
_LEASED: Final = Sql(
    "SELECT node_id FROM leases WHERE session_id = :session_id AND expires_at > :now LIMIT 1"
)
_DELETE_LEASES: Final = Sql("DELETE FROM leases WHERE session_id = :session_id")
_DELETE_SESSION: Final = Sql("DELETE FROM sessions WHERE id = :id")


async def delete(db: Db, session_id: str, project_id: str, user_id: str, now: float) -> bool:
    """Delete the owner's session and its messages; ``False`` if there was none to delete.

    Raises:
        SessionError: ``session_busy``: a lease on the session has not expired.
    """
    owned = await db.first(_OWNED, {"id": session_id, "project_id": project_id, "user_id": user_id})
    if owned is None:
        return False
    if await db.first(_LEASED, {"session_id": session_id, "now": now}) is not None:
        raise SessionError(
            f"Session {session_id} is busy: it is open on a connection",
            details={"reason": "session_busy"},
            session_id=session_id,
        )
    await db.run(_DELETE_LEASES, {"session_id": session_id})
    # The messages go explicitly: SQLite enforces ON DELETE CASCADE only with foreign keys on.
    await db.run(_FORGET_MESSAGES, {"session_id": session_id})
    await db.run(_DELETE_SESSION, {"id": session_id})
    return True


async def _insert_messages(db: Db, record: SessionRecord, start: int) -> None:
    rows = [
        {
            "session_id": record.session_id,
            "position": position,
            "uuid": message["uuid"],
            "role": message["role"],
            "content": encode_content(message["content"]),
        }
        for position, message in enumerate(record.transcript[start:], start)
    ]
    await db.run(_INSERT_MESSAGE, rows)


async def _with_transcript(connection: Db, row: Row[Any]) -> SessionRecord:
    stored = await connection.execute(
        select(messages.c.uuid, messages.c.role, messages.c.content)
        .where(messages.c.session_id == row.id)
        .order_by(messages.c.position)
    )
    transcript = [
        {"uuid": m.uuid, "role": m.role, "content": decode_content(m.content)} for m in stored
    ]
    return SessionRecord(
        session_id=row.id,
        project_id=row.project_id,
        user_id=row.user_id,
        model=row.model,
        created_at=float(row.created_at),
        last_activity_at=float(row.last_activity_at),
        transcript=transcript,
        spent_microdollars=int(row.spent_microdollars),
        state=row.state,
        persisted=len(transcript),
        turns=decode_content(row.turns),
    )
