"""The ``chucky`` command.

* ``chucky demo`` runs a real agent session on this machine: an embedded server with the local
  model, a token, one streamed turn with a client-side tool call (no key, no network).
* ``chucky serve [--host H] [--port P] [--db URL] [--project ID:SECRET]...`` runs a server; the
  first line it prints is ``chucky serve listening on ws://HOST:PORT/ws``, the second the
  database, with ``--metrics-port`` a third ``chucky serve metrics on http://HOST:PORT/metrics``.
  SIGTERM or SIGINT stops it gracefully (``--shutdown-grace``).
* ``chucky project create --name NAME`` / ``list`` / ``rotate ID`` / ``revoke ID
  --secret-prefix P`` / ``delete ID`` manage the projects in the database (``delete`` removes
  the project's sessions and usage too).
* ``chucky token --project ID --user USER [--secret S] [--ai-dollars 1] ...`` prints a token
  (the secret is read from the database unless given).
* ``chucky prompt --url URL --token T "message"`` runs one turn and prints the result.
* ``chucky chat [--url URL --token T]`` is an interactive chat (:mod:`chucky.chat`); with no
  ``--url``, against an embedded server on the local model.

Every command that uses the database takes ``--db URL`` (also ``CHUCKY_DB``); without it, a
SQLite file in the user's data directory.

Exit status: 0 success; 1 the command failed (a server that cannot be reached or refuses the
token, a failed turn, a port in use, a database that cannot be used, a missing model...);
2 a usage error (a bad or missing flag); 130 interrupted (Ctrl-C). Every expected failure is
reported as one line on stderr, ``chucky COMMAND: what went wrong``; only a bug prints a
traceback. (``chucky serve`` stops gracefully on SIGINT as on SIGTERM, and exits 0.)
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from . import __version__
from .cli_args import (
    EXIT_USAGE,
    Parser,
    command_parser,
    db_option,
    demo_max_tokens,
    positive,
    seconds,
)
from .errors import ChuckyError
from .server.config import DEFAULT_FIRST_EVENT_TIMEOUT, DEFAULT_MODEL_TIMEOUT

if TYPE_CHECKING:
    from .server.store import Store

T = TypeVar("T")

__all__ = ["main"]

_DESCRIPTION = (
    "chucky: run AI agent sessions over a WebSocket. Start with 'chucky demo' (no key, no "
    "network); 'chucky COMMAND --help' describes each command."
)
EXIT_FAILURE = 1
"""The command failed (an expected failure, reported on one line)."""
EXIT_INTERRUPTED = 130
"""Interrupted by Ctrl-C (128 + SIGINT, the shells' convention)."""


class CommandError(Exception):
    """An expected failure of a command: its one-line message and exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _listen_failure(exc: OSError, args: argparse.Namespace) -> str:
    flag = "--port"
    host, port = args.host, args.port
    if exc.filename == "--metrics-port":  # the metrics listener (chucky.server.app)
        flag, host, port = "--metrics-port", args.metrics_host or "127.0.0.1", args.metrics_port
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {host}:{port}: the address is already in use (stop what "
            f"listens there, or pick another {flag}; {flag} 0 picks a free one)"
        )
    reason = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 else str(exc)
    if isinstance(exc, socket.gaierror):
        reason = f"unknown host ({exc.strerror})"
    return f"cannot listen on {host}:{port}: {reason}"


def _database_url(args: argparse.Namespace) -> str:
    from .server.sql import default_database_url

    return str(args.db or os.environ.get("CHUCKY_DB") or default_database_url())


def _serve(args: argparse.Namespace) -> int:
    try:
        from .server.app import run_server
        from .server.config import ServerConfig, parse_projects
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise CommandError(f"the server needs: pip install 'chucky[server]' ({exc})") from exc
    projects = parse_projects(args.project)
    if args.project:
        _warn_visible("--project", "CHUCKY_PROJECTS, or a project in the database")
    if args.metrics_token is not None:
        _warn_visible("--metrics-token", "CHUCKY_METRICS_TOKEN")
    config = ServerConfig.from_env(
        host=args.host,
        port=args.port,
        metrics_token=args.metrics_token,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        projects=projects,
        tool_timeout=args.tool_timeout,
        database_url=_database_url(args),
        max_sessions_per_user=args.max_sessions_per_user,
        max_sessions_per_project=args.max_sessions_per_project,
        turns_per_minute=args.turns_per_minute,
        lease_ttl=args.lease_ttl,
        shutdown_grace=args.shutdown_grace,
        write_timeout=args.write_timeout,
        reconnect_grace=args.reconnect_grace,
        replay_frames=args.replay_frames,
        replay_bytes=args.replay_bytes,
        sqlite_synchronous=args.sqlite_synchronous,
        max_queued_turns=args.max_queued_turns,
        max_queued_bytes=args.max_queued_bytes,
        min_output_tokens=args.min_output_tokens,
        routing_file=args.config,
        model_timeout=args.model_timeout,
        first_event_timeout=args.first_event_timeout,
    )
    router = None
    if args.config is None:
        from .server.routing import ModelRouter, default_routing

        router = ModelRouter.from_config(default_routing())
    try:
        asyncio.run(run_server(config, router=router))
    except OSError as exc:  # the listening socket; the store's failures are StoreErrors
        raise CommandError(_listen_failure(exc, args)) from exc
    return 0


def _warn_visible(flag: str, instead: str) -> None:
    print(
        f"chucky serve: warning: {flag} puts a secret in the process list (ps, /proc) of "
        f"every user of this machine; prefer {instead}",
        file=sys.stderr,
    )


async def _with_store(args: argparse.Namespace, action: Callable[[Store], Awaitable[T]]) -> T:
    from .server.sql import SqlStore

    store = SqlStore(_database_url(args))
    await store.open()
    try:
        return await action(store)
    finally:
        await store.aclose()


def _new_secret() -> str:
    return f"hk_live_{secrets.token_hex(16)}"


def _project(args: argparse.Namespace) -> int:
    async def create(store: Store) -> int:
        secret = _new_secret()
        project = await store.create_project(args.name, secret, time.time(), project_id=args.id)
        print(f"project {project.project_id}")
        print(f"secret  {secret}")
        return 0

    async def list_(store: Store) -> int:
        for project in await store.list_projects():
            hints = ", ".join(f"{secret[:12]}..." for secret in project.secrets)
            count = len(project.secrets)
            print(f"{project.project_id}\t{project.name}\t{count} secret(s): {hints}")
        return 0

    async def rotate(store: Store) -> int:
        secret = _new_secret()
        await store.add_secret(args.id, secret, time.time())
        print(f"secret  {secret}")
        print("the old secrets work until revoked: chucky project revoke ID --secret-prefix P")
        return 0

    async def revoke(store: Store) -> int:
        count = await store.revoke_secrets(args.id, args.secret_prefix, time.time())
        if not count:
            raise CommandError(
                f"no active secret of project {args.id!r} starts with {args.secret_prefix!r}"
            )
        print(f"revoked {count} secret(s)")
        return 0

    async def delete(store: Store) -> int:
        deleted = await store.delete_project(args.id)
        print(
            f"deleted project {deleted.project_id}: {deleted.secrets} secret(s), "
            f"{deleted.sessions} session(s) with their messages, "
            f"{deleted.ledger_rows} usage row(s)"
        )
        return 0

    actions = {
        "create": create,
        "list": list_,
        "rotate": rotate,
        "revoke": revoke,
        "delete": delete,
    }
    return asyncio.run(_with_store(args, actions[args.action]))


def _token(args: argparse.Namespace) -> int:
    from .tokens import check_project_secret, create_budget, create_token

    secret = args.secret or os.environ.get("CHUCKY_SECRET")
    if secret:
        check_project_secret(secret, project_id=args.project)
    else:
        try:
            secret = asyncio.run(_with_store(args, lambda store: _stored_secret(store, args)))
        except ImportError:  # pragma: no cover - the server extra is missing
            secret = None
    if not secret:
        raise CommandError(
            f"no secret for project {args.project!r} in the database: pass --secret (or "
            "CHUCKY_SECRET), or create the project with chucky project create",
            EXIT_USAGE,
        )
    budget = create_budget(args.ai_dollars, args.compute_hours, args.window)
    print(create_token(args.user, args.project, secret, budget, expires_in=args.expires_in))
    return 0


async def _stored_secret(store: Store, args: argparse.Namespace) -> str | None:
    project = await store.get_project(args.project)
    # The newest secret: after a rotation, new tokens use the new key.
    return project.secrets[-1] if project is not None and project.secrets else None


async def _prompt(args: argparse.Namespace) -> int:
    from .client import Chucky

    token = args.token or os.environ.get("CHUCKY_TOKEN")
    if not token:
        raise CommandError("--token (or CHUCKY_TOKEN) is required", EXIT_USAGE)
    printed = False  # text on the current stdout line
    async with Chucky(token=token, url=args.url, model=args.model) as client:
        async for event in client.stream(args.message, include_partial_messages=True):
            if event.type == "message":
                print(event.data, end="", flush=True)
                printed = True
            elif event.type == "tool_use":
                print(f"\n[tool: {event.name} {json.dumps(event.input)}]", flush=True)
                printed = False
            elif event.type == "result":
                result = event.data
                print(
                    f"\n[{result.subtype}: ${result.total_cost_usd:.6f}, "
                    f"{result.usage.input_tokens} in / {result.usage.output_tokens} out, "
                    f"{result.duration_ms} ms]"
                )
            elif event.type == "error":
                if printed:
                    print(flush=True)  # the error goes to stderr on a line of its own
                error = event.error
                what = (
                    f"{type(error).__name__}: {error.message}"
                    if error is not None
                    else str(event.data.get("error", {}).get("message"))
                )
                print(f"chucky prompt: turn error: {_one_line(what)}", file=sys.stderr)
                return EXIT_FAILURE
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_PROMPT, DemoOptions, main

    prompt = args.prompt or DEMO_PROMPT
    return main(
        DemoOptions(
            prompt,
            args.max_tokens,
            args.model_path,
            args.seed,
            n_threads=args.n_threads,
            n_batch=args.n_batch,
            n_ctx=args.n_ctx,
        )
    )


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="chucky", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"chucky {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = command_parser(
        commands, "demo", "run an agent session with the embedded local model (no key, no network)"
    )
    demo.add_argument("--prompt", help="the user's message (default: a weather question)")
    demo.add_argument(
        "--max-tokens",
        type=demo_max_tokens,
        default=96,
        metavar="N",
        help="the cap of each model call, at least 48: the forced tool call needs room "
        "(default: 96)",
    )
    demo.add_argument("--model-path", metavar="GGUF", help="another local model file")
    demo.add_argument("--seed", type=int, default=7)
    for flag, default, what in (
        ("--n-threads", None, "CPU threads for the model (default: half the CPUs sampling)"),
        ("--n-batch", None, "prompt tokens per batch (default: 512 where the build survives it)"),
        ("--n-ctx", 4096, "the model's context window (default: 4096)"),
    ):
        demo.add_argument(flag, type=positive, default=default, metavar="N", help=what)
    demo.set_defaults(run=_demo)

    serve = command_parser(
        commands,
        "serve",
        "run a Chucky-compatible server; SIGTERM or SIGINT (Ctrl-C) stops it gracefully",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    serve.add_argument(
        "--project",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="a project and its secret, hk_live_ + 32 hex digits (repeatable). Held by this "
        "process only, never written to the database. Visible in the process list: prefer "
        "CHUCKY_PROJECTS=ID:SECRET,... or chucky project create",
    )
    serve.add_argument(
        "--metrics-token",
        metavar="TOKEN",
        help="GET /metrics requires Authorization: Bearer TOKEN (16+ characters; also, and "
        "better, CHUCKY_METRICS_TOKEN). Without one, /metrics is open on a loopback --host "
        "and off (403) on any other",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve GET /metrics on a listener of its own, and not on --port (0 picks a port)",
    )
    serve.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="the address of the --metrics-port listener (default 127.0.0.1; another than "
        "loopback needs a metrics token)",
    )
    serve.add_argument("--tool-timeout", type=float, default=120.0, metavar="SECONDS")
    db_option(serve)
    serve.add_argument("--max-sessions-per-user", type=int, metavar="N")
    serve.add_argument("--max-sessions-per-project", type=int, metavar="N")
    serve.add_argument("--turns-per-minute", type=int, metavar="N", help="per user")
    serve.add_argument(
        "--lease-ttl",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a crashed node's sessions and reservations stay held (one of this "
        "host, proven dead: none)",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="a TOML file routing model names to providers (default: the embedded local "
        "model; Claude names go to Anthropic when ANTHROPIC_API_KEY is set)",
    )
    serve.add_argument(
        "--min-output-tokens",
        type=int,
        default=16,
        metavar="N",
        help="a model call is made only if the budget pays for its input and N output tokens",
    )
    serve.add_argument(
        "--model-timeout",
        type=seconds,
        default=DEFAULT_MODEL_TIMEOUT,
        metavar="SECONDS",
        help="a model call that has not ended this long after its request fails the turn with "
        "PROVIDER_ERROR (a routing file's provider table may set its own model_timeout)",
    )
    serve.add_argument(
        "--first-event-timeout",
        type=seconds,
        default=DEFAULT_FIRST_EVENT_TIMEOUT,
        metavar="SECONDS",
        help="the same for a model call that sent nothing yet (first_event_timeout)",
    )
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long running turns may take to finish",
    )
    serve.add_argument(
        "--write-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a client that does not read a frame for this long is disconnected",
    )
    serve.add_argument(
        "--reconnect-grace",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long a session whose client can resume it (the seq extension) waits, "
        "its turn running on, for the client to come back after its socket dropped",
    )
    serve.add_argument(
        "--replay-frames",
        type=positive,
        default=4096,
        metavar="N",
        help="frames of a session kept for a resuming client to receive again",
    )
    serve.add_argument(
        "--replay-bytes",
        type=positive,
        default=4 * 1024 * 1024,
        metavar="N",
        help="characters of frames of a session kept for a resuming client",
    )
    serve.add_argument(
        "--sqlite-synchronous",
        choices=("normal", "full"),
        default="normal",
        help="a SQLite file's durability: normal survives kill -9; full also survives power "
        "loss, at an fsync per commit (default: normal)",
    )
    serve.add_argument(
        "--max-queued-turns",
        type=int,
        default=16,
        metavar="N",
        help="turns that may wait behind the running one on a connection",
    )
    serve.add_argument(
        "--max-queued-bytes",
        type=int,
        default=8 * 1024 * 1024,
        metavar="N",
        help="characters of turn frames that may wait on a connection",
    )
    serve.set_defaults(run=_serve)

    project = command_parser(commands, "project", "manage projects and their secrets")
    actions = project.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a project; prints its id and secret")
    create.add_argument("--name", required=True)
    create.add_argument("--id", help="the project id (generated if omitted)")
    actions.add_parser("list", help="list the projects")
    rotate = actions.add_parser("rotate", help="add a secret; the old ones keep working")
    rotate.add_argument("id")
    revoke = actions.add_parser("revoke", help="revoke the secrets starting with a prefix")
    revoke.add_argument("id")
    revoke.add_argument("--secret-prefix", required=True)
    delete = actions.add_parser(
        "delete",
        help="delete a project with its secrets, its sessions and its usage (for good)",
    )
    delete.add_argument("id")
    for parser_ in (create, rotate, revoke, delete, actions.choices["list"]):
        db_option(parser_)
    project.set_defaults(run=_project)

    token = command_parser(commands, "token", "mint an end-user token")
    token.add_argument("--project", required=True)
    token.add_argument("--user", required=True)
    token.add_argument(
        "--secret", help="the project secret (or CHUCKY_SECRET; else read from the database)"
    )
    db_option(token)
    token.add_argument("--ai-dollars", type=float, default=1.0)
    token.add_argument("--compute-hours", type=float, default=1.0)
    token.add_argument(
        "--window", default="day", choices=["hour", "day", "week", "month", "lifetime"]
    )
    token.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS")
    token.set_defaults(run=_token)

    prompt = command_parser(commands, "prompt", "run one streamed turn against a server")
    prompt.add_argument("message")
    prompt.add_argument("--url", default="ws://127.0.0.1:8765/ws")
    prompt.add_argument("--token", help="the end-user token (or CHUCKY_TOKEN)")
    prompt.add_argument("--model", default="claude-sonnet-5-5")
    prompt.set_defaults(run=lambda args: asyncio.run(_prompt(args)))

    chat = command_parser(
        commands,
        "chat",
        "chat with an agent in the terminal (without --url: the embedded local model); "
        "Ctrl-C interrupts a turn, Ctrl-D exits, /help lists the commands",
    )
    chat.add_argument("--url", help="a server's WebSocket URL (default: an embedded server)")
    chat.add_argument("--token", help="the end-user token, with --url (or CHUCKY_TOKEN)")
    chat.add_argument("--model", help="the model (default: claude-sonnet-5-5; embedded: local)")
    chat.add_argument("--system-prompt", metavar="TEXT")
    chat.add_argument("--model-path", metavar="GGUF", help="embedded: another local model file")
    chat.set_defaults(run=_chat)
    return parser


def _chat(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get("CHUCKY_TOKEN")
    if args.url is None and args.token:
        raise CommandError("--token needs --url (without --url, an embedded server)", EXIT_USAGE)
    if args.url is not None and not token:
        raise CommandError("--url needs --token (or CHUCKY_TOKEN)", EXIT_USAGE)
    if not sys.stdin.isatty():
        raise CommandError("needs a terminal (from a script, run turns with chucky prompt)")
    try:
        from .chat import ChatOptions, run_chat

        options = ChatOptions(args.url, token, args.model, args.system_prompt, args.model_path)
        return asyncio.run(run_chat(options))
    except ImportError as exc:
        extra = "chat" if exc.name and exc.name.startswith("prompt_toolkit") else "local"
        raise CommandError(f"needs pip install 'chucky[{extra}]' ({exc})") from exc


def _command(args: argparse.Namespace) -> str:
    action = getattr(args, "action", None)
    return f"chucky {args.command}" + (f" {action}" if action else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``chucky`` console script; returns the exit status.

    Expected failures print one line on stderr: 1 the command failed, 2 a usage error, 130
    interrupted (Ctrl-C).
    """
    try:
        args = _parser().parse_args(argv)
    except KeyboardInterrupt:
        print("chucky: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    command = _command(args)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CommandError as exc:
        print(f"{command}: {_one_line(exc.message)}", file=sys.stderr)
        return exc.status
    except ChuckyError as exc:
        print(f"{command}: {type(exc).__name__}: {_one_line(exc.message)}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # an address in use, a file that cannot be read: what was given
        print(f"{command}: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
