"""The floor of a durable turn: a minimal server doing a trivial turn's work, no chucky code.

Run as a subprocess by ``bench_server.py``; prints ``floor server listening on ws://...``
first. Per ``user`` frame it does what ``chucky serve`` must do for an ``echo hi`` turn with a
priced model, and nothing else:

1. ``json.loads`` the frame;
2. the turn's start, one transaction (``BEGIN IMMEDIATE``): a grant on the user's ``ai`` and
   ``compute`` ledger rows and a reservation row for each, the session row, the user's message;
3. the ``system``/``init`` frame and the ``assistant`` frame (``json.dumps``, a fresh uuid each);
4. the turn's end, one transaction: both reservations settled and charged, the session row,
   the answer;
5. the ``result`` frame.

The statements are those of chucky's store (``chucky/server/sql/ledger.py`` and
``sessions.py``), on a SQLite file in WAL mode with ``synchronous = NORMAL`` (chucky's default),
through ``sqlite3`` on the event loop; the write-ahead log is checkpointed every 200 turns as
chucky does. The schema is chucky's own (:class:`~chucky.server.sql.store.SqlStore` creates the
file before the server starts; that is the only chucky code it runs). An ``init`` frame opens a
session (answered with a ``session_info`` control frame); any other frame is echoed.

So the ratio of a chucky turn to this one is what chucky's machinery costs over the work a
durable, priced turn cannot avoid in Python: the protocol state machine, validation, the agent
loop, pricing, the budget, metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

from websockets.asyncio.server import ServerConnection, serve

PROJECT = "floor"
MODEL = "claude-sonnet-4-5"

GRANT = """
    UPDATE ledger
       SET reserved = reserved + CASE WHEN CAST(:want AS BIGINT) <= :limit - used - reserved
                                      THEN CAST(:want AS BIGINT)
                                      ELSE :limit - used - reserved END,
           last_grant = CASE WHEN CAST(:want AS BIGINT) <= :limit - used - reserved
                             THEN CAST(:want AS BIGINT)
                             ELSE :limit - used - reserved END
     WHERE project_id = :project_id AND user_id = :user_id AND "window" = :window
       AND kind = :kind AND CAST(:limit AS BIGINT) - used - reserved >= CAST(:minimum AS BIGINT)
    RETURNING used, reserved, last_grant
"""
NEW_ROW = """
    INSERT INTO ledger (project_id, user_id, "window", kind, used, reserved, last_grant)
    VALUES (:project_id, :user_id, :window, :kind, 0, 0, 0)
    ON CONFLICT DO NOTHING
"""
NEW_RESERVATION = """
    INSERT INTO reservations
        (id, project_id, user_id, "window", kind, amount, node_id, created_at, expires_at,
         settled)
    VALUES
        (:id, :project_id, :user_id, :window, :kind, :amount, :node_id, :created_at,
         :expires_at, FALSE)
"""
SETTLE = """
    UPDATE reservations
       SET settled = TRUE, settled_at = :now,
           charged = CASE WHEN amount < CAST(:cap AS BIGINT) THEN amount
                          ELSE CAST(:cap AS BIGINT) END
     WHERE id = :id AND NOT settled
    RETURNING project_id, user_id, "window", kind, amount, charged
"""
CHARGE = """
    UPDATE ledger
       SET used = used + CAST(:charged AS BIGINT), reserved = reserved - CAST(:amount AS BIGINT)
     WHERE project_id = :project_id AND user_id = :user_id AND "window" = :window
       AND kind = :kind
"""
SAVE_ROW = """
    UPDATE sessions
       SET model = :model, last_activity_at = :last_activity_at, state = :state,
           spent_microdollars = :spent_microdollars, message_count = :message_count
     WHERE id = :id
    RETURNING id
"""
NEW_SESSION = """
    INSERT INTO sessions (id, project_id, user_id, model, created_at, last_activity_at, state,
                          spent_microdollars, message_count)
    VALUES (:id, :project_id, :user_id, :model, :now, :now, 'idle', 0, 0)
"""
INSERT_MESSAGE = """
    INSERT INTO messages (session_id, position, uuid, role, content)
    VALUES (:session_id, :position, :uuid, :role, :content)
"""

# The amounts of an `echo hi` turn of chucky's scripted model priced as claude-sonnet-4-5.
AI_WANT, AI_CHARGE, AI_LIMIT = 40_978, 24, 10**12
COMPUTE_WANT, COMPUTE_CHARGE, COMPUTE_LIMIT = 60_000, 1, 36 * 10**9
CHECKPOINT_EVERY = 200


async def create_schema(path: Path) -> None:
    """chucky's schema in a new SQLite file (chucky code, before serving)."""
    from chucky.server.sql.store import SqlStore

    store = SqlStore(f"sqlite+aiosqlite:///{path}")
    await store.open()
    await store.aclose()


