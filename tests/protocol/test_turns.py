"""The per-turn state machine (chucky.protocol.turns): its rules, without sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chucky.errors import BudgetExceededError, InvalidStateError, ProviderError
from chucky.protocol.turns import (
    TRANSITIONS,
    AbandonCalls,
    Admitted,
    CancelWork,
    ClientGone,
    ComputeExhausted,
    Drain,
    DrainExpired,
    Ended,
    Interrupt,
    LoopCancelled,
    LoopEnded,
    LoopFailed,
    ModelCallReserved,
    ModelOutput,
    Refused,
    Start,
    StopReason,
    ToolCallOut,
    ToolResultIn,
    Turn,
    TurnEnd,
    TurnEvent,
    TurnState,
)

S = TurnState


def at(state: TurnState, *calls: str) -> Turn:
    """A turn driven to ``state`` the ordinary way (with tool calls pending, if given)."""
    turn = Turn("hi")
    if state is S.QUEUED:
        return turn
    turn.process(Start())
    if state is S.ADMITTING:
        return turn
    turn.process(Admitted())
    for call_id in calls:
        turn.process(ToolCallOut(call_id))
    if state is S.RUNNING:
        return turn
    if state is S.STOPPING:
        turn.process(Interrupt())
        return turn
    turn.process(LoopEnded("success"))
    if state is S.ENDING:
        return turn
    turn.process(Ended())
    return turn


def test_an_ordinary_turn() -> None:
    turn = Turn("hi", None, 10)
    assert turn.live and turn.deliverable
    assert turn.process(Start()) == []
    assert turn.process(Admitted()) == []
    for event in (ModelCallReserved(), ModelOutput(), ToolCallOut("c1"), ToolResultIn("c1")):
        assert turn.process(event) == []
    assert turn.pending_calls == []
    turn.process(LoopEnded("success"))
    assert turn.state is S.ENDING
    assert turn.end == TurnEnd(subtype="success")
    assert turn.end.is_result
    turn.process(Ended())
    assert turn.state is S.DONE and not turn.live


# -- interrupt -----------------------------------------------------------------------------------


def test_an_interrupt_of_a_queued_turn_ends_it_before_it_starts() -> None:
    # The "interrupt right after send()" case: the turn never runs, and is still answered.
    turn = at(S.QUEUED)
    assert turn.process(Interrupt()) == []
    assert turn.state is S.ENDING
    assert turn.end == TurnEnd(subtype="error_during_execution", errors=("interrupted",), ran=False)
    with pytest.raises(InvalidStateError):
        turn.process(Start())  # it never starts now


@pytest.mark.parametrize("state", [S.ADMITTING, S.RUNNING])
def test_an_interrupt_of_a_turn_at_work_cancels_the_work(state: TurnState) -> None:
    turn = at(state)
    assert turn.process(Interrupt()) == [CancelWork()]
    assert turn.state is S.STOPPING
    assert turn.stop_reason is StopReason.INTERRUPTED
    turn.process(LoopCancelled())
    assert turn.end == TurnEnd(subtype="error_during_execution", errors=("interrupted",))


def test_an_interrupt_abandons_the_pending_tool_calls() -> None:
    turn = at(S.RUNNING, "c1", "c2")
    turn.process(ToolResultIn("c1"))
    assert turn.process(Interrupt()) == [CancelWork(), AbandonCalls(("c2",), "interrupted")]
    assert turn.pending_calls == []


@pytest.mark.parametrize("state", [S.STOPPING, S.ENDING, S.DONE])
def test_an_interrupt_of_an_ending_turn_changes_nothing(state: TurnState) -> None:
    turn = at(state)
    before = (turn.state, turn.end, turn.stop_reason)
    assert turn.process(Interrupt()) == []
    assert (turn.state, turn.end, turn.stop_reason) == before


def test_a_loop_that_finished_wins_over_a_stop_that_came_too_late() -> None:
    turn = at(S.RUNNING)
    turn.process(Interrupt())
    turn.process(LoopEnded("success"))
    assert turn.end == TurnEnd(subtype="success")


# -- client gone, compute, shutdown ------------------------------------------------------------


def test_a_client_gone_before_the_turn_started_needs_no_answer() -> None:
    turn = at(S.QUEUED)
    assert turn.process(ClientGone()) == []
    assert turn.state is S.DONE and turn.end is None


def test_a_client_gone_mid_turn_stops_it_and_nothing_is_delivered() -> None:
    turn = at(S.RUNNING, "c1")
    assert turn.process(ClientGone()) == [CancelWork(), AbandonCalls(("c1",), "turn_ended")]
    assert turn.stop_reason is StopReason.CLIENT_GONE
    turn.process(LoopCancelled())
    assert turn.end is not None and not turn.end.deliver
    turn.process(Ended())


def test_a_client_gone_while_ending_makes_the_end_undeliverable() -> None:
    turn = at(S.ENDING)
    assert turn.end is not None and turn.end.deliver
    turn.process(ClientGone())
    assert turn.end == TurnEnd(subtype="success", deliver=False)


def test_the_first_stop_reason_wins() -> None:
    turn = at(S.RUNNING)
    assert turn.process(ComputeExhausted()) == [CancelWork()]
    assert turn.process(Interrupt()) == []
    assert turn.process(DrainExpired()) == []
    turn.process(ClientGone())
    turn.process(LoopCancelled())
    assert turn.end == TurnEnd(
        subtype="error_during_execution", errors=("compute budget exhausted",), deliver=False
    )


def test_compute_exhausted_ends_the_turn_with_its_error() -> None:
    turn = at(S.RUNNING)
    turn.process(ComputeExhausted())
    turn.process(LoopCancelled())
    assert turn.end == TurnEnd(
        subtype="error_during_execution", errors=("compute budget exhausted",)
    )


def test_compute_is_only_counted_while_running() -> None:
    with pytest.raises(InvalidStateError):
        at(S.ADMITTING).process(ComputeExhausted())
    with pytest.raises(InvalidStateError):
        at(S.QUEUED).process(ComputeExhausted())


def test_a_drain_refuses_a_queued_turn_and_lets_a_running_one_go_on() -> None:
    queued, running = at(S.QUEUED), at(S.RUNNING)
    queued.process(Drain())
    assert queued.state is S.ENDING
    assert queued.end is not None and queued.end.error is not None and not queued.end.ran
    assert queued.end.error.code == "SESSION_ERROR"
    assert queued.end.error.reason == "server_shutdown"
    assert running.process(Drain()) == []
    assert running.state is S.RUNNING
    assert running.process(DrainExpired()) == [CancelWork()]
    running.process(LoopCancelled())
    assert running.end == TurnEnd(
        subtype="error_during_execution", errors=("server shutting down",)
    )


# -- failures ------------------------------------------------------------------------------------


def test_a_refused_turn_ends_with_its_error() -> None:
    error = BudgetExceededError("Budget exceeded", details={"reason": "user_budget_exhausted"})
    turn = at(S.ADMITTING)
    turn.process(Refused(error))
    assert turn.end == TurnEnd(error=error, ran=False)
    assert not turn.end.is_result


def test_a_failed_loop_ends_with_its_error() -> None:
    error = ProviderError("provider down", details={"reason": "provider_unavailable"})
    turn = at(S.RUNNING, "c1")
    assert turn.process(LoopFailed(error)) == [AbandonCalls(("c1",), "turn_ended")]
    assert turn.end == TurnEnd(error=error)


# -- the table -----------------------------------------------------------------------------------

EVENTS: list[TurnEvent] = [
    Start(),
    Admitted(),
    Refused(ProviderError("x")),
    ModelCallReserved(),
    ModelOutput(),
    ToolCallOut("c9"),
    ToolResultIn("c9"),
    Interrupt(),
    ClientGone(),
    ComputeExhausted(),
    Drain(),
    DrainExpired(),
    LoopEnded("success"),
    LoopFailed(ProviderError("x")),
    LoopCancelled(),
    Ended(),
]


@pytest.mark.parametrize("state", list(S))
@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_every_pair_missing_from_the_table_raises(state: TurnState, event: TurnEvent) -> None:
    turn = at(state)
    if (state, type(event)) in TRANSITIONS:
        turn.process(event)
        assert turn.state is TRANSITIONS[(state, type(event))]
    else:
        with pytest.raises(InvalidStateError, match=state.value):
            turn.process(event)
        assert turn.state is state  # an illegal event changes nothing


def test_the_work_events_are_illegal_outside_the_work() -> None:
    for state in (S.QUEUED, S.STOPPING, S.ENDING, S.DONE):
        for event in (ModelOutput(), ToolCallOut("x"), ModelCallReserved()):
            assert (state, type(event)) not in TRANSITIONS


# -- property: exactly one end, whatever arrives when --------------------------------------------

OUTSIDE_TYPES = (Interrupt, ClientGone, ComputeExhausted, Drain, DrainExpired)
OUTSIDE = st.sampled_from([Interrupt(), ClientGone(), ComputeExhausted(), Drain(), DrainExpired()])


@st.composite
def lives(draw: Any) -> list[TurnEvent]:
    """A turn's own progress with outside events dropped in anywhere."""
    calls = draw(st.integers(0, 3))
    own: list[TurnEvent] = [Start(), Admitted(), ModelCallReserved(), ModelOutput()]
    own += [ToolCallOut(f"c{i}") for i in range(calls)]
    own += [ToolResultIn(f"c{i}") for i in range(draw(st.integers(0, calls)))]
    own.append(draw(st.sampled_from([LoopEnded("success"), LoopFailed(ProviderError("x"))])))
    events: list[TurnEvent] = []
    for event in own:
        events += draw(st.lists(OUTSIDE, max_size=2))
        events.append(event)
    return events + draw(st.lists(OUTSIDE, max_size=2))


