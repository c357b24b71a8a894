"""Deleting a session on its owner's request: ``POST /sessions/clear`` (docs/protocol.md
section 9).

Only the owner (same project, same user) deletes a session; for anyone else the session does
not exist, and a session that does not exist (any more) is answered ``deleted: false``, so
clearing is idempotent. A session open on a connection is ``session_busy``: the answer is known
at once when the connection is a live one of this node; otherwise (a socket that is closing, a
process that died holding the lease) the lease is reclaimed or awaited for up to
:data:`~chucky.server.sessions.RELEASE_WAIT` seconds, as when a session is resumed.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ..errors import SessionError
from ..tokens import TokenClaims
from .sessions import RELEASE_WAIT

if TYPE_CHECKING:
    from .app import ChuckyServer

__all__ = ["clear_session"]


async def clear_session(server: ChuckyServer, claims: TokenClaims, session_id: str) -> bool:
    """Delete the claims' user's session ``session_id`` and its transcript.

    Returns:
        Whether a session was deleted (``False``: none of this user's has that id).

    Raises:
        SessionError: ``session_busy``: the session is open on a connection.
    """
    deadline = time.monotonic() + RELEASE_WAIT
    reclaimed = False
    while True:
        try:
            return await server.store.delete_session(
                session_id, claims.iss, claims.sub, time.time()
            )
        except SessionError as exc:
            if exc.reason != "session_busy" or server.holds_live(session_id):
                raise
            if not reclaimed:
                reclaimed = True
                await server.reclaim_dead_nodes(time.time())
                continue
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.02)
