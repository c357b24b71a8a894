"""The documented examples run as written, against ``chucky serve`` started as users start it.

Every file of ``examples/`` and every fenced code block of ``README.md`` and of the pages under
``docs/`` is run here (issue 11, finding 14; a page's ``<!-- readme ## Heading -->`` shows a
README section, whose blocks are the README's): :data:`EXAMPLE_TESTS` and :data:`BLOCK_TESTS`
name the test that runs each, and a file or block that none runs fails
:func:`test_every_example_is_run` and :func:`test_every_code_block_is_run`.

- An example is run as a file (``python examples/NAME.py``) against the server its docstring
  tells the reader to start (``chucky serve ...``, on port 0 and a temporary database; the
  examples read ``CHUCKY_URL``).
- A ``bash`` block is run line by line by :class:`Shell`: ``chucky ...`` as a subprocess
  (``... &`` stays running), ``python examples/...``, ``export``; the only changes are a free
  port instead of the documented one and the values the previous commands printed (a project
  id) or the test supplies (a database URL) for the placeholders.
- A Python block runs as a script (the documented port replaced) or, for a fragment that uses
  ``client`` and a top-level ``await``, with a client of a local server whose model gives the
  answer the fragment expects.
- The ``chucky demo`` output block is compared line by line with a real run; the CLI synopsis
  with the parser; the routing TOML is loaded and resolved; the test-kit blocks are written
  into a fresh project and run by pytest there.
- The install block cannot run in the suite (it would install, then run the whole suite): its
  extras, Python version and quality gates are checked against ``pyproject.toml`` instead.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support.anthropic_api import MessagesAPI, sse_text, sse_tool_use
from support.serve import (
    ServeProcess,
    chucky_env,
    start_serve,
    token_for,
    usage,
)

from chucky import Chucky, create_budget, create_token
from chucky.errors import ProviderError
from chucky.server.providers.base import ModelRequest
from chucky.server.providers.scripted import ScriptedProvider

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOC_URL = "ws://127.0.0.1:8765/ws"
DOC_SECRET = "hk_live_0123456789abcdef0123456789abcdef"
RUN_TIMEOUT = 180.0
"""A documented command's run (the local model's turns take seconds on a loaded machine)."""

_IN_CI = os.environ.get("CI", "").lower() == "true"
try:
    from chucky.server.providers.llamacpp import default_model_path

    default_model_path()
    _MODEL = True
except (ImportError, ProviderError):  # pragma: no cover - depends on the environment
    if _IN_CI:
        raise
    _MODEL = False
needs_model = pytest.mark.skipif(not _MODEL, reason="the local model is not installed")


# -- the code blocks -------------------------------------------------------------------------------

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block of a document."""

    doc: str
    line: int
    lang: str
    code: str

    @property
    def key(self) -> tuple[str, str]:
        """``(document, first line)``: how :data:`BLOCK_TESTS` names the block."""
        return self.doc, self.code.strip().splitlines()[0]


def code_blocks() -> list[Block]:
    """Every fenced code block of README.md and docs/**/*.md (indented ones dedented)."""
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            code = textwrap.dedent(match.group("body"))
            line = text.count("\n", 0, match.start()) + 1
            doc = str(path.relative_to(ROOT))
            blocks.append(Block(doc, line, match.group("lang"), code))
    return blocks


def block(doc: str, first_line: str) -> Block:
    """The one block of ``doc`` whose first line is ``first_line``."""
    found = [b for b in code_blocks() if b.key == (doc, first_line)]
    assert len(found) == 1, (doc, first_line, found)
    return found[0]


LLAMA_CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF -DCMAKE_C_FLAGS=-U__AMX_INT8__ -DCMAKE_CXX_FLAGS=-U__AMX_INT8__"
)
"""How the README's install compiles llama.cpp (no multimodal library, no AMX kernels)."""

