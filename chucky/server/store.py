"""Where the server's state lives: the :class:`Store` interface and the records it deals in.

Everything durable sits behind :class:`Store` (ARCHITECTURE.md, "State and scale-out"):
projects and their secrets, sessions and their transcripts, the budget ledger, concurrency
leases and rate counters. It is implemented once, in :mod:`chucky.server.sql` (SQLAlchemy 2
Core, and plain SQL for a turn's writes; a SQLite file by default, PostgreSQL through
``asyncpg`` for several nodes). The connection handler and the agent loop only talk to this
interface.

Times are Unix seconds (``float``) passed in by the caller: the store never reads the clock, so
tests can move time. Money is integer microdollars; compute is integer milliseconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..errors import ChuckyError
from .ids import new_id
from .session_record import TURNS_KEPT, ModelMessage, ModelView, SessionRecord

__all__ = [
    "TURNS_KEPT",
    "Lease",
    "LedgerKey",
    "LedgerUsage",
    "ModelMessage",
    "ModelView",
    "NodeRecord",
    "Project",
    "ProjectDeletion",
    "RateDecision",
    "Reclaimed",
    "Reservation",
    "ReserveRequest",
    "ResourceKind",
    "SessionRecord",
    "Store",
    "StoreError",
    "TurnWrite",
    "TurnWritten",
    "new_id",
]

ResourceKind = Literal["ai", "compute"]


class StoreError(ChuckyError):
    """The database cannot be used: unreachable, or its schema is newer than this version.

    Reported to clients as ``INTERNAL_ERROR``; the cause is chained and logged, never sent.
    """

    default_code = "INTERNAL_ERROR"


@dataclass(frozen=True, slots=True)
class Project:
    """A project: the issuer (``iss``) of tokens, and the secrets that sign them."""

    project_id: str
    name: str
    created_at: float
    secrets: tuple[str, ...]
    """Active (not revoked) secrets, oldest first."""


@dataclass(frozen=True, slots=True)
class ProjectDeletion:
    """What :meth:`Store.delete_project` removed."""

    project_id: str
    existed: bool
    """Whether the project itself was in the database (a project configured with
    ``--project`` never is: only its sessions and usage are)."""
    secrets: int
    """Secret rows, revoked ones included."""
    sessions: int
    """Sessions, each with its whole transcript."""
    ledger_rows: int
    """Usage rows (one per user, window instance and resource)."""


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """Whose usage, in which window instance (docs/protocol.md section 7)."""

    project_id: str
    user_id: str
    window: str
    """The window instance, :func:`chucky.windows.anchored_key` from the user's stored anchor
    (``day:2026-11-21T00:00:00Z``; ``lifetime`` has one instance, ``lifetime``)."""


@dataclass(frozen=True, slots=True)
class LedgerUsage:
    """One resource's counters in one window instance (microdollars or milliseconds)."""

    used: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """An amount set aside in the ledger for one model call (``ai``) or one turn (``compute``).

    Until settled, ``amount`` counts against the budget. A reservation whose ``expires_at``
    passes without a heartbeat (its node died) is settled at its full amount by
    :meth:`Store.recover`: the worst case, so a crash never lets a user over budget.
    """

    reservation_id: str
    key: LedgerKey
    kind: ResourceKind
    amount: int
    used: int
    """The window's settled usage when the reservation was granted."""
    reserved: int
    """The window's reserved total (this reservation included) when it was granted."""


@dataclass(frozen=True, slots=True)
class Lease:
    """A concurrency slot held by one live session on one node."""

    lease_id: str
    project_id: str
    user_id: str
    session_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A server process sharing the store: who it is, and how to tell whether it still runs."""

    node_id: str
    host: str
    """The process space ``pid`` belongs to (:func:`chucky.server.nodes.host_identity`)."""
    pid: int
    process_start: str | None
    """What tells this process from a later one with the same pid (Linux: its start time);
    ``None`` when the platform does not say."""


@dataclass(frozen=True, slots=True)
class Reclaimed:
    """What :meth:`Store.reclaim_nodes` took back from dead nodes."""

    nodes: int
    leases: int
    """Leases deleted."""
    reservations: int
    """Open reservations settled at their full amount."""


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of counting a turn against the per-minute rate limit."""

    allowed: bool
    count: int
    """Turns counted in the current minute, this one included."""
    retry_after: float
    """Seconds until the current minute ends (when ``allowed`` is false)."""


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """One reservation to take: ``min(want, limit - used - reserved)`` of ``kind`` under
    ``key``, or nothing below ``minimum`` (see :meth:`Store.reserve`)."""

    key: LedgerKey
    kind: ResourceKind
    want: int
    limit: int
    minimum: int


