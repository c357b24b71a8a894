"""The documentation site (``mkdocs.yml``) builds with ``--strict``, offline, and shows it all.

Its pages show README.md's sections through ``docs/hooks/readme.py`` (the README's code blocks
are run by ``tests/e2e/test_examples.py``, which also runs every fenced block of ``docs/``);
the API reference is generated from the docstrings, so a docstring griffe cannot read fails
the build here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text(encoding="utf-8")
PUBLIC_MODULES = (
    "chucky",
    "chucky.client",
    "chucky.tools",
    "chucky.tokens",
    "chucky.errors",
    "chucky.messages",
    "chucky.options",
    "chucky.testing",
    "chucky.server.config",
    "chucky.server.routing",
)


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_hook", DOCS / "hooks" / "readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


readme = _hook()


def _config() -> dict[str, object]:
    # mkdocs.yml has no tags (!!python/...), so the safe loader reads it.
    config: dict[str, object] = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    return config


def _nav_pages(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in _nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in _nav_pages(value)]
    raise AssertionError(nav)


def _pages() -> dict[str, str]:
    return {
        path.relative_to(DOCS).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(DOCS.rglob("*.md"))
    }


# -- the build -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built as the README says, ``mkdocs build --strict``, into a temporary dir."""
    out = tmp_path_factory.mktemp("site")
    env = {
        **os.environ,
        "NO_MKDOCS_2_WARNING": "1",  # Material's banner about its future, not about our pages
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr, build.stderr
    return out


def _html(site: Path, page: str) -> str:
    name = page.removesuffix(".md")
    path = site / "index.html" if name == "index" else site / name / "index.html"
    return path.read_text(encoding="utf-8")


def test_the_site_builds_strictly_with_every_page(site: Path) -> None:
    for page in _nav_pages(_config()["nav"]):
        assert "readme ##" not in _html(site, page), page  # every directive was replaced


def test_pages_show_the_readme_sections_with_their_code(site: Path) -> None:
    client = _html(site, "client.md")
    assert "class City(pydantic.BaseModel)" in re.sub(r"<[^>]+>", "", client)
    # A README link to a section of another page leads there.
    assert 'href="models/#models"' in _html(site, "index.md")
    testing = re.sub(r"<[^>]+>", "", _html(site, "testing.md"))
    assert 'pytest_plugins = ["chucky.testing"]' in testing.replace("&quot;", '"')


def test_the_api_reference_is_generated_from_the_docstrings(site: Path) -> None:
    html = _html(site, "reference/client.md")
    assert 'id="chucky.client.Chucky"' in html
    assert "The end-user token" in html  # Chucky's Args section, rendered
    assert 'id="chucky.client.Chucky.prompt"' in html
    assert 'id="chucky.errors.BudgetExceededError"' in _html(site, "reference/errors.md")
    assert 'id="chucky.server.config.ServerConfig"' in _html(site, "reference/server.md")


def test_no_page_fetches_from_the_internet(site: Path) -> None:
    # `font: false`: Material would otherwise link Google Fonts into every page.
    assert "fonts.googleapis.com" not in _html(site, "index.md")


# -- what the site holds ---------------------------------------------------------------------------


def test_every_page_is_in_the_nav_once() -> None:
    nav = _nav_pages(_config()["nav"])
    assert len(nav) == len(set(nav))
    assert sorted(nav) == sorted(_pages()), "a page under docs/ is missing from mkdocs.yml's nav"


def test_every_readme_section_is_shown_by_exactly_one_page() -> None:
    shown = [h for headings in readme.included(_pages()).values() for h in headings]
    assert len(shown) == len(set(shown)), "a README section on two pages"
    headings = [section.heading for section in readme.sections(README)]
    assert sorted(shown) == sorted(headings), "README sections the site does not show"


def test_every_public_module_has_a_reference() -> None:
    pages = "".join(text for name, text in _pages().items() if name.startswith("reference/"))
    documented = set(re.findall(r"^::: ([\w.]+)", pages, re.M))
    for module in PUBLIC_MODULES:
        assert module in documented, module


def test_the_readme_says_how_to_build_and_serve_the_site() -> None:
    from mkdocs.config import load_config

    line = re.search(r"^- The documentation site: (.*?)(?=^- )", README, re.M | re.S)
    assert line, "the README's line on the site"
    assert "`mkdocs serve` serves it at http://127.0.0.1:8000" in line[1]
    assert "`mkdocs build --strict` builds it into `site/`" in line[1]
    os.environ.setdefault("NO_MKDOCS_2_WARNING", "1")
    config = load_config(str(ROOT / "mkdocs.yml"))
    assert (config.dev_addr.host, config.dev_addr.port) == ("127.0.0.1", 8000)
    assert Path(config.site_dir) == ROOT / "site"
    # ... and `pip install -e ".[dev]"` (the README's install) brings what the build needs.
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[\[<>=]", r)[0] for r in dev["optional-dependencies"]["dev"]}
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= names


# -- the hook that shows README sections -----------------------------------------------------------

_README = """\
# Title

Intro, see [Models](#models) and [the protocol](docs/protocol.md) and
[an example](examples/quickstart.py).

```bash
# not a heading
```

## Models

Routing, and [back](#title).

### Unshown

Text.
"""


def test_a_directive_shows_a_section_up_to_the_next_heading() -> None:
    pages = {"index.md": "<!-- readme # Title -->\n", "models.md": "<!-- readme # Models -->\n"}
    page = readme.render("models.md", pages["models.md"], _README, pages)
    assert page == "# Models\n\nRouting, and [back](index.md#title).\n\n\n"  # + the page's
    assert [s.heading for s in readme.sections(_README)] == ["Title", "Models", "Unshown"]


def test_links_are_rewritten_for_the_site() -> None:
    pages = {
        "index.md": "<!-- readme # Title -->\n",
        "server/models.md": "<!-- readme ## Models -->\n",
        "protocol.md": "",
    }
    page = readme.render("index.md", pages["index.md"], _README, pages)
    assert "[Models](server/models.md#models)" in page  # the page that shows it
    assert "[the protocol](protocol.md)" in page  # docs/ dropped
    assert "\n[an example](" not in page and "an example." in page  # no page: its text
    assert "# not a heading" in page


def test_a_link_to_a_section_no_page_shows_fails_the_build() -> None:
    pages = {"index.md": "<!-- readme # Title -->\n"}
    with pytest.raises(ValueError, match="#models to a section no page shows"):
        readme.render("index.md", pages["index.md"], _README, pages)


def test_a_directive_naming_no_heading_fails_the_build() -> None:
    pages = {"index.md": "<!-- readme # Nope -->\n"}
    with pytest.raises(ValueError, match="no README heading 'Nope'"):
        readme.render("index.md", pages["index.md"], _README, pages)


def test_links_leaving_the_docs_become_text_in_every_page() -> None:
    markdown = "See [`bench/README.md`](../bench/README.md) and [here](protocol.md#2-handshake)."
    pages = {"benchmarks.md": markdown, "protocol.md": ""}
    page = readme.render("benchmarks.md", markdown, _README, pages)
    assert page == "See `bench/README.md` and [here](protocol.md#2-handshake)."


def test_the_package_docstring_example_runs() -> None:
    """The example of ``chucky``'s docstring (the API reference's first page) runs as written
    against a scripted server on the project and secret it names."""
    import asyncio
    import textwrap

    import chucky
    from chucky.testing import scripted_server

    doc = chucky.__doc__ or ""
    code = textwrap.dedent(doc.split("Example::", 1)[1])
    secret = re.search(r'secret="(hk_live_[0-9a-f]{32})"', code)
    assert secret, "the example's secret has the documented form"

    async def run() -> str:
        async with scripted_server(project_id="proj", secret=secret[1]) as server:
            program = code.replace("ws://127.0.0.1:8765/ws", server.url).replace(
                "asyncio.run(main())", ""
            )
            namespace: dict[str, object] = {}
            exec(program, namespace)
            main = namespace["main"]
            assert callable(main)
            await main()
            return server.url

    asyncio.run(run())
