"""A cached virtualenv holding the official ``chucky-sdk==0.2.0`` client, for interop tests.

The official package's import name is also ``chucky``, so it cannot share an interpreter with
ours: it lives in its own venv and test scripts run there as subprocesses (:func:`run_official`),
from a temporary directory and without ``PYTHONPATH``, so our ``chucky`` is never importable.

The venv is built once (``python -m venv`` + ``pip install``) at ``$CHUCKY_OFFICIAL_VENV`` or
``~/.cache/chucky-tests/official-chucky-sdk-0.2.0``. A marker file is written only after a
successful install, so a half-built venv is rebuilt; an ``flock`` on a lock file next to it keeps
concurrent pytest workers and bench scripts from racing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Final

__all__ = ["OFFICIAL_REQUIREMENT", "official_python", "official_venv_dir", "run_official"]

OFFICIAL_REQUIREMENT: Final = "chucky-sdk==0.2.0"
_MARKER: Final = ".chucky-tests-installed"
_INSTALL_TIMEOUT: Final = 900.0
# Interpreter settings of the calling process that must not leak into the official venv.
_SCRUBBED_ENV: Final = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONSAFEPATH",
    "VIRTUAL_ENV",
)

_cached_python: Path | None = None


def official_venv_dir() -> Path:
    """Where the official client's venv lives (``$CHUCKY_OFFICIAL_VENV`` or the user cache)."""
    configured = os.environ.get("CHUCKY_OFFICIAL_VENV")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "chucky-tests" / "official-chucky-sdk-0.2.0"


def _venv_python(venv: Path) -> Path:
    if os.name == "nt":  # pragma: no cover - the suite runs on POSIX (fcntl)
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def _run_step(argv: list[str], what: str, venv: Path) -> None:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT,
            env=_clean_env(),
            cwd=venv.parent,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"could not {what} for {OFFICIAL_REQUIREMENT} at {venv}: {exc}") from exc
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-3000:]
        hint = " (is PyPI reachable? the first run needs network access)" if "pip" in what else ""
        raise RuntimeError(
            f"could not {what} for {OFFICIAL_REQUIREMENT} at {venv}{hint}; "
            f"exit status {proc.returncode}:\n{output}"
        )


def _build(venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    _run_step([sys.executable, "-m", "venv", str(venv)], "create the virtualenv", venv)
    python = str(_venv_python(venv))
    _run_step(
        [
            python,
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            OFFICIAL_REQUIREMENT,
        ],
        "pip install the official client from PyPI",
        venv,
    )
    check = (
        "import importlib.metadata as m, chucky; "
        "assert m.version('chucky-sdk') == '0.2.0', m.version('chucky-sdk'); "
        "assert hasattr(chucky, 'create_token')"
    )
    _run_step([python, "-c", check], "import the installed official client", venv)
    (venv / _MARKER).write_text(OFFICIAL_REQUIREMENT + "\n", encoding="utf-8")


def official_python() -> Path:
    """The python of a venv with the official ``chucky-sdk==0.2.0`` installed, built if needed.

    Returns:
        Path of that venv's interpreter.

    Raises:
        RuntimeError: The venv could not be created or the package could not be installed
            (typically: no network access to PyPI on the first run).
    """
    global _cached_python
    if _cached_python is not None and _cached_python.exists():
        return _cached_python
    venv = official_venv_dir()
    python = _venv_python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        if not ((venv / _MARKER).is_file() and python.exists()):
            _build(venv)
    _cached_python = python
    return python


def run_official(
    script: str,
    *args: str,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a Python script with the official client's interpreter.

    The script runs from a fresh temporary directory (not the repository) with ``PYTHONPATH``
    and friends removed, so ``import chucky`` there is the official package.

    Args:
        script: The script's source text.
        *args: Its command-line arguments (``sys.argv[1:]``).
        timeout: Seconds before the process is killed (``subprocess.TimeoutExpired``).
        env: Variables added to (or overriding) the cleaned environment.

    Returns:
        The completed process, with text ``stdout``/``stderr``; the exit status is not checked.

    Raises:
        RuntimeError: The official venv could not be built.
        subprocess.TimeoutExpired: The script ran longer than ``timeout``.
    """
    python = official_python()
    with tempfile.TemporaryDirectory(prefix="chucky-official-") as tmp:
        path = Path(tmp) / "official_script.py"
        path.write_text(script, encoding="utf-8")
        return subprocess.run(
            [str(python), str(path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(env),
            cwd=tmp,
            check=False,
        )