@dataclass(frozen=True, slots=True)
class TurnWrite:
    """Everything one step of a turn writes, as one transaction (:meth:`Store.write_turn`).

    In this order: count the turn against ``rate_limit`` turns per minute (the session
    owner's), take each reservation of ``reserve``, settle each ``(reservation, actual)`` of
    ``settle``, save ``session``. A refusal -- the rate limit, or a reservation the budget
    cannot grant -- rolls the whole write back.
    """

    now: float
    ttl: float = 0.0
    """Seconds the new reservations live without a heartbeat."""
    node_id: str = ""
    """The node that holds the new reservations."""
    rate_limit: int | None = None
    reserve: Sequence[ReserveRequest] = ()
    settle: Sequence[tuple[Reservation, int]] = ()
    session: SessionRecord | None = None


@dataclass(frozen=True, slots=True)
class TurnWritten:
    """What a :class:`TurnWrite` did: everything (``refused`` false), or nothing."""

    rate: RateDecision | None = None
    """The rate count (``None`` without ``rate_limit``); not ``allowed``: refused."""
    grants: tuple[Reservation, ...] = ()
    """One per :attr:`TurnWrite.reserve`, in order."""
    charged: tuple[int, ...] = ()
    """What each settlement charged, in order."""
    denied: ReserveRequest | None = None
    """The reservation the budget refused, if one was."""
    usage: LedgerUsage | None = None
    """The counters of ``denied``'s key and kind, read after the refused write."""

    @property
    def refused(self) -> bool:
        """Whether the write was refused (and nothing was written)."""
        return self.denied is not None or (self.rate is not None and not self.rate.allowed)


