"""``chucky chat`` driven through a pseudo-terminal (pexpect), as a user types, against a
``chucky serve`` subprocess on the scripted model: streamed answers, tool calls shown, Ctrl-C
interrupting a turn (not the program), the commands, multi-line input, the history file and
Ctrl-D leaving with status 0.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from support.fake_server import Peer, fake_server
from support.serve import PROCESS_TIMEOUT, ServeProcess, chucky_env, serve_process, token_for
from support.timing import ticks

from chucky.chat import ChatCommand, parse_command, printable
from chucky.server.pricing import cost_microdollars, microdollars_to_usd, price_for

PROJECT = "chat-proj"
SECRET = "hk_live_" + "c4" * 16
PROMPT = "you>"  # prompt_toolkit draws the space as a cursor move
NEW_PROMPT = "\x1b[?2004h"
"""What prompt_toolkit writes first when it shows a new prompt (bracketed paste on), and never
while the user types."""
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")
EXPECT_TIMEOUT = PROCESS_TIMEOUT


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    data_dir = tmp_path_factory.mktemp("chat-serve")
    with serve_process("--project", f"{PROJECT}:{SECRET}", data_dir=data_dir) as process:
        yield process


def _spawn(served: ServeProcess, data_dir: Path, *args: str) -> pexpect.spawn:
    env = chucky_env(data_dir, {"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm", "NO_COLOR": "1"})
    token = token_for("chat-user", PROJECT, SECRET)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chucky.cli", "chat", "--url", served.url, "--token", token, *args],
        env=env,
        encoding="utf-8",
        timeout=EXPECT_TIMEOUT,
        dimensions=(40, 200),
    )
    child.expect_exact(PROMPT)
    return child


@pytest.fixture
def chat(served: ServeProcess, tmp_path: Path) -> Iterator[pexpect.spawn]:
    child = _spawn(served, tmp_path)
    try:
        yield child
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()


def _say(child: pexpect.spawn, line: str) -> str:
    """Type ``line`` and Enter; what was printed up to the next prompt."""
    child.send(line + "\r")
    return _next_prompt(child)


def _next_prompt(child: pexpect.spawn) -> str:
    """Wait for a new prompt; what was printed before it."""
    child.expect_exact(NEW_PROMPT)
    before = _plain(child.before)
    child.expect_exact(PROMPT)
    return before


def _plain(text: object) -> str:
    """What the terminal shows, without escape sequences."""
    return _ANSI.sub("", str(text))


def _exit_status(child: pexpect.spawn) -> int:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return int(child.exitstatus)


def test_a_streamed_answer_and_ctrl_d_exits_with_0(chat: pexpect.spawn) -> None:
    out = _say(chat, "stream 3")
    assert "00 01 02" in out
    out = _say(chat, "echo hi there")
    assert re.search(r"\r\nhi there\r\n", out), out
    assert _exit_status(chat) == 0


def test_a_tool_call_and_its_result_are_shown(chat: pexpect.spawn) -> None:
    # chucky chat offers no tools: the server answers the call with an error result, and the
    # scripted model then says what the tool returned.
    out = _say(chat, 'call get_time {"tz": "UTC"}')
    assert '[tool] get_time {"tz": "UTC"}' in out
    assert "[tool error] Unknown tool: get_time. Available tools: none" in out
    assert "tool get_time returned: Unknown tool: get_time" in out


def test_ctrl_c_interrupts_the_turn_not_the_program(chat: pexpect.spawn) -> None:
    chat.send("sleep 10; echo late\r")
    time.sleep(ticks(10))  # the turn is running
    started = time.monotonic()
    chat.sendintr()
    out = _next_prompt(chat)
    assert time.monotonic() - started < 5, "the prompt came back only when the turn ended"
    assert "[interrupted]" in out
    assert not re.search(r"\nlate\r\n", out), out  # the answer never came
    assert chat.isalive()
    # The conversation goes on in the same session.
    out = _say(chat, "echo after")
    assert "after" in out
    assert _exit_status(chat) == 0


def test_cost_counts_every_turn(chat: pexpect.spawn) -> None:
    assert "[spent $0.000000 in 0 turn(s): 0 input tokens, 0 output tokens]" in _say(chat, "/cost")
    _say(chat, "echo hi")  # 2 input tokens, 1 output token
    _say(chat, "echo hi")  # the transcript too: 4 input tokens
    price = price_for("claude-sonnet-5-5")
    spent = sum(
        microdollars_to_usd(cost_microdollars({"input_tokens": n, "output_tokens": 1}, price))
        for n in (2, 4)
    )
    assert spent > 0
    out = _say(chat, "/cost")
    assert f"[spent ${spent:.6f} in 2 turn(s): 6 input tokens, 2 output tokens]" in out


def test_reset_starts_a_new_session(chat: pexpect.spawn) -> None:
    assert "[no session yet" in _say(chat, "/session")
    _say(chat, "echo first")
    first = re.search(r"\[session (\S+), model", _say(chat, "/session"))
    assert first is not None
    assert "echo first" in _say(chat, "recall")  # the first message of this session
    assert "[new session]" in _say(chat, "/reset")
    assert "second echo second; recall" in _say(chat, "echo second; recall")
    second = re.search(r"\[session (\S+), model", _say(chat, "/session"))
    assert second is not None
    assert second.group(1) != first.group(1)


def test_model_switches_and_the_conversation_goes_on(chat: pexpect.spawn) -> None:
    _say(chat, "echo first")
    before = _say(chat, "/session")
    assert "model claude-sonnet-5-5]" in before
    assert "[model other-model: the next turns use it]" in _say(chat, "/model other-model")
    assert "echo first" in _say(chat, "recall")  # same conversation
    after = _say(chat, "/session")
    assert "model other-model]" in after
    assert before.split(",")[0] == after.split(",")[0]  # the same session id


def test_multi_line_input(chat: pexpect.spawn) -> None:
    chat.send("echo one\x1b\r")  # Alt-Enter: a new line
    chat.send("two\\\r")  # a trailing backslash: a new line
    out = _say(chat, "three")
    assert re.search(r"one\r\ntwo\r\nthree", out), out


def test_exit_command_and_the_history_file(served: ServeProcess, tmp_path: Path) -> None:
    child = _spawn(served, tmp_path)
    _say(child, "echo remembered")
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "+echo remembered" in (tmp_path / "chat_history").read_text(encoding="utf-8")
    # The next chat recalls it with the Up arrow.
    child = _spawn(served, tmp_path)
    assert "remembered\r\n" in _say(child, "\x1b[A\x1b[A")  # /exit, then the echo
    assert _exit_status(child) == 0


def test_a_refused_token_is_one_line_and_status_1(served: ServeProcess, tmp_path: Path) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "chucky.cli", "chat", "--url", served.url, "--token", "not-a-token"],
        env=chucky_env(tmp_path, {"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}),
        encoding="utf-8",
        timeout=EXPECT_TIMEOUT,
    )
    child.expect_exact(PROMPT)
    child.send("echo hi\r")
    child.expect_exact("chucky chat: AuthenticationError: ")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "ws://127.0.0.1:9/ws"], "chucky chat: --url needs --token (or CHUCKY_TOKEN)"),
        (["--token", "t"], "chucky chat: --token needs --url (without --url, an embedded server)"),
    ],
)
def test_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chucky.cli", "chat", *args],
        capture_output=True,
        text=True,
        env=chucky_env(tmp_path),
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == message + "\n"


def test_parse_command() -> None:
    assert parse_command("/cost") == ChatCommand("/cost")
    assert parse_command("  /model  other one ") == ChatCommand("/model", "other one")
    assert parse_command("/ 2") is None
    assert parse_command("//reset") is None
    assert parse_command("echo /reset") is None


def test_printable_drops_escape_sequences() -> None:
    assert printable("a\x1b[2Jb\x07c\nd\te") == "a[2Jbc\nd\te"


def _run_cli(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=chucky_env(tmp_path),
        stdin=subprocess.DEVNULL,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )


def _run_in_terminal(tmp_path: Path, *args: str) -> tuple[int, str]:
    """Run ``python ARGS`` in a pseudo-terminal to its end: its exit status and output."""
    child = pexpect.spawn(
        sys.executable,
        list(args),
        env=chucky_env(tmp_path, {"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"}),
        encoding="utf-8",
        timeout=EXPECT_TIMEOUT,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return child.exitstatus, _plain(child.before)


def test_without_prompt_toolkit_one_line_says_what_to_install(tmp_path: Path) -> None:
    status, out = _run_in_terminal(
        tmp_path,
        "-c",
        "import sys; sys.modules['prompt_toolkit'] = None\n"
        "from chucky.cli import main\n"
        "sys.exit(main(['chat', '--url', 'ws://127.0.0.1:9/ws', '--token', 't']))",
    )
    assert status == 1
    assert out.startswith("chucky chat: needs pip install 'chucky[chat]' (")
    assert len(out.splitlines()) == 1, out


def test_embedded_without_the_model_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    status, out = _run_in_terminal(
        tmp_path, "-m", "chucky.cli", "chat", "--model-path", str(missing)
    )
    assert status == 1
    assert out == f"chucky chat: ProviderError: model file not found: {missing}\r\n"


def test_without_a_terminal_one_line_and_status_1(tmp_path: Path) -> None:
    done = _run_cli(
        tmp_path,
        "import sys\nfrom chucky.cli import main\nsys.exit(main(['chat']))",
    )
    assert done.returncode == 1
    assert done.stderr == (
        "chucky chat: needs a terminal (from a script, run turns with chucky prompt)\n"
    )


async def test_a_second_ctrl_c_stops_waiting_for_a_server_that_does_not_end_the_turn(
    tmp_path: Path,
) -> None:
    interrupts: list[dict[str, object]] = []

    async def deaf_to_interrupts(peer: Peer) -> None:
        await peer.handshake()
        await peer.recv_type("user")
        await peer.assistant("working on it")
        interrupts.append(await peer.recv(within=EXPECT_TIMEOUT))
        await peer.recv(within=EXPECT_TIMEOUT)  # nothing more: it waits for the client to go

    async with fake_server(deaf_to_interrupts) as server:
        env = chucky_env(tmp_path, {"PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm"})
        child = pexpect.spawn(
            sys.executable,
            ["-m", "chucky.cli", "chat", "--url", server.url, "--token", "a.b.c"],
            env=env,
            encoding="utf-8",
            timeout=EXPECT_TIMEOUT,
        )
        try:
            await asyncio.to_thread(child.expect_exact, PROMPT)
            child.send("hello\r")
            await asyncio.to_thread(child.expect_exact, "working on it")
            child.sendintr()
            await asyncio.to_thread(child.expect_exact, "[interrupting: Ctrl-C again")
            child.sendintr()
            out = await asyncio.to_thread(_next_prompt, child)
            assert "[stopped waiting for the turn]" in out
            assert interrupts == [{"type": "control", "payload": {"action": "interrupt"}}]
            child.sendcontrol("d")
            await asyncio.to_thread(child.expect, pexpect.EOF)
        finally:
            child.close(force=True)
        assert child.exitstatus == 0
