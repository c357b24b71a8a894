"""What the documents say is true of the code (issue 11, finding 14).

The code blocks of README.md and docs/ and the files of examples/ are run by
``tests/e2e/test_examples.py``; this module checks the statements around them that need no
server: citations of the protocol, the client's signature, the providers.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from chucky import Chucky
from chucky.server.routing import provider_factories

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
_SOURCES = ("README.md", "docs", "chucky", "tests", "examples", "bench")


def _texts() -> dict[str, str]:
    texts = {}
    for name in _SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in files:
            if file.suffix in (".py", ".md", ".toml") and "__pycache__" not in file.parts:
                texts[str(file.relative_to(ROOT))] = file.read_text(encoding="utf-8")
    return texts


def test_the_protocol_is_cited_by_its_path() -> None:
    wrong = "PROTOCOL" + ".md"  # the document is docs/protocol.md
    citing = sorted(name for name, text in _texts().items() if wrong in text)
    assert citing == []


def test_protocol_citations_name_sections_that_exist() -> None:
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", PROTOCOL, re.M)}
    assert sections == set(range(1, len(sections) + 1)), sections
    cited: dict[str, set[int]] = {}
    pattern = re.compile(
        r"docs/protocol\.md,?\s+sections?\s+(\d+(?:(?:,\s*|\s+and\s+|\s+to\s+)\d+)*)"
    )
    for name, text in _texts().items():
        for match in pattern.finditer(text):
            cited.setdefault(name, set()).update(int(n) for n in re.findall(r"\d+", match[1]))
    assert cited, "no citation found: the pattern is wrong"
    unknown = {name: numbers - sections for name, numbers in cited.items() if numbers - sections}
    assert unknown == {}


def test_the_readme_shows_the_clients_real_signature() -> None:
    documented = re.search(r"- `Chucky\(token, (url=.*?\*\*options)\)`", README, re.S)
    assert documented, "the Chucky(...) line of the README"
    pairs = dict(re.findall(r"(\w+)=([^,\s]+)", documented[1]))
    parameters = inspect.signature(Chucky.__init__).parameters
    keywords = [
        name
        for name, p in parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY or name == "url"
    ]
    assert sorted(pairs) == sorted(keywords)
    for name, value in pairs.items():
        default = parameters[name].default
        if name == "url":
            from chucky.client import DEFAULT_URL

            default = DEFAULT_URL
        assert value == repr(default).replace("'", '"'), (name, value, default)


def test_the_readme_names_the_providers_that_exist() -> None:
    table = README.split("| provider | what | notes |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ", table, re.M)
    assert sorted(rows) == sorted(provider_factories())
    # The introduction once said real providers were still to come.
    introduction = README.split("## Try it")[0]
    assert "come next" not in introduction
    for provider in ("Anthropic", "OpenAI-compatible", "embedded local model", "scripted"):
        assert provider in introduction, provider


def test_the_local_models_documented_settings_exist() -> None:
    from chucky.server.providers.llamacpp import LlamaCppProvider

    table = README.split("| provider | what | notes |", 1)[1].split("\n\n", 1)[0]
    (row,) = re.findall(r"^\| `llamacpp` \|.*$", table, re.M)
    settings = re.findall(r"`(\w+)`", row.split("settings of the provider's table:", 1)[1])
    parameters = set(inspect.signature(LlamaCppProvider).parameters)
    assert settings and set(settings) <= parameters, set(settings) - parameters
    assert "prompt_cache_mb" in row.split("settings of", 1)[0]


def _all_flags() -> set[str]:
    from chucky import cli

    flags: set[str] = set()
    parsers = [cli._parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser.arguments:
            flags.update(action.option_strings)
        parsers.extend(parser.commands.values())
    return flags


def test_every_documented_flag_exists() -> None:
    documents = {"README.md": README, "docs/protocol.md": PROTOCOL}
    documents["docs/architecture.md"] = (ROOT / "docs" / "architecture.md").read_text()
    # ruff format --check, mypy --strict, pip install --no-cache-dir --force-reinstall
    tools = {"--check", "--strict", "--no-cache-dir", "--force-reinstall"}
    flags = _all_flags()
    unknown = {
        name: sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", text)) - flags - tools)
        for name, text in documents.items()
    }
    assert {name: found for name, found in unknown.items() if found} == {}


def test_the_extensions_the_protocol_says_our_client_announces() -> None:
    from chucky.protocol.client import EXTENSIONS
    from chucky.protocol.resume import SEQ_EXTENSION

    announced = re.search(r"Our client announces `(\[.*?\])`", PROTOCOL)
    assert announced
    # seq only when the client may reconnect (its default): chucky.protocol.client adds it.
    assert json.loads(announced[1]) == [*EXTENSIONS, SEQ_EXTENSION]
    assert "(`seq` only with `reconnect` on, its default)" in PROTOCOL
