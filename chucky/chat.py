"""``chucky chat``: an interactive chat with an agent, in a terminal.

``chucky chat --url URL --token TOKEN`` talks to a server; ``chucky chat`` alone starts an
embedded server on the local model first, as ``chucky demo`` does (no key, no network).

Theory of operation
-------------------

One :class:`ChatRepl` holds one :class:`~chucky.client.Session`: every message is a turn of the
same conversation, streamed with ``include_partial_messages`` so text is printed as it arrives.
The tool calls of a turn and their results are printed on lines of their own. Input comes from
prompt_toolkit (editing, multi-line input, a history file); what the agent says is written to
the terminal as plain text, with control characters removed.

Keys: Enter sends; Alt-Enter (or Esc then Enter), or a line ending with ``\\``, starts a new
line. Ctrl-C at the prompt clears the line; during a turn it interrupts the turn (the server
ends it with an ``error_during_execution`` result) and the prompt comes back; a second Ctrl-C
stops waiting for that result. Ctrl-D at an empty prompt exits with status 0.

Commands (:data:`COMMANDS`): ``/reset`` starts a new session, ``/session`` shows its id and
model, ``/cost`` what this chat has spent, ``/model NAME`` switches model (the conversation
goes on), ``/help``, ``/exit``.

The input history is kept in ``chat_history`` in ``$CHUCKY_DATA_DIR``, else in the user's data
directory (``~/.local/share/chucky`` on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from .client import Chucky, Session
from .client.settings import DEFAULT_MODEL
from .errors import AuthenticationError, ChuckyError, ProviderError
from .messages import (
    AssistantMessage,
    ErrorMessage,
    ResultMessage,
    StreamEventMessage,
    SystemMessage,
    ToolResultBlock,
    UserMessage,
)

if TYPE_CHECKING:
    from prompt_toolkit import PromptSession

__all__ = ["COMMANDS", "ChatCommand", "ChatOptions", "ChatRepl", "history_path", "parse_command"]

COMMANDS: Final[dict[str, str]] = {
    "/reset": "start a new session (a new conversation)",
    "/session": "show the session id and its model",
    "/cost": "show what this chat has spent so far",
    "/model": "/model NAME: the next turns use NAME (the conversation goes on)",
    "/help": "show these commands",
    "/exit": "leave (as Ctrl-D does)",
}
"""The chat's commands and what they do."""

_TOOL_TEXT_LIMIT = 200
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class ChatCommand:
    """A command line typed at the prompt: its name (``/cost``) and argument (may be empty)."""

    name: str
    argument: str = ""


def parse_command(line: str) -> ChatCommand | None:
    """The command ``line`` is, or ``None`` for a message to the agent.

    A command is a line starting with ``/`` followed by a letter; ``//text`` sends ``/text``.
    """
    text = line.strip()
    if not re.match(r"/[A-Za-z]", text):
        return None
    name, _, argument = text.partition(" ")
    return ChatCommand(name.lower(), argument.strip())


def printable(text: str) -> str:
    """``text`` without control characters but newlines and tabs (no escape sequence from a
    model reaches the terminal)."""
    return _CONTROL.sub("", text)


def history_path() -> Path:
    """The input history file: ``chat_history`` in ``$CHUCKY_DATA_DIR``, else in the user's
    data directory."""
    configured = os.environ.get("CHUCKY_DATA_DIR")
    if configured:
        return Path(configured) / "chat_history"
    import platformdirs

    return Path(platformdirs.user_data_dir("chucky")) / "chat_history"


@dataclass(frozen=True, slots=True)
class ChatOptions:
    """What ``chucky chat`` talks to.

    Attributes:
        url: The server's WebSocket URL (``None``: an embedded server on the local model).
        token: The end-user token (required with ``url``).
        model: The model of the session.
        system_prompt: The session's system prompt.
        model_path: With the embedded server, a GGUF file to run instead of the default model.
    """

    url: str | None = None
    token: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    model_path: str | None = None


