"""Group commit: the store's transactions on a SQLite file, many to one commit, in one thread.

SQLite has one writer at a time, so the store runs every transaction of a file database in a
thread of its own (:class:`GroupCommit`). Callers on the event loop queue *jobs* (a work
function each, see :mod:`.db`); the thread takes everything queued, runs it as **one**
transaction -- each job inside a ``SAVEPOINT``, so a job that raises (a refused reservation, a
session that does not exist) is rolled back alone -- commits once, and hands the outcomes back
to the loop in one wake-up. Nothing waits for a batch to fill: a job queued while the thread is
idle starts at once, alone; jobs queued while a batch runs form the next one. Under load the
commit (the WAL append and, with ``synchronous = FULL``, its ``fsync``), the ``BEGIN`` and the
thread hand-off are paid once per batch instead of once per job.

When the thread is idle and commits do not wait for the disk (``synchronous = NORMAL``), a
job runs at once on the caller's thread instead (``inline``): a lone transaction then costs no
hand-off. It never waits there for another process's lock (it goes to the thread), and the
write-ahead log is checkpointed by the thread every :data:`_CHECKPOINT_EVERY` commits, not in
the committing thread as SQLite would.

A job's outcome is delivered only after its batch committed: nobody sees a write that could
still be rolled back. If a database error (disk full, I/O error, a busy timeout) breaks a batch,
the batch is rolled back and each of its jobs runs again in a transaction of its own, so one
job's failure is never another's. A job whose caller gave up before it ran is skipped; one whose
caller gave up while it ran is rolled back (its savepoint).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Generic, TypeVar, cast

from sqlalchemy import Connection, Engine

from ..._redact import redacting_logger
from .db import Db, ThreadDb, drive

__all__ = ["Abandoned", "GroupCommit", "Job"]

_T = TypeVar("_T")

logger = redacting_logger("chucky.server.store")

_SAVEPOINT: Final = "chucky_job"


_CHECKPOINT_EVERY: Final = 200
"""Commits between two checkpoints of the write-ahead log by the store's thread (``inline``):
about 4 MB of log for a turn's commits, SQLite's own default of 1,000 pages."""


class _Busy(Exception):
    """Another process holds the write lock: run the job in the store's thread (it waits)."""


class Abandoned(Exception):
    """The job's caller was cancelled: its writes are rolled back."""


class Job(Generic[_T]):
    """One transaction's worth of work, queued for the store's thread."""

    __slots__ = ("abandoned", "future", "loop", "work")

    def __init__(self, work: Callable[[Db], Awaitable[_T]], loop: asyncio.AbstractEventLoop):
        self.work = work
        self.loop = loop
        self.future: asyncio.Future[_T] = loop.create_future()
        self.abandoned = False
        """Set (from the loop) when the caller gives up; read by the thread."""


_Outcome = tuple[bool, Any]  # (ok, the result or the exception)


