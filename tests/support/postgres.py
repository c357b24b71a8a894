"""A PostgreSQL server for the tests: ``postgres_url`` (session) and ``postgres_database``.

``CHUCKY_TEST_POSTGRES_URL`` (``postgresql+asyncpg://user:pw@host:port/db``, a role allowed to
create databases) points the tests at an existing server. Otherwise one throwaway cluster is
started for the whole test session from the PostgreSQL binaries (``initdb``, ``pg_ctl``: found
in ``/usr/lib/postgresql/*/bin`` or on ``PATH``) in a temporary directory, listening on
127.0.0.1 with durability off, and stopped at the end. When running as root, the binaries run
as the ``postgres`` OS user (``runuser``), as PostgreSQL refuses root.

Each test that asks for ``postgres_database`` gets a database of its own, dropped afterwards
(a plain fixture: ``request.getfixturevalue("postgres_database")`` works in async tests too).
Without PostgreSQL the tests that need it are skipped, saying how to get it, except under
``CI=true`` where they fail: CI must run them.

Registered for every test directory in ``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

ENV_URL = "CHUCKY_TEST_POSTGRES_URL"
_START_TIMEOUT = 60
_HINT = "install postgresql (Debian: apt-get install postgresql) or set CHUCKY_TEST_POSTGRES_URL"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


@dataclass
class Cluster:
    """A running throwaway cluster."""

    directory: Path
    port: int
    run_as: list[str]
    pg_ctl: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if not self.directory.exists():
            return  # stopped already
        subprocess.run(
            [
                *self.run_as,
                *(str(self.pg_ctl), "-D", str(self.directory / "data")),
                *("-m", "immediate", "-w", "stop"),
            ],
            capture_output=True,
            check=False,
            cwd=self.directory,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def find_binary(name: str) -> Path | None:
    """The newest installed PostgreSQL's ``name`` binary, or the one on ``PATH``."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))

    installed = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=version)
    if installed:
        return installed[-1]
    found = shutil.which(name)
    return Path(found) if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_cluster() -> Cluster:
    """Initialise and start a cluster in a new temporary directory.

    Raises:
        PostgresUnavailable: no binaries, no user to run them as, or the server did not start.
    """
    initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise PostgresUnavailable("initdb/pg_ctl not found in /usr/lib/postgresql/*/bin or PATH")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no 'postgres' OS user to run the server as"
            ) from None
        if runuser is None:
            raise PostgresUnavailable("running as root and runuser is not available")
        run_as = [runuser, "-u", "postgres", "--"]
    # /tmp rather than $TMPDIR: the postgres user must reach it, and the socket path stays short.
    directory = Path(tempfile.mkdtemp(prefix="chucky-pg-", dir="/tmp" if owner else None))
    if owner is not None:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    try:
        _run(
            [
                *run_as,
                *(str(initdb), "-D", str(directory / "data"), "--auth=trust"),
                *("--username=postgres", "--encoding=UTF8", "--locale=C", "--no-sync"),
            ],
            directory,
        )
        last_error = ""
        for _ in range(3):  # another process may take the free port before the server does
            port = _free_port()
            settings = (
                f"-k {directory} -h 127.0.0.1 -p {port} -F -c fsync=off -c full_page_writes=off"
                " -c synchronous_commit=off -c max_connections=200"
                # Minimal WAL: CREATE DATABASE ... STRATEGY FILE_COPY (one per test) is cheaper.
                " -c wal_level=minimal -c max_wal_senders=0"
            )
            started = subprocess.run(
                [
                    *run_as,
                    *(str(pg_ctl), "-D", str(directory / "data"), "-l", str(directory / "log")),
                    *("-o", settings, "-w", "-t", str(_START_TIMEOUT), "start"),
                ],
                capture_output=True,
                text=True,
                check=False,
                cwd=directory,
            )
            if started.returncode == 0:
                cluster = Cluster(directory=directory, port=port, run_as=run_as, pg_ctl=pg_ctl)
                # Should pytest end without running the session's teardown.
                atexit.register(cluster.stop)
                return cluster
            log = directory / "log"
            last_error = (started.stderr or started.stdout).strip() + (
                "\n" + log.read_text(errors="replace")[-2000:] if log.exists() else ""
            )
        raise PostgresUnavailable(f"pg_ctl start failed: {last_error}")
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=cwd)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise PostgresUnavailable(f"{' '.join(command)} exited with {result.returncode}: {output}")


def _unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL not available: {reason}; {_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _admin_dsn(url: str) -> str:
    """An asyncpg DSN for a SQLAlchemy URL."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    """``url`` naming another database of the same server."""
    from sqlalchemy import make_url

    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL of a PostgreSQL server's maintenance database, for the whole session."""
    configured = os.environ.get(ENV_URL)
    if configured:
        yield configured
        return
    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _admin(url: str, *statements: str) -> None:
    """Run maintenance statements on the server of ``url``.

    In a thread of its own with its own event loop, so a fixture can call it from anywhere:
    from a sync fixture, or through ``request.getfixturevalue`` inside a running async test.
    """

    async def run() -> None:
        import asyncpg

        admin = await asyncpg.connect(_admin_dsn(url))
        try:
            for statement in statements:
                if "{fast}" in statement:
                    # PostgreSQL 15's default (WAL_LOG) copies the template through the WAL.
                    fast = " STRATEGY FILE_COPY" if admin.get_server_version().major >= 15 else ""
                    statement = statement.replace("{fast}", fast)
                await admin.execute(statement)
        finally:
            await admin.close()

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="postgres-admin") as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty database for one test (dropped afterwards)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    _admin(postgres_url, f'CREATE DATABASE "{name}"{{fast}}')
    try:
        yield with_database(postgres_url, name)
    finally:
        _admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