BLOCK_TESTS: dict[tuple[str, str], str] = {
    ("README.md", f'export CMAKE_ARGS="{LLAMA_CMAKE_ARGS}"'): "test_readme_install_block",
    ("README.md", "chucky demo"): "test_readme_demo_blocks",
    (
        "README.md",
        'chucky chat --url ws://127.0.0.1:8765/ws --token "$TOKEN"',
    ): "test_readme_chat_block",
    (
        "README.md",
        "chucky demo: an agent session on this machine (embedded server, local model, no key, "
        "no network)",
    ): "test_readme_demo_blocks",
    (
        "README.md",
        "CHUCKY_PROJECTS=proj:hk_live_0123456789abcdef0123456789abcdef chucky serve &",
    ): "test_readme_quickstart_blocks",
    ("README.md", "import asyncio"): "test_readme_quickstart_blocks",
    (
        "README.md",
        "chucky serve --config examples/scripted.toml --project "
        "proj:hk_live_0123456789abcdef0123456789abcdef &",
    ): "test_readme_scripted_examples_block",
    ("README.md", "import pydantic"): "test_readme_structured_output_block",
    (
        "README.md",
        "from chucky import SyncChucky, create_budget, create_token, tool",
    ): "test_readme_sync_client_block",
    ("README.md", "from typing import Literal"): "test_readme_tools_block",
    ("README.md", "history = ["): "test_readme_conversations_block",
    ("README.md", "from chucky import Chucky, ReconnectEvent"): "test_readme_reconnect_block",
    (
        "README.md",
        'async with client.stream_events("stream 3", include_partial_messages=True) as stream:',
    ): "test_readme_stream_events_block",
    (
        "README.md",
        "from chucky import HookMatcher, PermissionResultAllow, PermissionResultDeny",
    ): "test_readme_hooks_block",
    (
        "README.md",
        "chucky demo [--prompt TEXT] [--max-tokens 96] [--seed 7] [--model-path any.gguf]",
    ): "test_readme_cli_synopsis",
    (
        "README.md",
        'fallback = "sonnet"                 # unknown names go here; without it they are refused',
    ): "test_readme_routing_config",
    (
        "README.md",
        "chucky project create --name acme            # project proj_... and secret hk_live_...",
    ): "test_readme_sqlite_block",
    (
        "README.md",
        "export CHUCKY_DB=postgresql+asyncpg://chucky:PASSWORD@db.internal/chucky",
    ): "test_readme_postgres_block",
    ("README.md", "# pyproject.toml"): "test_readme_testing_kit_in_a_fresh_project",
    ("README.md", "# conftest.py"): "test_readme_testing_kit_in_a_fresh_project",
    ("README.md", "# test_agent.py"): "test_readme_testing_kit_in_a_fresh_project",
    (
        "docs/architecture.md",
        "application code                          chucky serve (CLI)",
    ): "test_architecture_layers_diagram",
    (
        "docs/architecture.md",
        "pyproject.toml  README.md  CHANGELOG.md  .ci/run",
    ): "test_architecture_layout",
}

EXAMPLE_TESTS: dict[str, str] = {
    "quickstart.py": "test_quickstart_example",
    "sdk_tour.py": "test_sdk_tour_example",
    "local_model.py": "test_local_model_example",
    "anthropic_claude.py": "test_anthropic_example_against_a_recorded_stream",
    "scripted.toml": "test_quickstart_example",  # the --config of its docstring
}


def test_every_code_block_is_run() -> None:
    blocks = code_blocks()
    assert len(blocks) >= len(set(BLOCK_TESTS)), blocks
    unrun = [(b.doc, b.line, b.key[1]) for b in blocks if b.key not in BLOCK_TESTS]
    assert unrun == [], "code blocks no test runs: add them to BLOCK_TESTS"
    keys = [b.key for b in blocks]
    assert sorted(set(keys)) == sorted(BLOCK_TESTS), "BLOCK_TESTS names blocks that are gone"
    assert len(keys) == len(set(keys)), "two blocks with the same first line"
    for name in BLOCK_TESTS.values():
        assert callable(globals().get(name)), name


def test_every_example_is_run() -> None:
    files = sorted(p.name for p in EXAMPLES.iterdir() if p.is_file())
    assert files == sorted(EXAMPLE_TESTS)
    for name in EXAMPLE_TESTS.values():
        assert callable(globals().get(name)), name


# -- servers started as the documents say ----------------------------------------------------------


def _resolve(args: list[str]) -> list[str]:
    """Documented args, run from anywhere: paths of the repository made absolute."""
    return [str(ROOT / arg) if (ROOT / arg).is_file() and "/" in arg else arg for arg in args]


