"""Nodes in SQL: the server processes sharing the database, and taking back a dead one's share.

A node's row is written when its process starts, touched by its heartbeat and deleted when it
shuts down cleanly. A row left behind is a process that died: on its own host, another
process proves it (:mod:`chucky.server.nodes`, on the rows :func:`on_host` reads) and
:func:`reclaim` takes back its leases and reservations at once. A proof holds for good (a node
id is never reused), so it needs no lock between the read and the reclaim. Reclaiming is
idempotent: leases are deleted by node, and each
reservation is settled through the guarded settle of :mod:`.ledger`, so two processes
reclaiming one dead node at once take nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import delete, select, update

from ..store import NodeRecord, Reclaimed
from . import ledger
from .db import Db
from .engines import Backend, insert_for
from .leases import drop_node
from .schema import nodes

__all__ = [
    "NODE_RETENTION",
    "forget_silent",
    "on_host",
    "reclaim",
    "register",
    "remove",
    "touch",
]

NODE_RETENTION: Final = 86_400.0
"""Seconds a node that stopped heartbeating stays registered (its leases expired long ago)."""


async def register(connection: Db, backend: Backend, node: NodeRecord, now: float) -> None:
    """Insert the node, or mark it seen if it is there."""
    await connection.execute(
        insert_for(backend, nodes)
        .values(
            node_id=node.node_id,
            host=node.host,
            pid=node.pid,
            process_start=node.process_start,
            started_at=now,
            seen_at=now,
        )
        .on_conflict_do_update(index_elements=[nodes.c.node_id], set_={"seen_at": now})
    )


async def remove(connection: Db, node_id: str) -> bool:
    """Delete the node's row; whether there was one."""
    removed = await connection.execute(
        delete(nodes).where(nodes.c.node_id == node_id).returning(nodes.c.node_id)
    )
    return removed.one_or_none() is not None


async def touch(connection: Db, node_id: str, now: float) -> None:
    """Mark the node seen at ``now``."""
    await connection.execute(update(nodes).where(nodes.c.node_id == node_id).values(seen_at=now))


async def forget_silent(connection: Db, now: float) -> None:
    """Delete the nodes not seen for :data:`NODE_RETENTION` seconds."""
    await connection.execute(delete(nodes).where(nodes.c.seen_at < now - NODE_RETENTION))


async def on_host(connection: Db, host: str) -> list[NodeRecord]:
    """The nodes registered on ``host``, oldest first."""
    rows = await connection.execute(
        select(nodes.c.node_id, nodes.c.host, nodes.c.pid, nodes.c.process_start)
        .where(nodes.c.host == host)
        .order_by(nodes.c.started_at, nodes.c.node_id)
    )
    return [
        NodeRecord(
            node_id=row.node_id, host=row.host, pid=int(row.pid), process_start=row.process_start
        )
        for row in rows
    ]


async def reclaim(connection: Db, node_ids: Sequence[str], now: float) -> Reclaimed:
    """For each of these (dead) nodes: drop its leases, settle its open reservations at their
    full amount, delete its row."""
    reclaimed = leases = reservations = 0
    for node_id in node_ids:
        leases += await drop_node(connection, node_id)
        reservations += await ledger.settle_node(connection, node_id, now)
        if await remove(connection, node_id):
            reclaimed += 1
    return Reclaimed(nodes=reclaimed, leases=leases, reservations=reservations)