class GroupCommit:
    """The thread that runs a SQLite file's transactions, a batch per commit.

    Args:
        engine: A synchronous engine whose ``begin`` starts a write transaction (``BEGIN
            IMMEDIATE``, see :mod:`.engines`).
        is_database_error: Whether an exception means the database failed (the batch is then
            retried job by job) rather than the job refused (its savepoint rolled back).
        failed: The exception to deliver for a database error.
        inline: Let :meth:`submit` run a job on the caller's thread when the store's thread is
            idle (only where a commit does not wait for the disk: ``synchronous = NORMAL``).
        busy_timeout_ms: The connection's busy timeout (restored after an inline attempt).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        is_database_error: Callable[[BaseException], bool],
        failed: Callable[[BaseException], BaseException],
        inline: bool = False,
        busy_timeout_ms: int = 30_000,
    ) -> None:
        self._engine = engine
        self._inline = inline
        self._busy_timeout_ms = busy_timeout_ms
        self._since_checkpoint = 0
        self._is_database_error = is_database_error
        self._failed = failed
        self._lock = threading.Lock()
        self._pending: list[Job[Any]] = []
        self._draining = False
        self._db: ThreadDb | None = None  # the thread's connection
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="chucky-sqlite"
        )
        self.batches = 0
        """Transactions committed (or attempted) so far."""
        self.jobs = 0
        """Jobs run so far."""

    def submit(self, work: Callable[[Db], Awaitable[_T]]) -> Job[_T]:
        """Queue ``work``; await ``job.future`` for its outcome (after the commit).

        With ``inline``, a job submitted while the store's thread is idle runs at once, here,
        and its future is done on return: a lone transaction then costs no thread hand-off
        (two, with the wake-up of the event loop, were most of its cost). It never waits here
        for another process's write lock (``busy_timeout`` 0: it goes to the thread instead),
        and the write-ahead log is checkpointed by the thread, not here.
        """
        job = Job(work, asyncio.get_running_loop())
        if self._inline:
            with self._lock:
                idle = not self._draining
                self._draining = True
            if idle:
                try:
                    outcome = self._run_inline(job)
                finally:
                    self._release()
                if outcome is not None:
                    _deliver([(job, outcome)])
                    return job
        with self._lock:
            self._pending.append(job)
            start = not self._draining
            self._draining = True
        if start:
            self._thread.submit(self._drain)
        return job

    def _release(self) -> None:
        """The caller's thread is done with the connection: the store's thread takes over if
        there is anything for it (jobs of other threads, a checkpoint due)."""
        with self._lock:
            due = bool(self._pending) or self._since_checkpoint >= _CHECKPOINT_EVERY
            self._draining = due
        if due:
            self._thread.submit(self._drain)

    def _run_inline(self, job: Job[Any]) -> _Outcome | None:
        """``job`` alone, now; ``None`` if another process holds the write lock."""
        try:
            return self._transaction([job], wait=False)[0]
        except _Busy:
            return None
        except Exception as exc:
            return (False, self._failure(exc))

    async def aclose(self) -> None:
        """Finish the queued jobs, close the thread's connection and the engine."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._dispose)
        self._thread.shutdown(wait=False)

    # -- in the thread -------------------------------------------------------------------------

    def _dispose(self) -> None:
        self._drain()
        db, self._db = self._db, None
        if db is not None:
            db.connection.close()
        self._engine.dispose()

    def _drain(self) -> None:
        while True:
            if self._since_checkpoint >= _CHECKPOINT_EVERY:
                self._checkpoint()
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            outcomes = self._run(batch)
            loops: dict[asyncio.AbstractEventLoop, list[tuple[Job[Any], _Outcome]]] = {}
            for job, outcome in zip(batch, outcomes, strict=True):
                loops.setdefault(job.loop, []).append((job, outcome))
            for loop, delivered in loops.items():
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_deliver, delivered)

    def _run(self, batch: list[Job[Any]]) -> list[_Outcome]:
        outcomes: list[_Outcome | None] = [
            (False, Abandoned()) if job.abandoned else None for job in batch
        ]
        live = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if live:
            try:
                done = self._transaction([batch[i] for i in live])
            except Exception as exc:
                if not self._is_database_error(exc) or len(live) == 1:
                    done = [(False, self._failure(exc))] * len(live)
                else:
                    # One job broke the batch: each runs again alone, its failure its own.
                    done = [self._alone(batch[i]) for i in live]
            for i, outcome in zip(live, done, strict=True):
                outcomes[i] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _checkpoint(self) -> None:
        """Copy the write-ahead log into the database (``PASSIVE``: readers are not waited
        for); with ``inline``, SQLite's own automatic checkpoint is off, as it would run in the
        committing thread (an ``fsync`` on the event loop)."""
        self._since_checkpoint = 0
        db = self._db
        if db is None:
            return
        try:
            db.driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            logger.warning("checkpoint of the write-ahead log failed", exc_info=True)

    def _alone(self, job: Job[Any]) -> _Outcome:
        try:
            return self._transaction([job])[0]
        except Exception as exc:
            return (False, self._failure(exc))

    def _failure(self, exc: BaseException) -> BaseException:
        return self._failed(exc) if self._is_database_error(exc) else exc

    def _connect(self) -> ThreadDb:
        db = self._db
        if db is None:
            db = self._db = ThreadDb(self._engine.connect())
            if self._inline:
                db.driver.execute("PRAGMA wal_autocheckpoint = 0")
        return db

    def _begin(self, driver: sqlite3.Connection, *, wait: bool) -> None:
        if wait:
            driver.execute("BEGIN IMMEDIATE")
            return
        driver.execute("PRAGMA busy_timeout = 0")
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise _Busy from exc
            raise
        finally:
            driver.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")

    def _transaction(self, jobs: list[Job[Any]], *, wait: bool = True) -> list[_Outcome]:
        """Run ``jobs`` in one transaction and commit it; a database error propagates (the
        transaction rolled back, the connection dropped).

        The transaction is begun and ended on the ``sqlite3`` connection itself: SQLAlchemy's
        own transaction bookkeeping cost more than the statements of a turn. A Core statement
        run meanwhile finds the transaction open (see :mod:`.engines`) and joins it.
        """
        db = self._connect()
        connection, driver = db.connection, db.driver
        self._begin(driver, wait=wait)  # _Busy: nothing begun
        self.batches += 1
        self.jobs += len(jobs)
        self._since_checkpoint += 1
        alone = len(jobs) == 1
        outcomes: list[_Outcome] = []
        try:
            for job in jobs:
                if not alone:
                    driver.execute(f"SAVEPOINT {_SAVEPOINT}")
                try:
                    value: Any = drive(cast(Coroutine[Any, Any, Any], job.work(db)))
                    if job.abandoned:
                        raise Abandoned
                except Exception as exc:
                    if self._is_database_error(exc):
                        raise
                    if alone:
                        _end(connection, driver, commit=False)
                        return [(False, exc)]
                    driver.execute(f"ROLLBACK TO {_SAVEPOINT}")
                    outcomes.append((False, exc))
                else:
                    outcomes.append((True, value))
                if not alone:
                    driver.execute(f"RELEASE {_SAVEPOINT}")
            _end(connection, driver, commit=True)
        except Exception:
            self._db = None
            with contextlib.suppress(Exception):
                _end(connection, driver, commit=False)
            connection.close()
            raise
        return outcomes


def _end(connection: Connection, driver: sqlite3.Connection, *, commit: bool) -> None:
    """Commit or roll back the driver's transaction, and SQLAlchemy's view of it (a Core
    statement made it begin one)."""
    if connection.in_transaction():
        if commit:
            connection.commit()
        else:
            connection.rollback()
    if driver.in_transaction:
        if commit:
            driver.commit()
        else:
            driver.rollback()


def _deliver(delivered: list[tuple[Job[Any], _Outcome]]) -> None:
    for job, (ok, value) in delivered:
        if job.future.done():
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
