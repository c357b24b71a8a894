"""Proof that a node's process is gone (chucky.server.nodes): a fake OS, then the real one."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from chucky.server.nodes import ProcessProbe, host_identity, is_dead, node_record, process_start

# /proc/<pid>/stat: a comm with spaces and a parenthesis, state S, start time (field 22) 4242.
STAT = "100 (my (odd) name) S 1 100 100 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 4242 1 1 " + (
    "0 " * 30
)


def _probe(
    *,
    alive: Mapping[int, str] | None = None,
    foreign: frozenset[int] = frozenset(),
    proc: bool = True,
) -> ProcessProbe:
    """A fake OS: ``alive`` pids and their stat lines; ``foreign`` ones may not be signalled."""
    alive = alive or {}

    def kill(pid: int, signal: int) -> None:
        assert signal == 0
        if pid not in alive:
            raise ProcessLookupError(pid)
        if pid in foreign:
            raise PermissionError(pid)

    def read_text(path: str) -> str:
        if proc:
            if path == "/proc/sys/kernel/random/boot_id":
                return "b00t\n"
            parts = path.split("/")
            if len(parts) == 4 and parts[3] == "stat" and int(parts[2]) in alive:
                return alive[int(parts[2])]
        raise FileNotFoundError(path)

    def read_link(path: str) -> str:
        if not proc:
            raise FileNotFoundError(path)
        return "pid:[4026531836]"

    return ProcessProbe(
        kill=kill, read_text=read_text, read_link=read_link, host_name=lambda: "box"
    )


def test_a_missing_pid_is_dead() -> None:
    assert is_dead(100, "4242", probe=_probe())
    assert is_dead(100, None, probe=_probe(proc=False))


def test_the_same_process_is_alive() -> None:
    assert not is_dead(100, "4242", probe=_probe(alive={100: STAT}))


def test_a_reused_pid_is_dead() -> None:
    assert is_dead(100, "1111", probe=_probe(alive={100: STAT}))
    # Also when the new process is someone else's.
    assert is_dead(100, "1111", probe=_probe(alive={100: STAT}, foreign=frozenset({100})))


def test_a_zombie_is_dead() -> None:
    zombie = STAT.replace(") S ", ") Z ")
    assert is_dead(100, "4242", probe=_probe(alive={100: zombie}))


@pytest.mark.parametrize(
    "probe",
    [
        _probe(alive={100: STAT}, proc=False),  # no /proc: a live pid proves nothing
        _probe(alive={100: "100 (cut"}),  # unreadable stat line
    ],
)
def test_without_an_identity_a_live_pid_proves_nothing(probe: ProcessProbe) -> None:
    assert not is_dead(100, "1111", probe=probe)


def test_an_unknown_start_proves_nothing_while_the_pid_lives() -> None:
    assert not is_dead(100, None, probe=_probe(alive={100: STAT}))


def test_odd_pids_and_errors_prove_nothing() -> None:
    assert not is_dead(0, "1", probe=_probe())
    assert not is_dead(-5, "1", probe=_probe())

    def failing(pid: int, signal: int) -> None:
        raise OSError("EINVAL")

    assert not is_dead(100, "1", probe=ProcessProbe(kill=failing))


def test_process_start_and_host_identity_from_a_fake_proc() -> None:
    probe = _probe(alive={100: STAT})
    assert process_start(100, probe=probe) == "4242"
    assert process_start(101, probe=probe) is None
    assert host_identity(probe=probe) == "box boot=b00t pid:[4026531836]"
    assert host_identity(probe=_probe(proc=False)) == "box"


# -- the real OS -------------------------------------------------------------------------------

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@linux_only
def test_this_process_is_alive_and_knows_itself() -> None:
    me = node_record("me")
    assert (me.node_id, me.pid) == ("me", os.getpid())
    assert me.process_start is not None
    assert me.host.startswith(f"{socket.gethostname()} boot=")
    assert not is_dead(me.pid, me.process_start)
    # Our pid with another start identity: a process that had our pid before us.
    assert is_dead(me.pid, str(int(me.process_start) - 1))


@linux_only
def test_a_killed_process_is_dead_reaped_or_not(sleeper: subprocess.Popen[bytes]) -> None:
    start = process_start(sleeper.pid)
    assert start is not None
    assert not is_dead(sleeper.pid, start)
    sleeper.kill()
    os.waitid(os.P_PID, sleeper.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped: a zombie
    assert is_dead(sleeper.pid, start)
    sleeper.wait()
    assert is_dead(sleeper.pid, start)
