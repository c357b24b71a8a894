"""Whether batched prompt evaluation works with this llama.cpp build on this machine.

Evaluating a prompt in batches is several times faster than one token at a time, but some
builds crash the process in batched decode: ``llama-cpp-python`` compiled with
``-march=native`` (pip's default) by a GCC whose ``_tile_loadconfig`` is an asm statement
(Debian 12's GCC 12.2; later releases use a builtin) takes, on a CPU with AMX, ggml's AMX matrix
kernel for batches, whose tile configuration that GCC miscompiles (the asm's operand claims 8
of the 64 bytes it reads, so the stores of the rows and columns are eliminated as dead), and
``ldtilecfg`` raises a general protection fault on what is left. The README's install compiles
without those kernels (``-U__AMX_INT8__``); a build made otherwise may still crash, and a crash
would take the whole server down, so the first load of a model with ``n_batch`` left to chucky
asks a **child process** to load the same model and evaluate a short batch
(:func:`batched_decode_works`). The verdict is kept in a small JSON file, keyed by
the build (``llama_cpp``'s version, its ggml CPU library's size and time), the CPU's flags and
the model file, so the probe runs once per build, machine and model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final, NamedTuple

__all__ = [
    "BATCHED_N_BATCH",
    "PROBE_SCRIPT",
    "Verdict",
    "batched_decode_works",
    "probe_cache_path",
]

BATCHED_N_BATCH: Final = 512
"""The batch size a working build gets (llama.cpp's own default)."""

PROBE_SCRIPT: Final = """
import sys
import llama_cpp

llama = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=512, n_batch=64, n_ubatch=64, verbose=False)
tokens = llama.tokenize(b"The quick brown fox jumps over the lazy dog. " * 12)
llama.eval(tokens[:160])
"""
"""Load the model and evaluate a prompt in batches of 64 (exit 0 if that works)."""

PROBE_TIMEOUT: Final = 120.0
"""Seconds the probe may take (loading a small model and evaluating 160 tokens)."""


class Verdict(NamedTuple):
    """What the probe found."""

    ok: bool
    """Batched evaluation works."""
    why: str
    """If not, why (empty when it works)."""
    probed: bool
    """Found by a probe just now (``False``: read from the cache)."""


def probe_cache_path() -> Path:
    """The verdicts' file: ``$CHUCKY_CACHE_DIR`` or ``$XDG_CACHE_HOME/chucky`` (``~/.cache``)."""
    base = os.environ.get("CHUCKY_CACHE_DIR")
    if base:
        return Path(base) / "llamacpp-batch-probe.json"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "chucky" / "llamacpp-batch-probe.json"


def batched_decode_works(
    model_path: str,
    *,
    cache: Path | None = None,
    script: str = PROBE_SCRIPT,
    timeout: float = PROBE_TIMEOUT,
) -> Verdict:
    """Whether evaluating ``model_path``'s prompts in batches works here, and if not, why.

    The answer comes from the cache (``cache``, default :func:`probe_cache_path`) or from a
    child process running ``script`` with the model's path; a child killed by a signal, exiting
    with an error or outliving ``timeout`` means no. Never raises for the probe's sake: a probe
    that cannot run says no.
    """
    path = cache or probe_cache_path()
    key = _build_key(model_path, script)
    verdicts = _read(path)
    known = verdicts.get(key)
    if isinstance(known, dict) and isinstance(known.get("ok"), bool):
        return Verdict(known["ok"], str(known.get("why", "")), probed=False)
    ok, why = _probe(model_path, script, timeout)
    verdicts[key] = {"ok": ok, "why": why}
    _write(path, verdicts)
    return Verdict(ok, why, probed=True)


def _probe(model_path: str, script: str, timeout: float) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, model_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"the probe did not finish in {timeout:g} s"
    except OSError as exc:
        return False, f"the probe could not start: {exc.strerror or exc}"
    if done.returncode == 0:
        return True, ""
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return False, f"a batched evaluation killed the probe process ({name})"
    last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return False, f"the probe failed (exit {done.returncode}): {last[0][:200]}"


def _build_key(model_path: str, script: str) -> str:
    """The build, the CPU and the model, hashed: what the verdict depends on."""
    parts = [sys.version, script, _llama_cpp_build(), _cpu_flags()]
    with contextlib.suppress(OSError):
        stat = Path(model_path).stat()
        parts.append(f"{Path(model_path).name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _llama_cpp_build() -> str:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return "no llama_cpp"
    found = []
    for location in spec.submodule_search_locations:
        for library in sorted(Path(location).glob("lib/libggml*")):
            with contextlib.suppress(OSError):
                stat = library.stat()
                found.append(f"{library.name}:{stat.st_size}:{int(stat.st_mtime)}")
        version = Path(location) / "__init__.py"
        with contextlib.suppress(OSError):
            found.append(hashlib.sha256(version.read_bytes()).hexdigest()[:16])
    return ";".join(found)


def _cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        ):
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(set(line.split(":", 1)[1].split())))
    import platform

    return platform.processor() or platform.machine()


def _read(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, verdicts: dict[str, object]) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(verdicts, indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(path)
