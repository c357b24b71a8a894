"""The grammar of the ``chucky`` command line: its parser class and its value types.

:class:`Parser` reports a usage error on one line (exit status 2) and keeps what it was
given, for the documentation tests; the value types turn a bad value into argparse's usage
error. The commands themselves, and the parser they make, are :mod:`chucky.cli`'s.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn, Protocol

__all__ = [
    "EXIT_USAGE",
    "Commands",
    "Parser",
    "command_parser",
    "db_option",
    "demo_max_tokens",
    "positive",
    "seconds",
]

EXIT_USAGE = 2
"""A bad or missing flag (argparse's own status)."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (the usage itself is one ``--help`` away).

    It keeps what it was given, for the documentation tests: :attr:`arguments`, the actions
    of its options, and :attr:`commands`, its subcommands' parsers by name.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: list[argparse.Action] = []  # before: __init__ adds --help
        self.commands: dict[str, Parser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def add_subparsers(self, **kwargs: Any) -> Any:
        subparsers = super().add_subparsers(**kwargs)
        self.commands = subparsers.choices  # name -> parser, filled by add_parser
        return subparsers

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def demo_max_tokens(text: str) -> int:
    from .demo import MIN_MAX_TOKENS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < MIN_MAX_TOKENS:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_MAX_TOKENS}, got {value} (the forced tool call needs room)"
        )
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """A number of seconds > 0 (argparse reports a bad one as a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0: {text!r}")
    return value


class Commands(Protocol):
    """What ``ArgumentParser.add_subparsers()`` returns, as used here."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def command_parser(commands: Commands, name: str, summary: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=summary, description=summary[:1].upper() + summary[1:])


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="URL",
        help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST/DB "
        "(also CHUCKY_DB; default: a SQLite file in the user data directory)",
    )