class ChatRepl:
    """The read-eval-print loop of ``chucky chat`` over one client.

    Args:
        client: The client (its defaults are the session's options).
        model: The session's model.
        out: Where the conversation is printed.
    """

    def __init__(self, client: Chucky, model: str, out: TextIO | None = None) -> None:
        self._client = client
        self._model = model
        self._out = out or sys.stdout
        self._session: Session | None = None
        self._server_model: str | None = None
        self._cost = 0.0
        self._turns = 0
        self._input_tokens = 0
        self._output_tokens = 0
        self._interrupts = 0

    @property
    def session_id(self) -> str | None:
        """The current session's id (``None`` before its first turn)."""
        return self._session.session_id if self._session is not None else None

    @property
    def total_cost_usd(self) -> float:
        """What the turns of this chat have cost, in USD."""
        return self._cost

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _new_session(self, session_id: str | None = None) -> Session:
        if session_id is None:
            return self._client.create_session(model=self._model, include_partial_messages=True)
        return self._client.resume_session(
            session_id, model=self._model, include_partial_messages=True
        )

    async def _drop_session(self, *, keep: bool) -> None:
        """Close the session; with ``keep``, the next turn resumes the same conversation."""
        session, self._session = self._session, None
        if session is None:
            return
        session_id = session.session_id
        with contextlib.suppress(ChuckyError):
            await session.close()
        if keep and session_id:
            self._session = self._new_session(session_id)

    async def run(self, prompt: PromptSession[str]) -> int:
        """Read messages and commands until ``/exit`` or Ctrl-D; the exit status (0)."""
        self._say("chucky chat: Enter sends, Alt-Enter adds a line, /help lists the commands")
        try:
            while True:
                try:
                    line = await prompt.prompt_async()
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt clears the line
                except EOFError:
                    return 0
                command = parse_command(line)
                if command is not None:
                    if await self._command(command):
                        return 0
                elif line.strip():
                    await self._turn(line[1:] if line.startswith("//") else line)
        finally:
            await self._drop_session(keep=False)

    async def _command(self, command: ChatCommand) -> bool:
        """Run ``command``; ``True`` to leave."""
        name = command.name
        if name == "/exit":
            return True
        if name == "/help":
            for key, what in COMMANDS.items():
                self._say(f"  {key:<9} {what}")
        elif name == "/reset":
            await self._drop_session(keep=False)
            self._server_model = None
            self._say("[new session]")
        elif name == "/session":
            if self.session_id is None:
                self._say(f"[no session yet: it starts with the next message; model {self._model}]")
            else:
                model = self._server_model or self._model
                self._say(f"[session {self.session_id}, model {model}]")
        elif name == "/cost":
            self._say(
                f"[spent ${self._cost:.6f} in {self._turns} turn(s): "
                f"{self._input_tokens} input tokens, {self._output_tokens} output tokens]"
            )
        elif name == "/model":
            if not command.argument:
                self._say(f"[model {self._model}]")
            else:
                self._model = command.argument
                await self._drop_session(keep=True)
                self._say(f"[model {self._model}: the next turns use it]")
        else:
            self._say(f"[unknown command {name}: /help lists the commands]")
        return False

    async def _turn(self, text: str) -> None:
        """Send ``text`` and print the turn; Ctrl-C interrupts it."""
        if self._session is None:
            self._session = self._new_session()
        session = self._session
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(self._run_turn(session, text))
        interrupting: set[asyncio.Task[None]] = set()
        self._interrupts = 0

        def on_sigint() -> None:
            self._interrupts += 1
            if self._interrupts == 1:
                self._say("\n[interrupting: Ctrl-C again stops waiting]")
                interrupting.add(loop.create_task(_quietly(session.interrupt)))
            else:
                task.cancel()

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        try:
            await asyncio.wait({task})
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            for sending in interrupting:
                sending.cancel()
            await asyncio.gather(*interrupting, return_exceptions=True)
        if task.cancelled():
            self._say("\n[stopped waiting for the turn]")
            await self._drop_session(keep=True)
            return
        try:
            task.result()
        except AuthenticationError:
            raise
        except ChuckyError as exc:
            self._say(f"\n[error] {type(exc).__name__}: {printable(exc.message)}")
            await self._drop_session(keep=True)

    async def _run_turn(self, session: Session, text: str) -> None:
        await session.send(text)
        open_text = False  # text printed on the current line
        streamed = False  # text deltas printed for the current assistant message
        async for message in session.stream():
            if isinstance(message, StreamEventMessage):
                delta = message.text_delta
                if delta:
                    self._out.write(printable(delta))
                    self._out.flush()
                    open_text = streamed = True
            elif isinstance(message, AssistantMessage):
                if message.text and not streamed:
                    self._out.write(printable(message.text))
                    open_text = True
                streamed = False
                for block in message.tool_uses:
                    if open_text:
                        self._say("")
                        open_text = False
                    self._say(f"[tool] {block.name} {_clip(json.dumps(block.input))}")
            elif isinstance(message, UserMessage):
                for result in _tool_results(message):
                    if open_text:
                        self._say("")
                        open_text = False
                    self._say(result)
            elif isinstance(message, SystemMessage):
                self._server_model = message.model or self._server_model
            elif isinstance(message, ResultMessage):
                if open_text:
                    self._say("")
                self._account(message)
            elif isinstance(message, ErrorMessage):
                raise message.exception

    def _account(self, result: ResultMessage) -> None:
        self._turns += 1
        self._cost += result.total_cost_usd
        self._input_tokens += result.usage.input_tokens
        self._output_tokens += result.usage.output_tokens
        if result.subtype == "error_during_execution" and self._interrupts:
            self._say("[interrupted]")
        elif result.subtype != "success":
            errors = "; ".join(result.errors or [])
            self._say(f"[{result.subtype}{': ' + printable(errors) if errors else ''}]")


