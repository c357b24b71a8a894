"""Projects and their secrets in SQL.

A project is one ``projects`` row; its secrets are ``project_secrets`` rows, oldest first by
their surrogate key, a revoked one keeping its row with ``revoked_at`` set. Changes to a
project's secrets lock its row first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write
lock), so "never revoke the last active secret" holds against a concurrent revoke.

Deleting a project removes every row keyed by its id, in one transaction: the project and its
secrets, its sessions (their messages go with them), its leases, its ledger rows and
reservations, its rate counters and its users' window anchors. Nothing of it is left to a
project created later with the same id.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Table, select, update
from sqlalchemy import delete as sql_delete

from ...errors import ValidationError
from ..store import Project, ProjectDeletion
from .db import Db
from .engines import Backend, insert_for
from .schema import (
    budget_anchors,
    leases,
    ledger,
    project_secrets,
    projects,
    rate_counters,
    reservations,
    sessions,
)

__all__ = [
    "accept_secrets",
    "create",
    "delete",
    "invalid",
    "load",
    "load_all",
    "lock",
    "revoke",
    "upsert",
]


def invalid(message: str) -> ValidationError:
    """The error of a request about projects that cannot be done."""
    return ValidationError(message, details={"reason": "invalid_options"})


async def create(
    connection: Db,
    backend: Backend,
    project_id: str,
    name: str,
    secret: str,
    now: float,
) -> Project:
    """A new project with one secret.

    Raises:
        ValidationError: ``project_id`` is taken.
    """
    created = await connection.scalar(
        insert_for(backend, projects)
        .values(id=project_id, name=name, created_at=now)
        .on_conflict_do_nothing()
        .returning(projects.c.id)
    )
    if created is None:
        raise invalid(f"Project {project_id} already exists")
    await accept_secrets(connection, backend, project_id, [secret], now)
    return await load(connection, project_id)


async def upsert(
    connection: Db,
    backend: Backend,
    project_id: str,
    secrets: Sequence[str],
    now: float,
) -> Project:
    """The project, created if missing, accepting each of ``secrets``."""
    await connection.execute(
        insert_for(backend, projects)
        .values(id=project_id, name=project_id, created_at=now)
        .on_conflict_do_nothing()
    )
    await accept_secrets(connection, backend, project_id, secrets, now)
    return await load(connection, project_id)


async def lock(connection: Db, project_id: str) -> str | None:
    """Lock the project's row until the transaction ends; ``None`` if there is no project."""
    found = await connection.scalar(
        select(projects.c.id).where(projects.c.id == project_id).with_for_update()
    )
    return None if found is None else str(found)


async def revoke(connection: Db, project_id: str, prefix: str, now: float) -> int:
    """Revoke the active secrets starting with ``prefix``, never all of them.

    Raises:
        ValidationError: no such project, or revoking would leave none active.
    """
    if await lock(connection, project_id) is None:
        raise invalid(f"No project {project_id}")
    active = (
        await connection.execute(
            select(project_secrets.c.id, project_secrets.c.secret).where(
                project_secrets.c.project_id == project_id,
                project_secrets.c.revoked_at.is_(None),
            )
        )
    ).all()
    matching = [row.id for row in active if row.secret.startswith(prefix)]
    if matching and len(matching) == len(active):
        raise invalid(
            f"Refusing to revoke every active secret of project {project_id}: "
            "add a new secret first"
        )
    if matching:
        await connection.execute(
            update(project_secrets).where(project_secrets.c.id.in_(matching)).values(revoked_at=now)
        )
    return len(matching)


async def accept_secrets(
    connection: Db,
    backend: Backend,
    project_id: str,
    secrets: Sequence[str],
    now: float,
) -> None:
    """Make each secret active: a secret revoked before is accepted again; one already active
    keeps its place."""
    for secret in secrets:
        await connection.execute(
            insert_for(backend, project_secrets)
            .values(project_id=project_id, secret=secret, created_at=now)
            .on_conflict_do_update(
                index_elements=[project_secrets.c.project_id, project_secrets.c.secret],
                set_={"revoked_at": None},
            )
        )


async def load(connection: Db, project_id: str) -> Project:
    """The project (which exists) with its active secrets."""
    (project,) = await load_all(connection, project_id)
    return project


async def load_all(connection: Db, project_id: str | None) -> list[Project]:
    """Every project (or only ``project_id``) with its active secrets, oldest first."""
    project_query = select(projects).order_by(projects.c.created_at, projects.c.id)
    secret_query = (
        select(project_secrets.c.project_id, project_secrets.c.secret)
        .where(project_secrets.c.revoked_at.is_(None))
        .order_by(project_secrets.c.id)
    )
    if project_id is not None:
        project_query = project_query.where(projects.c.id == project_id)
        secret_query = secret_query.where(project_secrets.c.project_id == project_id)
    rows = (await connection.execute(project_query)).all()
    active: dict[str, list[str]] = {row.id: [] for row in rows}
    for row in await connection.execute(secret_query):
        active[row.project_id].append(row.secret)
    return [
        Project(
            project_id=row.id,
            name=row.name,
            created_at=float(row.created_at),
            secrets=tuple(active[row.id]),
        )
        for row in rows
    ]


async def delete(connection: Db, project_id: str) -> ProjectDeletion:
    """Remove the project and everything keyed by its id (module docstring).

    Raises:
        ValidationError: nothing in the database belongs to ``project_id``.
    """
    existed = await lock(connection, project_id) is not None

    async def remove(table: Table) -> int:
        result = await connection.execute(sql_delete(table).where(table.c.project_id == project_id))
        return int(result.rowcount)

    secrets = await remove(project_secrets)
    removed_sessions = await remove(sessions)  # their messages: ON DELETE CASCADE
    usage = await remove(ledger)
    others = 0
    for table in (leases, reservations, rate_counters, budget_anchors):
        others += await remove(table)
    if existed:
        await connection.execute(sql_delete(projects).where(projects.c.id == project_id))
    if not (existed or removed_sessions or usage or others):
        raise invalid(f"No project {project_id}")
    return ProjectDeletion(
        project_id=project_id,
        existed=existed,
        secrets=secrets,
        sessions=removed_sessions,
        ledger_rows=usage,
    )