@settings(max_examples=400)
@given(lives())
def test_a_turn_ends_exactly_once_whatever_happens(events: list[TurnEvent]) -> None:
    """Feed the events as an executor would (skipping its own steps once the turn stopped or
    ended, as a cancelled loop stops reporting), and check the invariants after each."""
    turn = Turn("hi")
    cancels = 0
    end: TurnEnd | None = None
    for event in events:
        outside = isinstance(
            event, Interrupt | ClientGone | ComputeExhausted | Drain | DrainExpired
        )
        if not outside and (turn.state, type(event)) not in TRANSITIONS:
            continue  # the work was cancelled or the turn ended: it reports nothing more
        if isinstance(event, ComputeExhausted) and turn.state is not S.RUNNING:
            continue  # only the supervisor of a running turn says this
        if isinstance(event, DrainExpired) and turn.state is S.QUEUED:
            continue  # a shutdown refuses queued turns first (Drain)
        actions = turn.process(event)
        cancels += sum(isinstance(a, CancelWork) for a in actions)
        if end is not None:
            assert turn.end is not None
            assert (turn.end.subtype, turn.end.errors, turn.end.error) == (
                end.subtype,
                end.errors,
                end.error,
            )
        if turn.state is S.ENDING and end is None:
            end = turn.end
        assert cancels <= 1
    if turn.state is S.STOPPING:
        turn.process(LoopCancelled())
        end = turn.end
    if turn.state is S.ENDING:
        assert turn.end is not None
        assert turn.end.is_result != (turn.end.error is not None)
        turn.process(Ended())
    assert turn.state is S.DONE or (turn.state is S.QUEUED and end is None)
    assert turn.pending_calls == [] or turn.state is not S.DONE