def _serve_args(args: list[str]) -> list[str]:
    """``chucky serve`` args for :func:`start_serve`: port 0, the documented routing."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--port":
            skip = True  # start_serve listens on port 0
        else:
            out.append(arg)
    if "--config" not in out:
        out += ["--config", "default"]  # what users get without --config
    return _resolve(out)


def _assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """A shell command's leading ``NAME=value`` words (its own environment), and the rest."""
    env: dict[str, str] = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        name, _, value = words[0].partition("=")
        env[name] = value
        words = words[1:]
    return env, words


def _docstring_serve(path: Path) -> tuple[list[str], dict[str, str]]:
    """The ``chucky serve ...`` command an example's docstring tells the reader to run: its
    arguments, and the variables set on its line (``CHUCKY_PROJECTS=... chucky serve``)."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    joined = re.sub(r"\\\n\s*", " ", docstring)
    commands = []
    for line in joined.splitlines():
        env, words = _assignments(shlex.split(line)) if "chucky serve" in line else ({}, [])
        if words[:2] == ["chucky", "serve"]:
            commands.append((words[2:], env))
    assert len(commands) == 1, (path.name, commands)
    return commands[0]


class Servers:
    """``chucky serve`` processes started on demand, one per set of arguments, for a module."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._started: list[ServeProcess] = []
        self._shared: dict[tuple[str, ...], ServeProcess] = {}

    def get(self, args: list[str], env: Mapping[str, str] | None = None) -> ServeProcess:
        """A server started with ``args`` and ``env`` (and its own SQLite file); shared by
        the callers with the same ``args`` and ``env``."""
        key = (*args, *sorted(f"{k}={v}" for k, v in (env or {}).items()))
        if key in self._shared:
            return self._shared[key]
        directory = self._data_dir / f"serve-{len(self._started) + 1}"
        directory.mkdir()
        database = f"sqlite+aiosqlite:///{directory / 'chucky.db'}"
        served = start_serve(*_serve_args(args), "--db", database, data_dir=directory, env=env)
        self._started.append(served)
        self._shared[key] = served
        return served

    def close(self) -> None:
        for served in self._started:
            served.stop()
        self._started.clear()
        self._shared.clear()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    running = Servers(tmp_path_factory.mktemp("chucky-serve"))
    try:
        yield running
    finally:
        running.close()


def _python(code_or_file: str | Path, url: str, *, env: Mapping[str, str] | None = None) -> str:
    """Run a Python file (as is, ``CHUCKY_URL=url``) or a README block (its port replaced)."""
    if isinstance(code_or_file, Path):
        command = [sys.executable, str(code_or_file)]
    else:
        command = [sys.executable, "-c", code_or_file.replace(DOC_URL, url)]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, **(env or {}), "CHUCKY_URL": url},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


# -- examples/ -------------------------------------------------------------------------------------


def _example(name: str, servers: Servers, env: Mapping[str, str] | None = None) -> str:
    path = EXAMPLES / name
    args, line_env = _docstring_serve(path)
    served = servers.get(args, {**line_env, **(env or {})} or None)
    return _python(path, served.url)


def _check_quickstart(out: str) -> None:
    assert "echo: What is 2 + 2?" in out
    assert "[Using tool: get_time]" in out
    assert "tool get_time returned: 12:00" in out
    assert "Hello, I am Alice" in out


def _check_sdk_tour(out: str) -> None:
    lines = out.splitlines()
    assert lines[0].startswith("echo: What is 2 + 2? ")
    assert lines[1] == "echo: What is 2 + 2? success"
    assert "echo: Write a poem about coding" in out
    assert out.rstrip().endswith("echo: What is my name?")


def _check_local_model_output(out: str) -> None:
    # The model's words vary; the shape does not.
    assert re.search(r"^\[\d+ tokens, \$0\.000000\]$", out, re.M), out
    assert re.search(r"^\[Using tool: get_weather \{'city': .*\}\]$", out, re.M), out
    assert "[success: 2 model calls]" in out


def test_quickstart_example(servers: Servers) -> None:
    args, _ = _docstring_serve(EXAMPLES / "quickstart.py")
    assert args[:2] == ["--config", "examples/scripted.toml"]  # the README's command
    _check_quickstart(_example("quickstart.py", servers))


def test_sdk_tour_example(servers: Servers) -> None:
    source = (EXAMPLES / "sdk_tour.py").read_text(encoding="utf-8")
    assert "8765" not in source.replace(f'"{DOC_URL}"', "")  # the port is a default only
    _check_sdk_tour(_example("sdk_tour.py", servers))


@needs_model
def test_local_model_example(servers: Servers) -> None:
    _check_local_model_output(_example("local_model.py", servers))


