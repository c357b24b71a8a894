"""Batched prompt evaluation where it works, one token at a time where it crashes (issue 14).

The probe runs in a child process: a crash there (a signal) must leave the caller standing and
say no; the verdict is cached per build, CPU and model.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chucky.server.providers.llamacpp_probe import (
    BATCHED_N_BATCH,
    PROBE_SCRIPT,
    batched_decode_works,
    probe_cache_path,
)

CRASH = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
WORKS = "import sys; sys.exit(0)"
FAILS = "raise SystemExit('no llama here')"
HANGS = "import time; time.sleep(30)"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_a_probe_killed_by_a_signal_says_no_and_why(tmp_path: Path, model: Path) -> None:
    cache = tmp_path / "verdicts.json"
    ok, why, probed = batched_decode_works(str(model), cache=cache, script=CRASH)
    assert ok is False and probed is True
    assert "SIGSEGV" in why and "batched evaluation killed the probe" in why
    # Cached: the same build, CPU and model do not run the probe again.
    assert batched_decode_works(str(model), cache=cache, script=CRASH) == (False, why, False)
    assert len(json.loads(cache.read_text(encoding="utf-8"))) == 1


def test_the_verdict_is_per_model(tmp_path: Path, model: Path) -> None:
    cache = tmp_path / "verdicts.json"
    assert batched_decode_works(str(model), cache=cache, script=WORKS) == (True, "", True)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF, another model")
    ok, why, _ = batched_decode_works(str(other), cache=cache, script=FAILS)
    assert ok is False and "exit 1" in why and "no llama here" in why
    assert batched_decode_works(str(model), cache=cache, script=WORKS) == (True, "", False)
    assert len(json.loads(cache.read_text(encoding="utf-8"))) == 2


def test_a_probe_that_hangs_says_no(tmp_path: Path, model: Path) -> None:
    verdict = batched_decode_works(str(model), cache=tmp_path / "v.json", script=HANGS, timeout=1)
    assert verdict.ok is False and "did not finish in 1 s" in verdict.why


def test_an_unreadable_cache_is_probed_again(tmp_path: Path, model: Path) -> None:
    cache = tmp_path / "verdicts.json"
    cache.write_text("{not json", encoding="utf-8")
    assert batched_decode_works(str(model), cache=cache, script=WORKS) == (True, "", True)
    assert json.loads(cache.read_text(encoding="utf-8"))


def test_the_cache_lives_under_chuckys_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHUCKY_CACHE_DIR", str(tmp_path))
    assert probe_cache_path() == tmp_path / "llamacpp-batch-probe.json"
    monkeypatch.delenv("CHUCKY_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert probe_cache_path() == tmp_path / "xdg" / "chucky" / "llamacpp-batch-probe.json"


# -- the real build and model ----------------------------------------------------------------------

_IN_CI = os.environ.get("CI", "").lower() == "true"


def _real_model() -> str:
    try:
        import llama_cpp  # noqa: F401

        from chucky.server.providers.llamacpp import default_model_path

        return str(default_model_path())
    except Exception as exc:  # pragma: no cover - depends on the environment
        if _IN_CI:
            raise
        pytest.skip(f"the local model cannot run here: {exc}")


def test_the_real_verdict_is_what_batched_evaluation_does_here(tmp_path: Path) -> None:
    path = _real_model()
    ok, why, _ = batched_decode_works(path, cache=tmp_path / "v.json")
    direct = subprocess.run(
        [sys.executable, "-c", PROBE_SCRIPT, path],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert ok is (direct.returncode == 0), (why, direct.returncode)


async def test_the_provider_picks_its_batch_from_the_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from chucky.server.providers.llamacpp import LlamaCppProvider

    path = _real_model()
    monkeypatch.setenv("CHUCKY_CACHE_DIR", str(tmp_path))
    caplog.set_level(logging.WARNING)
    provider = LlamaCppProvider(n_ctx=512)
    assert provider.n_batch is None
    await provider.load()
    ok, why, probed = batched_decode_works(path)  # the cached verdict
    assert probed is False
    assert provider.n_batch == (BATCHED_N_BATCH if ok else 1)
    warned = [r.getMessage() for r in caplog.records if "one token at a time" in r.getMessage()]
    assert warned == ([] if ok else [warned[0]])
    if not ok:
        assert why in warned[0]
    # Given explicitly, no probe: the verdicts' file is untouched.
    (tmp_path / "llamacpp-batch-probe.json").unlink()
    explicit = LlamaCppProvider(n_ctx=512, n_batch=1)
    await explicit.load()
    assert explicit.n_batch == 1
    assert not (tmp_path / "llamacpp-batch-probe.json").exists()
