"""MkDocs hook: the site's pages show README.md's sections, not copies of them.

A page names a README section by its heading on a line of its own::

    <!-- readme ## Models -->

and the hook puts there that heading (at the level the directive gives: ``##``) and the
section's own text, up to the README's next heading of any level, so that each page chooses
which sections it shows and in what order. The README stays the one source: its code blocks
are run by ``tests/e2e/test_examples.py``, and ``tests/test_docs_site.py`` checks that every
section of it is shown by exactly one page.

Links are rewritten for the site: ``#anchor`` to the page that shows that section,
``docs/page.md`` to the page, and a link to a file outside the documentation (``examples/``,
``CHANGELOG.md``, ``../bench/README.md``) becomes its text, in every page.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify

DIRECTIVE = re.compile(r"^<!-- readme (?P<level>#{1,6}) (?P<heading>.+?) -->[ \t]*$", re.M)
_HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<text>.+?)[ \t]*$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Section:
    """A README heading and its own text (up to the next heading of any level)."""

    level: int
    heading: str
    body: str

    @property
    def anchor(self) -> str:
        """The heading's anchor, as the site's table of contents and GitHub make it."""
        return slugify(re.sub(r"`", "", self.heading), "-")


def sections(readme: str) -> list[Section]:
    """README.md's sections in order; a ``#`` line inside a code block is no heading."""
    found: list[Section] = []
    level, heading, lines = 0, "", []  # the text before the first heading, if any
    fenced = False
    for line in readme.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match:
            if heading:
                found.append(Section(level, heading, "".join(lines)))
            level, heading, lines = len(match["level"]), match["text"], []
        else:
            lines.append(line)
    if heading:
        found.append(Section(level, heading, "".join(lines)))
    return found


def included(pages: dict[str, str]) -> dict[str, list[str]]:
    """Which README headings each page (path relative to the docs) shows."""
    return {
        page: [m["heading"] for m in DIRECTIVE.finditer(text)]
        for page, text in pages.items()
        if DIRECTIVE.search(text)
    }


def render(page: str, markdown: str, readme: str, pages: dict[str, str]) -> str:
    """``markdown`` (the page ``page``) with its directives replaced and its links rewritten.

    Raises:
        ValueError: a directive names no README heading, or a README link points to a
            section no page shows.
    """
    by_heading = {s.heading: s for s in sections(readme)}
    anchors = {
        by_heading[heading].anchor: name
        for name, headings in included(pages).items()
        for heading in headings
        if heading in by_heading
    }

    def readme_link(match: re.Match[str]) -> str:
        text, target = match["text"], match["target"]
        if target.startswith("#"):
            if target[1:] not in anchors:
                raise ValueError(f"{page}: README link {target} to a section no page shows")
            where = anchors[target[1:]]
            return f"[{text}]({'' if where == page else _relative(page, where)}{target})"
        if target.startswith("docs/"):
            return f"[{text}]({_relative(page, target.removeprefix('docs/'))})"
        return match[0]

    def include(match: re.Match[str]) -> str:
        heading = match["heading"]
        if heading not in by_heading:
            raise ValueError(f"{page}: no README heading {heading!r}")
        body = _LINK.sub(readme_link, by_heading[heading].body)
        return f"{match['level']} {heading}\n{body}"

    return _outside_links(page, DIRECTIVE.sub(include, markdown), set(pages))


def _relative(page: str, target: str) -> str:
    return posixpath.relpath(target, posixpath.dirname(page) or ".")


def _outside_links(page: str, markdown: str, names: set[str]) -> str:
    """Links to files that are no page of the documentation become their text."""

    def plain(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"[a-z]+:|#", target):
            return match[0]
        path = posixpath.normpath(posixpath.join(posixpath.dirname(page), target.split("#")[0]))
        return match[0] if path in names else match["text"]

    return _LINK.sub(plain, markdown)


# -- the MkDocs side -------------------------------------------------------------------------------


def _pages(docs_dir: Path) -> dict[str, str]:
    return {
        path.relative_to(docs_dir).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(docs_dir.rglob("*.md"))
    }


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs' hook: the page's markdown, its README sections in place."""
    docs_dir = Path(config["docs_dir"])
    readme = (docs_dir.parent / "README.md").read_text(encoding="utf-8")
    return render(page.file.src_uri, markdown, readme, _pages(docs_dir))