class Floor:
    """One SQLite connection on the event loop, as chucky's inline transactions."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.execute("PRAGMA wal_autocheckpoint = 0")
        self.commits = 0

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.commits += 1
        if self.commits % CHECKPOINT_EVERY == 0:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def open_session(self, user_id: str) -> str:
        session_id = str(uuid.uuid4())
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            NEW_SESSION,
            {
                "id": session_id,
                "project_id": PROJECT,
                "user_id": user_id,
                "model": MODEL,
                "now": time.time(),
            },
        )
        for kind in ("ai", "compute"):
            db.execute(NEW_ROW, self.row(user_id, kind))
        self.commit()
        return session_id

    @staticmethod
    def row(user_id: str, kind: str) -> dict[str, object]:
        return {"project_id": PROJECT, "user_id": user_id, "window": "lifetime", "kind": kind}

    def reserve(self, user_id: str, kind: str, want: int, limit: int, now: float) -> str:
        row = self.row(user_id, kind)
        granted = self.db.execute(
            GRANT, {**row, "want": want, "limit": limit, "minimum": 1}
        ).fetchall()
        reservation_id = str(uuid.uuid4())
        self.db.execute(
            NEW_RESERVATION,
            {
                **row,
                "id": reservation_id,
                "amount": granted[0][2],
                "node_id": "floor",
                "created_at": now,
                "expires_at": now + 30,
            },
        )
        return reservation_id

    def settle(self, reservation_id: str, charge: int, now: float) -> None:
        project_id, user_id, window, kind, amount, charged = self.db.execute(
            SETTLE, {"id": reservation_id, "now": now, "cap": charge}
        ).fetchall()[0]
        self.db.execute(
            CHARGE,
            {
                "project_id": project_id,
                "user_id": user_id,
                "window": window,
                "kind": kind,
                "charged": charged,
                "amount": amount,
            },
        )

    def save(self, session_id: str, count: int, spent: int, role: str, content: str) -> None:
        now = time.time()
        self.db.execute(
            SAVE_ROW,
            {
                "id": session_id,
                "model": MODEL,
                "last_activity_at": now,
                "state": "idle",
                "spent_microdollars": spent,
                "message_count": count + 1,
            },
        ).fetchall()
        self.db.execute(
            INSERT_MESSAGE,
            {
                "session_id": session_id,
                "position": count,
                "uuid": str(uuid.uuid4()),
                "role": role,
                "content": content,
            },
        )


async def serve_floor(floor: Floor, ws: ServerConnection) -> None:
    user_id = f"user-{id(ws)}"
    session_id = ""
    messages = spent = 0
    async for text in ws:
        frame = json.loads(text)
        kind = frame.get("type")
        if kind == "init":
            session_id = floor.open_session(user_id)
            info = {"action": "session_info", "sessionId": session_id, "model": MODEL}
            await ws.send(json.dumps({"type": "control", "payload": info}))
            continue
        if kind != "user" or not session_id:
            await ws.send(text)
            continue
        began = time.perf_counter()
        now = time.time()
        db = floor.db
        db.execute("BEGIN IMMEDIATE")
        ai = floor.reserve(user_id, "ai", AI_WANT, AI_LIMIT, now)
        compute = floor.reserve(user_id, "compute", COMPUTE_WANT, COMPUTE_LIMIT, now)
        floor.save(session_id, messages, spent, "user", json.dumps(frame["message"]["content"]))
        messages += 1
        floor.commit()
        await ws.send(json.dumps(system_frame(session_id)))
        content = [{"type": "text", "text": "hi"}]
        await ws.send(json.dumps(assistant_frame(session_id, content)))
        db.execute("BEGIN IMMEDIATE")
        floor.settle(ai, AI_CHARGE, now)
        floor.settle(compute, COMPUTE_CHARGE, now)
        spent += AI_CHARGE
        floor.save(session_id, messages, spent, "assistant", json.dumps(content))
        messages += 1
        floor.commit()
        elapsed_ms = round((time.perf_counter() - began) * 1000)
        await ws.send(json.dumps(result_frame(session_id, elapsed_ms)))


def system_frame(session_id: str) -> dict[str, object]:
    return {
        "type": "system",
        "subtype": "init",
        "uuid": str(uuid.uuid4()),
        "session_id": session_id,
        "cwd": "/",
        "tools": [],
        "mcp_servers": [],
        "model": MODEL,
        "permissionMode": "default",
        "apiKeySource": "none",
    }


def usage() -> dict[str, int]:
    return {
        "input_tokens": 8,
        "output_tokens": 1,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def assistant_frame(session_id: str, content: list[dict[str, str]]) -> dict[str, object]:
    return {
        "type": "assistant",
        "uuid": str(uuid.uuid4()),
        "session_id": session_id,
        "message": {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage(),
        },
        "parent_tool_use_id": None,
    }


def result_frame(session_id: str, elapsed_ms: int) -> dict[str, object]:
    return {
        "type": "result",
        "subtype": "success",
        "uuid": str(uuid.uuid4()),
        "session_id": session_id,
        "is_error": False,
        "num_turns": 1,
        "duration_ms": elapsed_ms,
        "duration_api_ms": 0,
        "total_cost_usd": AI_CHARGE / 1e6,
        "usage": usage(),
        "result": "hi",
        "stop_reason": "end_turn",
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="the SQLite file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chucky-floor-") as directory:
        path = args.db or Path(directory) / "floor.db"
        await create_schema(path)
        floor = Floor(path)
        async with serve(
            lambda ws: serve_floor(floor, ws), "127.0.0.1", 0, compression=None
        ) as server:
            port = server.sockets[0].getsockname()[1]
            print(f"floor server listening on ws://127.0.0.1:{port}/", flush=True)
            await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
