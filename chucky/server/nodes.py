"""Is that server process gone? Proof of death for nodes on this host.

Every ``chucky serve`` process registers itself in the store as a node
(:class:`~chucky.server.store.NodeRecord`): its host, its pid and its process-start identity.
A node that stops heartbeating may be dead, or only slow or cut off from the database: a
lease it holds cannot be taken over before ``--lease-ttl`` passes (the TTL rule,
:meth:`~chucky.server.store.Store.recover`). But on the node's own host its death can be
*proven*, and then its leases and reservations are taken back at once
(:meth:`~chucky.server.store.Store.reclaim_nodes`). A process is provably gone when:

* its pid does not exist (``os.kill(pid, 0)`` raises ``ProcessLookupError``);
* or the pid belongs to a process with another start identity (the pid was reused);
* or the pid is a zombie (killed, not yet reaped by its parent).

Anything else -- a live process, a pid we may not signal whose identity we cannot read, a
platform without ``/proc`` -- proves nothing, and the TTL rule applies.

"Host" means the process space a pid belongs to (:func:`host_identity`): the host name, and on
Linux the boot id and the pid namespace. Two containers with one host name (``--network
host``) are different hosts, so neither takes the other's live leases; a restarted container
has a new pid namespace, so its predecessor's leases follow the TTL rule. Elsewhere the host
name alone is used: host names must then be unique among the nodes sharing a database.

Pure apart from the OS calls, which a :class:`ProcessProbe` makes (tests pass a fake one).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from .store import NodeRecord

__all__ = [
    "ProcessProbe",
    "host_identity",
    "is_dead",
    "node_record",
    "process_start",
]

_BOOT_ID: Final = "/proc/sys/kernel/random/boot_id"
_OWN_PID_NAMESPACE: Final = "/proc/self/ns/pid"
_DEAD_STATES: Final = frozenset("ZXx")  # zombie, dead


def _read_text(path: str) -> str:
    with open(path, encoding="ascii", errors="replace") as file:
        return file.read()


@dataclass(frozen=True, slots=True)
class ProcessProbe:
    """The OS calls :func:`is_dead` and friends make (replace them in tests).

    Attributes:
        kill: ``os.kill`` (called with signal 0: no signal is sent).
        read_text: Read a whole file (``/proc/...``); raises ``OSError`` when it cannot.
        read_link: ``os.readlink``.
        host_name: ``socket.gethostname``.
    """

    kill: Callable[[int, int], None] = field(default=os.kill)
    read_text: Callable[[str], str] = field(default=_read_text)
    read_link: Callable[[str], str] = field(default=os.readlink)
    host_name: Callable[[], str] = field(default=socket.gethostname)


_SYSTEM: Final = ProcessProbe()


def _stat(pid: int, probe: ProcessProbe) -> tuple[str, str] | None:
    """``(state, start time)`` from ``/proc/<pid>/stat`` (fields 3 and 22), or ``None``."""
    try:
        text = probe.read_text(f"/proc/{pid}/stat")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at the last ")".
    fields = text[text.rfind(")") + 1 :].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]


def process_start(pid: int, *, probe: ProcessProbe = _SYSTEM) -> str | None:
    """What tells process ``pid`` from a later one with the same pid: on Linux its start time
    (``/proc/<pid>/stat`` field 22, clock ticks after boot); ``None`` where unknown."""
    stat = _stat(pid, probe)
    return None if stat is None else stat[1]


def host_identity(*, probe: ProcessProbe = _SYSTEM) -> str:
    """The process space of this process's pids: the host name, plus on Linux the boot id and
    the pid namespace (see the module docstring)."""
    parts = [probe.host_name()]
    try:
        parts.append(f"boot={probe.read_text(_BOOT_ID).strip()}")
        parts.append(probe.read_link(_OWN_PID_NAMESPACE))
    except OSError:
        pass
    return " ".join(parts)


def node_record(node_id: str, *, probe: ProcessProbe = _SYSTEM) -> NodeRecord:
    """This process as a node."""
    pid = os.getpid()
    return NodeRecord(
        node_id=node_id,
        host=host_identity(probe=probe),
        pid=pid,
        process_start=process_start(pid, probe=probe),
    )


def is_dead(pid: int, start: str | None, *, probe: ProcessProbe = _SYSTEM) -> bool:
    """Whether the process that registered as ``(pid, start)`` on this host is provably gone.

    Args:
        pid: Its pid.
        start: Its :func:`process_start` when it registered (``None``: unknown).
        probe: The OS calls.

    Returns:
        True only with proof (see the module docstring); False when it runs or may run.
    """
    if pid <= 0:
        return False  # 0 and negative pids signal process groups: never a node
    try:
        probe.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, and is not ours: its identity still tells
    except OSError:
        return False
    stat = _stat(pid, probe)
    if stat is None:
        return False
    state, started = stat
    if state in _DEAD_STATES:
        return True
    return start is not None and started != start