class Store(ABC):
    """Durable state shared by every node of one deployment.

    Every method is atomic on its own: two nodes (or two tasks) calling at once can never
    both take the last unit of a budget or the last concurrency slot.
    """

    # -- lifecycle -----------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect, then create or migrate the schema.

        Raises:
            StoreError: the database holds a newer schema than this version knows, or cannot
                be reached.
        """

    @abstractmethod
    async def aclose(self) -> None:
        """Release every connection."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The database URL, password hidden."""

    # -- projects ------------------------------------------------------------------------------

    # Every secret given to a method below must be ``hk_live_`` + 32 hex digits
    # (:func:`chucky.tokens.check_project_secret`): anything else is a ValidationError.

    @abstractmethod
    async def create_project(
        self, name: str, secret: str, now: float, *, project_id: str | None = None
    ) -> Project:
        """A new project with one secret (``project_id`` generated unless given).

        Raises:
            ValidationError: ``project_id`` is taken, or ``secret`` is malformed (``reason``
                ``invalid_options``).
        """

    @abstractmethod
    async def upsert_project(self, project_id: str, secrets: list[str], now: float) -> Project:
        """Make sure the project exists and accepts each of ``secrets``.

        A secret revoked before is accepted again. Existing secrets stay. (The server no
        longer calls this for ``--project ID:SECRET``: configured projects are not written.)

        Raises:
            ValidationError: a malformed secret.
        """

    @abstractmethod
    async def get_project(self, project_id: str) -> Project | None:
        """The project and its active secrets, or ``None``."""

    @abstractmethod
    async def list_projects(self) -> list[Project]:
        """Every project, oldest first."""

    @abstractmethod
    async def add_secret(self, project_id: str, secret: str, now: float) -> Project:
        """Add a secret (rotation); the old ones keep working.

        Raises:
            ValidationError: no such project, or a malformed secret.
        """

    @abstractmethod
    async def revoke_secrets(self, project_id: str, prefix: str, now: float) -> int:
        """Revoke the active secrets starting with ``prefix``; returns how many.

        Raises:
            ValidationError: no such project, an empty prefix, or revoking would leave the
                project with no active secret.
        """

    @abstractmethod
    async def delete_project(self, project_id: str) -> ProjectDeletion:
        """Remove the project and everything stored under its id, in one transaction: its
        secrets, its sessions with their transcripts, its leases, its ledger rows and
        reservations, its rate counters and its users' window anchors. Its sessions cannot be
        resumed any more, and a project created later with the same id starts from nothing.

        Raises:
            ValidationError: nothing is stored under ``project_id``.
        """

    # -- sessions ------------------------------------------------------------------------------

    @abstractmethod
    async def create_session(
        self,
        project_id: str,
        user_id: str,
        model: str,
        now: float,
        *,
        session_id: str | None = None,
    ) -> SessionRecord:
        """A new, empty session owned by (project, user), already written.

        ``session_id`` is generated (:func:`new_id`) unless given.
        """

    @abstractmethod
    async def get_session(
        self, session_id: str, project_id: str, user_id: str
    ) -> SessionRecord | None:
        """The session with its whole transcript if it exists AND belongs to (project, user).

        A session of someone else is indistinguishable from one that does not exist.
        """

    @abstractmethod
    async def latest_session(self, project_id: str, user_id: str) -> SessionRecord | None:
        """The owner's most recently active session, with its transcript."""

    @abstractmethod
    async def save_session(self, record: SessionRecord) -> None:
        """Write what changed: new messages (or the whole transcript when ``rewritten``), the
        model, spend, state and activity time. Sets ``persisted`` and clears ``rewritten``."""

    @abstractmethod
    async def delete_session(
        self, session_id: str, project_id: str, user_id: str, now: float
    ) -> bool:
        """Delete the session and its transcript, if it belongs to (project, user), in one
        transaction; its ledger rows stay (the spend happened). Returns whether it existed:
        a session of someone else is left alone and answered as one that does not exist.

        Raises:
            SessionError: ``session_busy``: a lease on the session has not expired (it is
                open on a connection).
        """

    @abstractmethod
    async def write_turn(self, write: TurnWrite) -> TurnWritten:
        """One step of a turn in one transaction, all or nothing (see :class:`TurnWrite`).

        A turn costs two of them: its start (rate count, compute grant, the first call's
        reservation, the user's message) and its end (every settlement, the new messages).
        When ``session`` is saved, sets its ``persisted`` and clears ``rewritten``.
        """

    # -- the budget ledger ---------------------------------------------------------------------

    @abstractmethod
    async def reserve(
        self,
        key: LedgerKey,
        kind: ResourceKind,
        *,
        want: int,
        limit: int,
        minimum: int,
        now: float,
        ttl: float,
        node_id: str,
    ) -> Reservation | None:
        """Atomically set aside ``min(want, limit - used - reserved)``.

        Returns ``None`` (and changes nothing) when ``limit - used - reserved < minimum``.
        ``minimum`` may be 0 (then a grant of 0 is possible). The reservation expires at
        ``now + ttl`` unless :meth:`heartbeat` extends it.
        """

    @abstractmethod
    async def settle(self, reservation: Reservation, actual: int, now: float) -> int:
        """Charge ``min(actual, amount)`` and release the rest; returns what was charged.

        Settling a reservation twice, or one already recovered, charges nothing.
        """

    @abstractmethod
    async def usage(self, key: LedgerKey, kind: ResourceKind) -> LedgerUsage:
        """The counters of one resource in one window instance (zeros if none)."""

    @abstractmethod
    async def window_anchor(
        self, project_id: str, user_id: str, window: str, proposed: float
    ) -> float:
        """The anchor of the user's ``window`` windows (Unix seconds), fixed by the first call.

        The first call for (project, user, window type) stores ``proposed`` (the token's
        ``windowStart``, else its ``iat``); every later call returns that, whatever it
        proposes. Atomic: concurrent first calls with different proposals, on any nodes, all
        get the one anchor that was stored.
        """

    # -- concurrency leases --------------------------------------------------------------------

    @abstractmethod
    async def acquire_lease(
        self,
        project_id: str,
        user_id: str,
        session_id: str,
        *,
        node_id: str,
        now: float,
        ttl: float,
        user_limit: int | None,
        project_limit: int | None,
    ) -> Lease:
        """Take a slot for a live session.

        Raises:
            SessionError: a live lease already holds ``session_id`` (``session_busy``).
            ConcurrencyLimitError: the user (or the project) already holds ``limit`` live
                leases; ``details`` carry ``reason`` ``concurrent_limit_reached``, ``scope``
                (``user`` or ``project``), ``limit`` and ``active``.
        """

    @abstractmethod
    async def release_lease(self, lease: Lease) -> None:
        """Give the slot back at once (idempotent)."""

    @abstractmethod
    async def heartbeat(self, node_id: str, now: float, ttl: float) -> None:
        """Extend every lease and open reservation of ``node_id`` to ``now + ttl``, and mark
        the node seen at ``now``."""

    @abstractmethod
    async def recover(self, now: float) -> tuple[int, int]:
        """Drop expired leases and settle expired reservations at their full amount (the rule
        for nodes that cannot be proven dead: those of other hosts).

        Also forgets nodes not seen for a day. Returns ``(leases dropped, reservations
        settled)``.
        """

    # -- nodes ---------------------------------------------------------------------------------

    @abstractmethod
    async def register_node(self, node: NodeRecord, now: float) -> None:
        """Record a server process as started and seen at ``now`` (again: seen at ``now``)."""

    @abstractmethod
    async def deregister_node(self, node_id: str) -> None:
        """Forget a node that shut down cleanly (idempotent). Its leases and reservations are
        its own business: released as its sockets closed, or left to expire."""

    @abstractmethod
    async def reclaim_nodes(
        self, host: str, is_dead: Callable[[NodeRecord], bool], now: float
    ) -> Reclaimed:
        """Take back at once what the dead nodes of ``host`` held.

        For each node registered on ``host`` for which ``is_dead`` is true (its process is
        provably gone: :func:`chucky.server.nodes.is_dead`): delete its leases, settle its open
        reservations at their full amount (the worst case, as :meth:`recover`: a crash never
        lets a user over budget), and forget it. Nodes of other hosts are not looked at.
        Safe to run on several processes at once: each lease and reservation goes once.
        """

    @abstractmethod
    async def count_active(self, project_id: str, user_id: str | None, now: float) -> int:
        """Live leases of the user (or of the whole project when ``user_id`` is ``None``)."""

    # -- rate counters -------------------------------------------------------------------------

    @abstractmethod
    async def count_turn(
        self, project_id: str, user_id: str, *, now: float, limit: int
    ) -> RateDecision:
        """Count one turn in the user's current minute (``floor(now / 60)``) and decide.

        A refused turn is not counted.
        """