def test_anthropic_example_against_a_recorded_stream(servers: Servers) -> None:
    # Claude's side is a local stand-in replaying recorded Messages API streams: a tool call,
    # then (after the tool's result) the answer.
    bodies = [
        sse_tool_use("mcp__inline-tools__get_weather", {"city": "Paris"}),
        sse_text("It is sunny", " and 18 C in Paris."),
    ]
    with MessagesAPI(bodies) as api:
        env = {"ANTHROPIC_API_KEY": "sk-ant-example-key", "ANTHROPIC_BASE_URL": api.url}
        out = _example("anthropic_claude.py", servers, env)
    assert "[Using tool: get_weather {'city': 'Paris'}]" in out
    assert "It is sunny and 18 C in Paris." in out
    # 40 + 12 input and 20 + 6 output tokens at Claude Haiku 4.5's $1 / $5 per million.
    assert "[success: $0.000182, 52 in / 26 out]" in out
    first, second = (body for _, body, _ in api.requests)
    assert first["model"] == second["model"] == "claude-haiku-4-5-20251001"
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"


# -- bash blocks -----------------------------------------------------------------------------------


class Shell:
    """Runs a README ``bash`` block's lines: ``export``, ``chucky ...`` (``&``: in the
    background), ``python FILE``. Outputs are kept in :attr:`outputs`, in order."""

    def __init__(
        self, data_dir: Path, servers: Servers | None, substitutions: Mapping[str, str]
    ) -> None:
        self.data_dir = data_dir
        self.env: dict[str, str] = {}
        self.servers = servers
        self.substitutions = dict(substitutions)
        self.served: list[ServeProcess] = []
        self.outputs: list[str] = []
        self._own: list[ServeProcess] = []

    def run(self, code: str) -> None:
        for raw in code.splitlines():
            line = re.sub(r"\s+#.*$", "", raw).strip()
            if line:
                self.line(line)

    def line(self, line: str) -> None:
        for placeholder, value in self.substitutions.items():
            line = line.replace(placeholder, value)
        words = shlex.split(line)
        background = words[-1] == "&"
        words = words[:-1] if background else words
        line_env, words = _assignments(words)
        if line_env:
            assert words[:2] == ["chucky", "serve"], line  # the only such line so far
            assert background, line
            self.serve(words[2:], line_env)
            return
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.env[name] = value
        elif words[:2] == ["chucky", "serve"]:
            assert background, line
            self.serve(words[2:])
        elif words[0] == "chucky":
            self.outputs.append(self.chucky(words[1:]))
        elif words[0] == "python":
            assert self.served, "a python line needs a server started before it"
            self.outputs.append(_python(ROOT / words[1], self.served[-1].url))
        else:  # pragma: no cover - a new kind of line: teach the shell
            raise AssertionError(f"cannot run {line!r}")

    def serve(self, args: list[str], line_env: Mapping[str, str] | None = None) -> None:
        env = {**self.env, **(line_env or {})}
        if self.servers is not None and set(env) <= {"CHUCKY_PROJECTS"}:
            self.served.append(self.servers.get(args, env or None))
            return
        served = start_serve(*_serve_args(args), data_dir=self.data_dir, env=env)
        self._own.append(served)
        self.served.append(served)

    def chucky(self, args: list[str]) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "chucky.cli", *_resolve(args)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            env=chucky_env(self.data_dir, self.env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def close(self) -> None:
        for served in self._own:
            served.stop()


@needs_model
def test_readme_demo_blocks(tmp_path: Path) -> None:
    shell = Shell(tmp_path, None, {})
    shell.run(block("README.md", "chucky demo").code)
    (out,) = shell.outputs
    documented = block(
        "README.md",
        "chucky demo: an agent session on this machine (embedded server, local model, no key, "
        "no network)",
    ).code.splitlines()
    ran = out.splitlines()
    # The same lines in the same order: the labels, and every line that does not depend on
    # the model's words, the port or the time.
    assert [line.split()[0] for line in ran] == [line.split()[0] for line in documented], ran
    for mine, theirs in zip(ran, documented, strict=True):
        label = mine.split()[0]
        if label in ("chucky", "result", "cost", "you"):
            assert mine == theirs
        elif label in ("loading", "ready", "server", "usage", "time", "tool"):
            pattern = re.sub(r"\d+(\.\d+)?", r"\\d+(\\.\\d+)?", re.escape(theirs))
            if label == "tool":
                pattern = r"tool    get_weather\(\{.*\}\) -> \{.*\}"
            assert re.fullmatch(pattern, mine), (mine, theirs)
        else:
            assert label == "model", mine


@needs_model
def test_readme_quickstart_blocks(servers: Servers, tmp_path: Path) -> None:
    commands = block(
        "README.md", "CHUCKY_PROJECTS=proj:hk_live_0123456789abcdef0123456789abcdef chucky serve &"
    )
    shell = Shell(tmp_path, servers, {})
    try:
        shell.run(commands.code)  # CHUCKY_PROJECTS=... chucky serve &; python examples/...
        (out,) = shell.outputs
        _check_local_model_output(out)
        # The Python block, against the same server.
        _check_local_model_output(
            _python(block("README.md", "import asyncio").code, shell.served[0].url)
        )
    finally:
        shell.close()


def test_readme_scripted_examples_block(servers: Servers, tmp_path: Path) -> None:
    commands = block(
        "README.md",
        "chucky serve --config examples/scripted.toml --project "
        "proj:hk_live_0123456789abcdef0123456789abcdef &",
    )
    shell = Shell(tmp_path, servers, {})
    try:
        shell.run(commands.code)
        quickstart, tour = shell.outputs
        _check_quickstart(quickstart)
        _check_sdk_tour(tour)
    finally:
        shell.close()


def test_readme_sync_client_block(servers: Servers) -> None:
    served = servers.get(["--config", "examples/scripted.toml", "--project", f"proj:{DOC_SECRET}"])
    code = block("README.md", "from chucky import SyncChucky, create_budget, create_token, tool")
    out = _python(code.code, served.url)
    # What the text under the block says it prints.
    assert out.splitlines() == [
        "echo: What is 2 + 2?",
        "[Using tool: get_time]",
        "tool get_time returned: 12:00",
        "Hello, I am Alice",
    ]


def test_readme_sqlite_block(tmp_path: Path) -> None:
    code = block(
        "README.md",
        "chucky project create --name acme            # project proj_... and secret hk_live_...",
    ).code
    create, serve, mint = [line for line in code.splitlines() if line.strip()]
    shell = Shell(tmp_path, None, {})
    try:
        shell.line(re.sub(r"\s+#.*$", "", create))
        project = re.search(r"^project (proj_\w+)$", shell.outputs[0], re.M)
        assert project, shell.outputs
        shell.substitutions["proj_..."] = project.group(1)
        shell.line(re.sub(r"\s+#.*$", "", serve))
        shell.line(re.sub(r"\s+#.*$", "", mint))
        token = shell.outputs[-1].strip()
        # The token minted from the database's secret is accepted by the server on it.
        report = asyncio.run(usage(shell.served[0].url, token))
        assert (report["userId"], report["projectId"]) == ("alice", project.group(1)), report
        assert report["ai"]["budget"] == 1_000_000, report  # chucky token's --ai-dollars 1
    finally:
        shell.close()


def test_readme_postgres_block(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database: str = request.getfixturevalue("postgres_database")
    code = block(
        "README.md", "export CHUCKY_DB=postgresql+asyncpg://chucky:PASSWORD@db.internal/chucky"
    ).code
    documented = "postgresql+asyncpg://chucky:PASSWORD@db.internal/chucky"
    shell = Shell(tmp_path, None, {documented: database})
    try:
        shell.run(code)
        secret = re.search(r"^secret  (hk_live_\w+)$", shell.outputs[0], re.M)
        project = re.search(r"^project (proj_\w+)$", shell.outputs[0], re.M)
        assert secret and project, shell.outputs
        node1, node2 = shell.served
        assert node1.database == node2.database
        # One project, one ledger: both nodes accept its tokens and count the same budget.
        token = token_for("alice", project.group(1), secret.group(1))
        first = asyncio.run(usage(node1.url, token))
        second = asyncio.run(usage(node2.url, token))
        assert first["ai"] == second["ai"]
    finally:
        shell.close()


def test_readme_install_block() -> None:
    code = block("README.md", f'export CMAKE_ARGS="{LLAMA_CMAKE_ARGS}"').code
    cmake, install, test = [line for line in code.splitlines() if line.strip()]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = re.search(r'"\.\[([\w,]+)\]"', install)
    assert extras
    for extra in extras.group(1).split(","):
        assert extra in project["optional-dependencies"], extra
    assert "Python >= 3.11" in install and project["requires-python"] == ">=3.11"
    # `python -m pytest` runs the quality gates the comment names.
    assert test.startswith("python -m pytest") and "ruff, ruff format and mypy --strict" in test
    gates = (ROOT / "tests" / "test_quality_gates.py").read_text(encoding="utf-8")
    for gate in ('"ruff", "check"', '"ruff", "format", "--check"', '"mypy", "chucky"'):
        assert gate in gates, gate
    # CI runs exactly the README's install and test commands.
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    installed = ci.split("# --- README: install ---\n", 1)[1].split("# --- README: test ---", 1)
    assert [line.split("  #")[0].strip() for line in (cmake, install)] == [
        line.strip() for line in installed[0].splitlines() if line.strip()
    ]
    assert installed[1].strip().splitlines()[0] == test.split("  #")[0].strip()


# -- Python blocks ---------------------------------------------------------------------------------


class _DocumentedAnswers(ScriptedProvider):
    """The scripted model, answering the README's fragments as they expect."""

    answers: Mapping[str, str] = {
        "The largest city in France?": 'json {"name": "Paris", "population": 2102650}',
    }

    async def stream(self, request: ModelRequest) -> AsyncIterator[dict[str, Any]]:
        question = request.messages[0]["content"]
        script = self.answers.get(question if isinstance(question, str) else "", question)
        last = {"role": "user", "content": script}
        request = dataclasses.replace(request, messages=[last, *request.messages[1:]])
        async for event in super().stream(request):
            yield event


async def _run_fragment(code: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run a fragment with a top-level ``await`` in ``namespace`` (it gains its names)."""
    compiled = compile(code, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        await result
    return namespace


async def test_readme_structured_output_block(tmp_path: Path) -> None:
    from chucky.server.app import ChuckyServer
    from chucky.server.config import ServerConfig
    from chucky.server.routing import ModelRouter

    secret = "hk_live_" + "5" * 32
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        projects={"proj": [secret]},
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'chucky.db'}",
    )
    router = ModelRouter(_DocumentedAnswers())
    async with ChuckyServer(config, router=router) as server:
        token = create_token("u", "proj", secret, create_budget(1, 1))
        async with Chucky(token, server.url) as client:
            code = block("README.md", "import pydantic").code
            namespace = await _run_fragment(code, {"client": client})
    city = namespace["city"]
    assert isinstance(city, namespace["City"])
    assert (city.name, city.population) == ("Paris", 2102650)


async def test_readme_tools_block() -> None:
    from chucky.testing import scripted_server

    namespace: dict[str, Any] = {}
    exec(block("README.md", "from typing import Literal").code, namespace)
    mcp_server = namespace["server"]
    # "the model sees mcp__people__greet": the scripted model calls it by that name.
    async with scripted_server() as server, server.client() as client:
        script = 'call mcp__people__greet {"name": "Ada", "style": "formal"}'
        result = await client.prompt(script, mcp_servers=[mcp_server])
        assert result.result == "tool greet returned: Good day, Ada."
        # Arguments are validated before the handler runs.
        script = 'call mcp__people__greet {"name": "Ada", "style": "rude"}'
        result = await client.prompt(script, mcp_servers=[mcp_server])
        assert "Invalid arguments for tool 'greet'" in str(result.result)


async def test_readme_conversations_block() -> None:
    from chucky.testing import scripted_server

    async with scripted_server() as server, server.client() as client:
        code = block("README.md", "history = [").code
        namespace = await _run_fragment(code, {"client": client})
        assert namespace["first"] == "echo my first question"
        assert namespace["pieces"] == ["00 ", "01 ", "02 "]
        # Cleared: it cannot be resumed.
        from chucky import SessionNotFoundError

        with pytest.raises(SessionNotFoundError):
            await client.chat("recall", session_id=namespace["session_id"])


async def test_readme_reconnect_block(capsys: pytest.CaptureFixture[str]) -> None:
    """The Reconnect fragment against the scripted server behind a TCP proxy that cuts the
    connection in the middle of the turn: the loop reads on, nothing lost or repeated."""
    from urllib.parse import urlsplit

    from support.proxy import TcpProxy

    from chucky.testing import scripted_server

    code = block("README.md", "from chucky import Chucky, ReconnectEvent").code
    code = code.replace('"count to 9"', '"sleep 0.2; stream 10"')
    async with scripted_server() as server:
        port = urlsplit(server.url).port
        assert port is not None
        async with TcpProxy("127.0.0.1", port) as proxy:
            # The network fails as the turn's first message is on its way.
            proxy.cut_when(lambda direction, data: direction == "down" and b'"system"' in data)
            await _run_fragment(
                code.replace(DOC_URL, proxy.url()), {"token": server.token("reader")}
            )
            assert proxy.cuts == 1
    printed = capsys.readouterr().out.splitlines()
    # on_reconnect runs in the reconnect's own task: its "resumed" may follow the replay.
    text = "".join(f"{i:02d} " for i in range(10))
    assert sorted(printed) == sorted([text, "reconnecting 1", "resumed 1"])
    assert printed.index("reconnecting 1") < printed.index("resumed 1")


async def test_readme_stream_events_block(capsys: pytest.CaptureFixture[str]) -> None:
    from chucky.testing import scripted_server

    code = block(
        "README.md",
        'async with client.stream_events("stream 3", include_partial_messages=True) as stream:',
    ).code
    async with scripted_server() as server, server.client() as client:
        namespace = await _run_fragment(code, {"client": client})
    assert namespace["fragments"] == ["00 ", "01 ", "02 "]
    assert capsys.readouterr().out == "['00 ', '01 ', '02 '] 00 01 02 \n"


async def test_readme_hooks_block(capsys: pytest.CaptureFixture[str]) -> None:
    from chucky.testing import scripted_server

    namespace: dict[str, Any] = {}
    exec(block("README.md", "from typing import Literal").code, namespace)
    exec(
        block(
            "README.md",
            "from chucky import HookMatcher, PermissionResultAllow, PermissionResultDeny",
        ).code,
        namespace,
    )
    async with scripted_server() as server:
        client = Chucky(
            server.token(),
            server.url,
            can_use_tool=namespace["only_polite"],
            hooks=namespace["hooks"],
        )
        async with client:
            script = 'call mcp__people__greet {"name": "Ada", "style": "rude"}'
            result = await client.prompt(script, mcp_servers=[namespace["server"]])
            assert result.result == "tool greet returned: be polite"
            script = 'call mcp__people__greet {"name": "Ada", "style": "formal"}'
            result = await client.prompt(script, mcp_servers=[namespace["server"]])
            assert result.result == "tool greet returned: Good day, Ada."
    assert capsys.readouterr().out.splitlines() == [
        "PreToolUse greet",
        "Stop None",
        "PreToolUse greet",
        "Stop None",
    ]


def test_readme_testing_kit_in_a_fresh_project(tmp_path: Path) -> None:
    project = tmp_path / "my-app"
    project.mkdir()
    for first_line in ("# pyproject.toml", "# conftest.py", "# test_agent.py"):
        code = block("README.md", first_line).code
        (project / first_line.removeprefix("# ")).write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^3 passed in ", run.stdout, re.M), run.stdout
    assert "warning" not in run.stdout.lower(), run.stdout


def test_readme_chat_block(servers: Servers, tmp_path: Path) -> None:
    import pexpect

    secret = "hk_live_0123456789abcdef0123456789abcdef"
    served = servers.get(["--config", "examples/scripted.toml", "--project", f"proj:{secret}"])
    (line,) = block(
        "README.md", 'chucky chat --url ws://127.0.0.1:8765/ws --token "$TOKEN"'
    ).code.split("\n", 1)[:1]
    assert line.startswith("chucky chat ")
    command = f"{shlex.quote(sys.executable)} -m chucky.cli{line.removeprefix('chucky')}"
    env = {"TOKEN": token_for("chat-user", "proj", secret), "PROMPT_TOOLKIT_NO_CPR": "1"}
    child = pexpect.spawn(
        "bash",
        ["-c", command.replace(DOC_URL, served.url)],
        env=chucky_env(tmp_path, {**env, "TERM": "xterm"}),
        encoding="utf-8",
        timeout=RUN_TIMEOUT,
    )
    try:
        child.expect_exact("you>")
        child.send("echo hello from the README\r")
        child.expect_exact("hello from the README\r\n")  # the answer (the input has no \r\n)
        child.expect_exact("you>")
        child.sendcontrol("d")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


# -- other blocks ----------------------------------------------------------------------------------


def test_readme_cli_synopsis() -> None:
    from chucky import cli

    parser = cli._parser()
    commands = parser.commands
    code = block(
        "README.md",
        "chucky demo [--prompt TEXT] [--max-tokens 96] [--seed 7] [--model-path any.gguf]",
    ).code
    text = re.sub(r"\n\s+(?=\[)", " ", code)  # continuation lines joined
    seen = set()
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line)
        words = line.split()
        assert words[0] == "chucky", line
        command = commands[words[1]]
        if words[1] == "project":  # chucky project create ... / list | rotate ID | revoke ...
            for alternative in " ".join(words[2:]).split("|"):
                action = alternative.split()[0]
                sub = command.commands[action]
                _check_flags(sub, alternative)
                seen.add(f"project {action}")
        else:
            _check_flags(command, " ".join(words[2:]))
            seen.add(words[1])
    assert seen == {"demo", "serve", "token", "prompt", "chat"} | {
        f"project {a}" for a in ("create", "list", "rotate", "revoke", "delete")
    }


def _check_flags(parser: Any, usage: str) -> None:
    """Every ``--flag`` of ``usage`` exists in ``parser``; a documented number or choice in
    ``[--flag VALUE]`` is its default."""
    options = {s: a for a in parser.arguments for s in a.option_strings}
    for flag in re.findall(r"--[\w-]+", usage):
        assert flag in options, (flag, usage)
    for flag, value in re.findall(r"\[(--[\w-]+) ([^\]\s|]+)\]", usage):
        action = options[flag]
        if re.fullmatch(r"\d+(\.\d+)?", value):
            assert float(value) == float(action.default), (flag, value, action.default)
        elif (action.choices is not None and value in action.choices) or flag in (
            "--host",
            "--model",
            "--window",
        ):
            assert value == action.default, (flag, value, action.default)
    for flag, value in re.findall(r"\[(--[\w-]+) ([\w]+\|[\w|]+)\]", usage):
        assert set(value.split("|")) == set(options[flag].choices), flag


def test_readme_routing_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chucky.server.routing import ModelRouter, RoutingConfig

    code = block(
        "README.md",
        'fallback = "sonnet"                 # unknown names go here; without it they are refused',
    ).code
    path = tmp_path / "models.toml"
    path.write_text(code, encoding="utf-8")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-example")
    router = ModelRouter.from_config(RoutingConfig.from_toml(path))
    expected = {
        "sonnet": ("anthropic", "claude-sonnet-5-5", "sonnet"),
        "sonnet-5-5": ("anthropic", "claude-sonnet-5-5", "sonnet-5-5"),  # an alias
        "claude-haiku-4-5": ("anthropic", "claude-haiku-4-5", "claude-haiku-4-5"),
        "llama": ("openai", "llama3.2", "llama"),
        "local": ("llamacpp", "local", "local"),
        "no-such-model": ("anthropic", "claude-sonnet-5-5", "sonnet"),  # the fallback
    }
    for name, (provider, model, reported) in expected.items():
        route = router.resolve(name)
        assert (route.provider.name, route.model, route.name) == (provider, model, reported)
    assert router.resolve("llama").price.input == router.resolve("llama").price.output == 0.0


def test_architecture_layers_diagram() -> None:
    code = block(
        "docs/architecture.md", "application code                          chucky serve (CLI)"
    ).code
    # The client column promises nothing the client does not do (it does not reconnect).
    assert "reconnect" not in code
    for module in set(re.findall(r"\bchucky(?:\.\w+)+", code)):
        assert importlib.util.find_spec(module) is not None, module
    for provider in ("scripted", "anthropic", "openai", "llamacpp"):
        assert (ROOT / "chucky" / "server" / "providers" / f"{provider}.py").is_file()


def test_architecture_layout() -> None:
    code = block("docs/architecture.md", "pyproject.toml  README.md  CHANGELOG.md  .ci/run").code
    files = {p.name for p in ROOT.rglob("*.py") if ".git" not in p.parts}
    for name in set(re.findall(r"[\w/]+\.py\b", code)):
        assert name.rsplit("/", 1)[-1] in files, name
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md", ".ci/run", "chucky/py.typed"):
        assert (ROOT / name).is_file(), name
    tests = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and p.name != "__pycache__"}
    tests_line = code[code.index("\ntests/") :].split("\nbench/")[0]
    assert tests == set(re.findall(r"(\w+)/", tests_line)) - {"tests"}, tests_line
