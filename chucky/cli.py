"""The ``chucky`` command.

* ``chucky serve [--host H] [--port P] [--project ID:SECRET]...`` runs a server; the first line
  it prints is ``chucky serve listening on ws://HOST:PORT/ws``.
* ``chucky token --project ID --user USER --secret S [--ai-dollars 1] ...`` prints a token.
* ``chucky prompt --url URL --token T "message"`` runs one turn and prints the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import ChuckyError

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server.app import run_server
        from .server.config import ServerConfig, parse_projects
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        print(f"chucky serve needs the server extra: pip install 'chucky[server]' ({exc})")
        return 2
    projects = parse_projects(args.project)
    config = ServerConfig.from_env(
        host=args.host,
        port=args.port,
        projects=projects,
        tool_timeout=args.tool_timeout,
    )
    if not config.projects:
        print(
            "chucky serve: no project configured; every token will be refused. "
            "Pass --project ID:SECRET or set CHUCKY_PROJECTS.",
            file=sys.stderr,
            flush=True,
        )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_server(config))
    return 0


def _token(args: argparse.Namespace) -> int:
    from .tokens import create_budget, create_token

    secret = args.secret or os.environ.get("CHUCKY_SECRET")
    if not secret:
        print("chucky token: --secret (or CHUCKY_SECRET) is required", file=sys.stderr)
        return 2
    budget = create_budget(args.ai_dollars, args.compute_hours, args.window)
    print(create_token(args.user, args.project, secret, budget, expires_in=args.expires_in))
    return 0


async def _prompt(args: argparse.Namespace) -> int:
    from .client import Chucky

    token = args.token or os.environ.get("CHUCKY_TOKEN")
    if not token:
        print("chucky prompt: --token (or CHUCKY_TOKEN) is required", file=sys.stderr)
        return 2
    async with Chucky(token=token, url=args.url, model=args.model) as client:
        async for event in client.stream(args.message, include_partial_messages=True):
            if event.type == "message":
                print(event.data, end="", flush=True)
            elif event.type == "tool_use":
                print(f"\n[tool: {event.name} {json.dumps(event.input)}]", flush=True)
            elif event.type == "result":
                result = event.data
                print(
                    f"\n[{result.subtype}: ${result.total_cost_usd:.6f}, "
                    f"{result.usage.input_tokens} in / {result.usage.output_tokens} out, "
                    f"{result.duration_ms} ms]"
                )
            elif event.type == "error":
                print(f"\nerror: {event.data.get('error', {}).get('message')}", file=sys.stderr)
                return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chucky", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"chucky {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a Chucky-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="a project and its token secret (repeatable; also CHUCKY_PROJECTS)",
    )
    serve.add_argument("--tool-timeout", type=float, default=120.0, metavar="SECONDS")
    serve.set_defaults(run=_serve)

    token = commands.add_parser("token", help="mint an end-user token")
    token.add_argument("--project", required=True)
    token.add_argument("--user", required=True)
    token.add_argument("--secret", help="the project secret (or CHUCKY_SECRET)")
    token.add_argument("--ai-dollars", type=float, default=1.0)
    token.add_argument("--compute-hours", type=float, default=1.0)
    token.add_argument(
        "--window", default="day", choices=["hour", "day", "week", "month", "lifetime"]
    )
    token.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS")
    token.set_defaults(run=_token)

    prompt = commands.add_parser("prompt", help="run one streamed turn")
    prompt.add_argument("message")
    prompt.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    prompt.add_argument("--token", help="the end-user token (or CHUCKY_TOKEN)")
    prompt.add_argument("--model", default="claude-sonnet-4-5-20250929")
    prompt.set_defaults(run=lambda args: asyncio.run(_prompt(args)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chucky`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except ChuckyError as exc:
        print(f"chucky {args.command}: {type(exc).__name__}: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
