"""The quality gates run as tests, so ``pytest`` alone is the project's test command."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("ruff", "check", "."), id="ruff-check"),
        pytest.param(("ruff", "format", "--check", "."), id="ruff-format"),
        pytest.param(("mypy", "chucky"), id="mypy-strict"),
    ],
)
def test_gate(command: tuple[str, ...]) -> None:
    result = _run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def _private_references(tree: ast.AST) -> list[str]:
    """Imports of another package's underscored (private) modules or names, also as strings
    handed to ``importlib``."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root = node.module.split(".")[0]
            if root != "chucky":
                parts = node.module.split(".") + [alias.name for alias in node.names]
                if any(p.startswith("_") and not p.startswith("__") for p in parts):
                    found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] != "chucky" and any(p.startswith("_") for p in parts[1:]):
                    found.append(f"import {alias.name}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(("chucky", "."))
            and any(p.startswith("_") for p in node.args[0].value.split("."))
        ):
            found.append(f"import_module({node.args[0].value!r})")
    return found


def test_no_private_internals_of_dependencies() -> None:
    # Dependencies drift: CI resolves the newest release the ranges allow, and a library's
    # underscored modules and undocumented tables change without notice.
    offenders = {
        str(path.relative_to(ROOT)): refs
        for path in sorted((ROOT / "chucky").rglob("*.py"))
        if (refs := _private_references(ast.parse(path.read_text(), str(path))))
    }
    assert offenders == {}
