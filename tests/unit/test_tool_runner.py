"""The ToolRunner: concurrency, exactly-once answers, errors, timeouts and shutdown (no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from typing import Any

import pytest

from chucky.tool_runner import ToolRunner
from chucky.tools import ToolRegistry, ToolResult, create_mcp_server, tool

# Time-based waits are multiples of this, stretched on slow machines.
TICK = 0.05 * float(os.environ.get("CHUCKY_TEST_TIME_SCALE", "1"))
PATIENCE = 200 * TICK  # upper bound for things that should happen "soon"


class Outbox:
    """Collects ``send_result`` calls; can be told to fail or to hang."""

    def __init__(self) -> None:
        self.results: dict[str, ToolResult] = {}
        self.calls: list[str] = []
        self.fail = False
        self.hang: asyncio.Event | None = None
        self.sending = asyncio.Event()

    async def send(self, call_id: str, result: ToolResult) -> None:
        self.calls.append(call_id)
        self.sending.set()
        if self.hang is not None:
            await self.hang.wait()
        if self.fail:
            raise ConnectionError("socket closed")
        self.results[call_id] = result


def _runner(*tools: Any, timeout: float | None = 60.0) -> tuple[ToolRunner, Outbox]:
    outbox = Outbox()
    registry = ToolRegistry.build(list(tools), None)
    return ToolRunner(registry, outbox.send, timeout=timeout), outbox


async def _settle(runner: ToolRunner) -> None:
    async with asyncio.timeout(PATIENCE):
        await runner.wait_idle()


def _other_tasks() -> set[asyncio.Task[Any]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


@tool("echo", "Echo")
async def echo(text: str) -> str:
    return text


@tool("add", "Add")
def add(a: float, b: float) -> float:
    return a + b


async def test_simple_call_is_answered() -> None:
    runner, outbox = _runner(echo, add)
    runner.submit("c1", "echo", {"text": "hi"})
    runner.submit("c2", "add", {"a": 1, "b": 2})
    runner.submit("c3", "mcp__inline-tools__echo", {"text": "full"})
    await _settle(runner)
    assert outbox.results["c1"].to_wire() == {
        "content": [{"type": "text", "text": "hi"}],
        "isError": False,
    }
    assert outbox.results["c2"].text == "3.0"
    assert outbox.results["c3"].text == "full"
    assert runner.pending == 0


async def test_submit_returns_at_once_and_calls_run_concurrently() -> None:
    started = {"a": asyncio.Event(), "b": asyncio.Event()}

    @tool("wait_for_other", "d")
    async def wait_for_other(me: str, other: str) -> str:
        started[me].set()
        await started[other].wait()  # deadlocks unless both calls are in flight together
        return me

    runner, outbox = _runner(wait_for_other)
    runner.submit("a", "wait_for_other", {"me": "a", "other": "b"})
    runner.submit("b", "wait_for_other", {"me": "b", "other": "a"})
    assert runner.pending == 2  # both merely scheduled: submit never waits for a handler
    await _settle(runner)
    assert {k: r.text for k, r in outbox.results.items()} == {"a": "a", "b": "b"}


async def test_sync_handlers_run_concurrently_in_threads() -> None:
    barrier = threading.Barrier(2, timeout=PATIENCE)
    loop_thread = threading.get_ident()

    @tool("slow", "d")
    def slow(n: int) -> bool:
        barrier.wait()  # raises BrokenBarrierError unless both run at the same time
        return threading.get_ident() != loop_thread

    runner, outbox = _runner(slow)
    loop = asyncio.get_running_loop()
    before = loop.time()
    runner.submit("1", "slow", {"n": 1})
    runner.submit("2", "slow", {"n": 2})
    await _settle(runner)
    assert [outbox.results[k].to_wire() for k in ("1", "2")] == [
        {"content": [{"type": "text", "text": "true"}], "isError": False}
    ] * 2
    assert loop.time() - before < PATIENCE


async def test_unknown_tool_lists_available_tools() -> None:
    runner, outbox = _runner(echo, add)
    runner.submit("c", "nope", {})
    await _settle(runner)
    result = outbox.results["c"]
    assert result.is_error
    assert result.text == "Unknown tool 'nope'. Available tools: echo, add"


async def test_unknown_tool_with_empty_registry() -> None:
    runner, outbox = _runner()
    runner.submit("c", "x", {})
    await _settle(runner)
    assert outbox.results["c"].text == "Unknown tool 'x'. Available tools: none"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([1, 2], "Invalid arguments for tool 'add': expected an object, got list"),
        ("a=1", "Invalid arguments for tool 'add': expected an object, got str"),
        ({"a": 1}, "Invalid arguments for tool 'add': missing required argument 'b'"),
        (
            {"a": 1, "b": "two"},
            "Invalid arguments for tool 'add': b: Input should be a valid number",
        ),
    ],
)
async def test_invalid_arguments_name_the_problem(arguments: Any, message: str) -> None:
    runner, outbox = _runner(add)
    runner.submit("c", "add", arguments)
    await _settle(runner)
    assert outbox.results["c"].is_error
    assert outbox.results["c"].text.startswith(message)


async def test_missing_input_counts_as_empty_object() -> None:
    @tool("now", "d")
    async def now() -> str:
        return "noon"

    runner, outbox = _runner(now)
    runner.submit("c", "now", None)
    await _settle(runner)
    assert outbox.results["c"].text == "noon"


async def test_handler_exception_becomes_error_result_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @tool("boom", "d")
    def boom() -> None:
        raise ValueError("kaput")

    caplog.set_level(logging.WARNING, logger="chucky.client.tools")
    runner, outbox = _runner(boom)
    runner.submit("c", "boom", {})
    await _settle(runner)
    assert outbox.results["c"].is_error
    assert outbox.results["c"].text == "Tool 'boom' failed: ValueError: kaput"
    [record] = [r for r in caplog.records if r.name == "chucky.client.tools"]
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError


async def test_async_handler_timeout_cancels_it() -> None:
    cancelled = asyncio.Event()

    @tool("stuck", "d")
    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    runner, outbox = _runner(stuck, timeout=TICK)
    runner.submit("c", "stuck", {})
    await _settle(runner)
    assert outbox.results["c"].is_error
    assert outbox.results["c"].text == f"Tool 'stuck' timed out after {TICK:g} s"
    assert cancelled.is_set()


async def test_sync_handler_timeout_answers_while_the_thread_runs_on() -> None:
    release = threading.Event()
    finished = threading.Event()

    @tool("blocking", "d")
    def blocking() -> str:
        release.wait(PATIENCE)
        finished.set()
        return "late"

    runner, outbox = _runner(blocking, timeout=TICK)
    runner.submit("c", "blocking", {})
    await _settle(runner)
    assert outbox.results["c"].text.startswith("Tool 'blocking' timed out")
    assert not finished.is_set()  # threads cannot be killed; the late value is discarded
    release.set()
    await asyncio.to_thread(finished.wait, PATIENCE)
    assert outbox.calls == ["c"]


async def test_handler_raising_timeout_error_itself_is_a_failure_not_a_timeout() -> None:
    @tool("own_timeout", "d")
    async def own_timeout() -> None:
        raise TimeoutError("upstream API timed out")

    runner, outbox = _runner(own_timeout, timeout=PATIENCE)
    runner.submit("c", "own_timeout", {})
    await _settle(runner)
    assert (
        outbox.results["c"].text
        == "Tool 'own_timeout' failed: TimeoutError: upstream API timed out"
    )


async def test_handler_raising_cancelled_error_itself_is_answered() -> None:
    @tool("odd", "d")
    async def odd() -> None:
        raise asyncio.CancelledError

    runner, outbox = _runner(odd)
    runner.submit("c", "odd", {})
    await _settle(runner)
    assert outbox.results["c"].is_error
    assert "CancelledError" in outbox.results["c"].text


async def test_no_timeout() -> None:
    runner, outbox = _runner(echo, timeout=None)
    runner.submit("c", "echo", {"text": "x"})
    await _settle(runner)
    assert outbox.results["c"].text == "x"


async def test_send_failure_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chucky.client.tools")
    runner, outbox = _runner(echo)
    outbox.fail = True
    runner.submit("c", "echo", {"text": "x"})
    await _settle(runner)
    assert outbox.calls == ["c"]
    assert runner.pending == 0
    assert any(r.levelno == logging.DEBUG and "c" in r.getMessage() for r in caplog.records)
    assert not _other_tasks()
    outbox.fail = False
    runner.submit("d", "echo", {"text": "still works"})
    await _settle(runner)
    assert outbox.results["d"].text == "still works"


async def test_every_call_is_answered_exactly_once() -> None:
    @tool("flaky", "d")
    async def flaky(n: int) -> str:
        await asyncio.sleep(0)
        if n % 3 == 0:
            raise RuntimeError(str(n))
        return str(n)

    runner, outbox = _runner(flaky, echo)
    expected = []
    for n in range(30):
        call_id = f"call-{n}"
        expected.append(call_id)
        if n % 5 == 0:
            runner.submit(call_id, "missing", {})
        elif n % 7 == 0:
            runner.submit(call_id, "flaky", {"n": "not a number"})
        else:
            runner.submit(call_id, "flaky", {"n": n})
    await _settle(runner)
    assert sorted(outbox.calls) == sorted(expected)
    assert outbox.results["call-1"].text == "1"
    assert outbox.results["call-3"].is_error


async def test_aclose_cancels_in_flight_calls_and_leaves_no_task() -> None:
    cancelled: list[str] = []
    entered = asyncio.Event()

    @tool("forever", "d")
    async def forever(name: str) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    runner, outbox = _runner(forever)
    runner.submit("a", "forever", {"name": "a"})
    runner.submit("b", "forever", {"name": "b"})
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
    assert runner.pending == 2
    async with asyncio.timeout(PATIENCE):
        await runner.aclose()
    assert sorted(cancelled) == ["a", "b"]
    assert runner.pending == 0
    assert not _other_tasks()
    assert outbox.calls == []  # cancelled calls are not answered: the session is going away
    await runner.aclose()  # idempotent
    runner.submit("late", "forever", {"name": "late"})  # dropped after close
    assert runner.pending == 0
    assert not _other_tasks()


async def test_aclose_cancels_a_hanging_send() -> None:
    runner, outbox = _runner(echo)
    outbox.hang = asyncio.Event()
    runner.submit("c", "echo", {"text": "x"})
    async with asyncio.timeout(PATIENCE):
        await outbox.sending.wait()
    async with asyncio.timeout(PATIENCE):
        await runner.aclose()
    assert not _other_tasks()


async def test_aclose_finishes_cleanup_even_if_its_caller_is_cancelled() -> None:
    release = asyncio.Event()
    done = asyncio.Event()

    @tool("slow_to_die", "d")
    async def slow_to_die() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # cleanup that takes a while
            done.set()
            raise

    runner, _ = _runner(slow_to_die)
    runner.submit("c", "slow_to_die", {})
    await asyncio.sleep(0)
    closer = asyncio.create_task(runner.aclose())
    await asyncio.sleep(0)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    release.set()
    async with asyncio.timeout(PATIENCE):
        await runner.wait_idle()
    assert done.is_set()
    assert not _other_tasks()


async def test_tools_from_servers_run_by_bare_and_full_name() -> None:
    registry = ToolRegistry.build(None, {"calc": create_mcp_server("calculator", [add])})
    outbox = Outbox()
    runner = ToolRunner(registry, outbox.send)
    runner.submit("1", "add", {"a": 1, "b": 1})
    runner.submit("2", "mcp__calc__add", {"a": 2, "b": 2})
    await _settle(runner)
    assert (outbox.results["1"].text, outbox.results["2"].text) == ("2.0", "4.0")


async def test_execute_directly() -> None:
    runner, _ = _runner(echo)
    assert (await runner.execute("echo", {"text": "direct"})).text == "direct"
    assert (await runner.execute("nope", {})).is_error


# --- cancellation: the server abandoned the call ------------------------------------------------


def _waiting_tool(
    entered: asyncio.Event, finally_ran: list[str], seen: list[BaseException] | None = None
) -> Any:
    @tool("wait", "Waits for an event that never fires")
    async def wait(name: str) -> str:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            if seen is not None:
                seen.append(exc)
            raise
        finally:
            finally_ran.append(name)
        return "never"  # pragma: no cover

    return wait


async def test_cancel_stops_an_async_handler_and_sends_nothing() -> None:
    entered = asyncio.Event()
    finally_ran: list[str] = []
    seen: list[BaseException] = []
    runner, outbox = _runner(_waiting_tool(entered, finally_ran, seen), echo)
    runner.submit("c1", "wait", {"name": "c1"})
    runner.submit("c2", "echo", {"text": "other"})
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
    assert runner.running == ["c1"]
    assert runner.cancel("c1", reason="interrupted") is True
    assert runner.running == []
    await _settle(runner)
    assert finally_ran == ["c1"]
    assert seen[0].args == ("tool call c1 abandoned: interrupted",)
    assert outbox.calls == ["c2"]  # no result for the cancelled call; the other one answered
    assert runner.pending == 0
    assert not _other_tasks()
    runner.submit("c3", "echo", {"text": "later"})  # the runner goes on
    await _settle(runner)
    assert outbox.results["c3"].text == "later"


async def test_cancel_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chucky.client.tools")
    entered = asyncio.Event()
    runner, _ = _runner(_waiting_tool(entered, []))
    runner.submit("c1", "wait", {"name": "c1"})
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
    runner.cancel("c1", reason="timeout")
    await _settle(runner)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "Cancelled tool call c1 (wait): timeout"
    ]


async def test_cancel_of_an_unknown_call_does_nothing() -> None:
    entered = asyncio.Event()
    finally_ran: list[str] = []
    runner, outbox = _runner(_waiting_tool(entered, finally_ran))
    assert runner.cancel("nobody") is False  # nothing in flight at all
    runner.submit("c1", "wait", {"name": "c1"})
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
    assert runner.cancel("nobody") is False
    assert runner.cancel_all() == ["c1"]
    await _settle(runner)
    assert finally_ran == ["c1"]
    assert outbox.calls == []


async def test_cancel_of_a_finished_call_does_nothing() -> None:
    runner, outbox = _runner(echo)
    runner.submit("c", "echo", {"text": "x"})
    await _settle(runner)
    assert runner.cancel("c") is False
    assert runner.cancel_all() == []
    assert outbox.calls == ["c"]


async def test_cancel_of_a_call_sending_its_result_does_not_stop_the_send() -> None:
    """The handler just finished and its result is on its way when the cancel arrives."""
    runner, outbox = _runner(echo)
    outbox.hang = asyncio.Event()
    runner.submit("c", "echo", {"text": "x"})
    async with asyncio.timeout(PATIENCE):
        await outbox.sending.wait()
    assert runner.pending == 1
    assert runner.running == []
    assert runner.cancel("c", reason="timeout") is False
    assert runner.cancel_all(reason="turn_ended") == []
    outbox.hang.set()
    await _settle(runner)
    assert outbox.calls == ["c"]  # exactly one result
    assert outbox.results["c"].text == "x"


async def test_cancel_before_the_handler_started_runs_nothing_and_sends_nothing() -> None:
    started: list[str] = []

    @tool("note", "d")
    async def note() -> str:
        started.append("ran")
        return "ran"

    runner, outbox = _runner(note)
    runner.submit("c", "note", {})
    assert runner.cancel("c") is True  # same loop iteration: the task has not run yet
    await _settle(runner)
    assert started == []
    assert outbox.calls == []


async def test_cancel_in_the_same_iteration_as_the_handler_wakes_up() -> None:
    """The handler's event fired, but the cancel reaches the task before it resumes: the call
    was still running, so it is cancelled, and nothing is sent (exactly none, never two)."""
    release = asyncio.Event()
    finally_ran: list[str] = []

    @tool("racy", "d")
    async def racy() -> str:
        try:
            await release.wait()
            return "done"
        finally:
            finally_ran.append("racy")

    runner, outbox = _runner(racy)
    runner.submit("c", "racy", {})
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    release.set()
    assert runner.cancel("c") is True
    await _settle(runner)
    assert finally_ran == ["racy"]
    assert outbox.calls == []


async def test_cancel_of_a_sync_handler_returns_at_once_and_discards_its_value() -> None:
    entered = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    @tool("blocking", "d")
    def blocking() -> str:
        entered.set()
        release.wait(PATIENCE)
        finished.set()
        return "late"

    runner, outbox = _runner(blocking)
    runner.submit("c", "blocking", {})
    await asyncio.to_thread(entered.wait, PATIENCE)
    assert runner.cancel("c", reason="interrupted") is True
    await _settle(runner)  # the call is over for the runner while the thread still runs
    assert runner.pending == 0
    assert not finished.is_set()
    release.set()
    await asyncio.to_thread(finished.wait, PATIENCE)
    await asyncio.sleep(TICK)  # give a (wrongly) forwarded late value the time to be sent
    assert outbox.calls == []


async def test_a_handler_that_swallows_the_cancel_has_its_value_discarded() -> None:
    entered = asyncio.Event()

    @tool("stubborn", "d")
    async def stubborn() -> str:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return "returned anyway"

    runner, outbox = _runner(stubborn)
    runner.submit("c", "stubborn", {})
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
    assert runner.cancel("c") is True
    await _settle(runner)
    assert outbox.calls == []


async def test_cancel_all_leaves_calls_that_are_answering() -> None:
    entered = asyncio.Event()
    finally_ran: list[str] = []
    runner, outbox = _runner(_waiting_tool(entered, finally_ran), echo)
    outbox.hang = asyncio.Event()
    runner.submit("answering", "echo", {"text": "x"})
    runner.submit("running", "wait", {"name": "running"})
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
        await outbox.sending.wait()
    assert runner.running == ["running"]
    assert runner.cancel_all(reason="turn_ended") == ["running"]
    outbox.hang.set()
    await _settle(runner)
    assert finally_ran == ["running"]
    assert outbox.calls == ["answering"]


async def test_a_repeated_call_id_is_not_run_twice_and_cancel_stops_the_one_running() -> None:
    entered = asyncio.Event()
    finally_ran: list[str] = []
    runner, outbox = _runner(_waiting_tool(entered, finally_ran))
    runner.submit("same", "wait", {"name": "a"})
    runner.submit("same", "wait", {"name": "b"})  # still running: ignored
    async with asyncio.timeout(PATIENCE):
        await entered.wait()
    assert runner.running == ["same"]
    assert runner.cancel("same") is True
    await _settle(runner)
    assert finally_ran == ["a"]
    runner.submit("same", "wait", {"name": "c"})  # cancelled: never run again
    await _settle(runner)
    assert finally_ran == ["a"]
    assert outbox.calls == []


async def test_a_call_answered_already_is_answered_again_without_running_the_handler() -> None:
    runs: list[str] = []

    @tool("count", "Counts its runs")
    def count(text: str) -> str:
        runs.append(text)
        return f"run {len(runs)}"

    runner, outbox = _runner(count)
    runner.submit("c1", "count", {"text": "x"})
    await _settle(runner)
    runner.submit("c1", "count", {"text": "y"})  # a resumed server sends the call again
    await _settle(runner)
    assert runs == ["x"]
    assert outbox.calls == ["c1", "c1"]
    assert outbox.results["c1"].text == "run 1"


async def test_the_runner_remembers_a_bounded_number_of_call_ids() -> None:
    from chucky.tool_runner import REMEMBERED_CALLS

    runner, outbox = _runner(echo)
    for index in range(REMEMBERED_CALLS + 1):
        runner.submit(f"c{index}", "echo", {"text": "x"})
    await _settle(runner)
    runner.submit("c0", "echo", {"text": "x"})  # forgotten: a new call
    runner.submit(f"c{REMEMBERED_CALLS}", "echo", {"text": "x"})  # remembered: answered again
    await _settle(runner)
    assert len(outbox.calls) == REMEMBERED_CALLS + 3
    assert len(runner._seen) == REMEMBERED_CALLS