def _clip(text: str) -> str:
    text = printable(text).replace("\n", " ")
    if len(text) > _TOOL_TEXT_LIMIT:
        return text[: _TOOL_TEXT_LIMIT - 3] + "..."
    return text


def _tool_results(message: UserMessage) -> list[str]:
    content = message.message.content
    if isinstance(content, str):
        return []
    lines = []
    for block in content:
        if isinstance(block, ToolResultBlock):
            value = block.content
            if isinstance(value, list):
                value = "".join(str(item.get("text", "")) for item in value)
            label = "[tool error]" if block.is_error else "[tool result]"
            lines.append(f"{label} {_clip(value or '')}")
    return lines


async def _quietly(action: Callable[[], Any]) -> None:
    with contextlib.suppress(ChuckyError):
        await action()


def _prompt_session() -> PromptSession[str]:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

    keys = KeyBindings()

    @keys.add("enter")
    def _enter(event: KeyPressEvent) -> None:
        buffer = event.current_buffer
        if buffer.text.endswith("\\") and buffer.cursor_position == len(buffer.text):
            buffer.delete_before_cursor(1)
            buffer.insert_text("\n")
        else:
            buffer.validate_and_handle()

    @keys.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    path = history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return PromptSession(
        "you> ",
        multiline=True,
        key_bindings=keys,
        history=FileHistory(str(path)),
        prompt_continuation="...  ",
    )


@contextlib.asynccontextmanager
async def _embedded(options: ChatOptions, out: TextIO) -> AsyncIterator[tuple[str, str]]:
    """An in-process server on the local model, as ``chucky demo`` runs: its URL and a token."""
    from .demo import _load_with_progress
    from .server.app import ChuckyServer
    from .server.config import ServerConfig
    from .server.providers.llamacpp import LlamaCppProvider, default_model_path
    from .server.routing import LOCAL_REPEAT_PENALTY, ModelRouter
    from .tokens import create_budget, create_token

    path = Path(options.model_path) if options.model_path else default_model_path()
    if not path.is_file():
        raise ProviderError(
            f"model file not found: {path}",
            details={"kind": "model_missing", "retryable": False},
        )
    # A 135M model loops on a phrase without a repetition penalty.
    provider = LlamaCppProvider(model_path=str(path), repeat_penalty=LOCAL_REPEAT_PENALTY)
    secret = f"hk_live_{secrets.token_hex(16)}"
    with tempfile.TemporaryDirectory(prefix="chucky-chat-") as data:
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            projects={"chat": [secret]},
            database_url=f"sqlite+aiosqlite:///{Path(data) / 'chat.db'}",
        )
        async with ChuckyServer(
            config, router=ModelRouter(provider, price_model="local")
        ) as server:
            await _load_with_progress(provider, path, out)
            budget = create_budget(ai_dollars=1.0, compute_hours=1.0, window="day")
            yield server.url, create_token("chat-user", "chat", secret, budget, expires_in=86400)


async def run_chat(options: ChatOptions, out: TextIO | None = None) -> int:
    """Run ``chucky chat`` on the terminal; the exit status (0 on ``/exit`` or Ctrl-D).

    Raises:
        ImportError: prompt_toolkit is missing (``pip install 'chucky[chat]'``), or with no
            ``url`` the local model's packages (``pip install 'chucky[local]'``).
        AuthenticationError: the server refused the token.
        ProviderError: with no ``url``, the local model file is missing.
    """
    out = out or sys.stdout
    prompt = _prompt_session()
    async with contextlib.AsyncExitStack() as stack:
        url: str
        token: str | None
        if options.url is None:
            url, token = await stack.enter_async_context(_embedded(options, out))
            model = options.model or "local"
        else:
            url, token = options.url, options.token
            model = options.model or DEFAULT_MODEL
        client = await stack.enter_async_context(
            Chucky(token, url, model=model, system_prompt=options.system_prompt)
        )
        return await ChatRepl(client, model, out).run(prompt)
    raise AssertionError("unreachable")  # pragma: no cover - the with block returns
