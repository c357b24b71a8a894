"""The agent loop: one user turn, from the user's message to the ``result``.

The loop does not know which model it drives: it sends a :class:`ModelRequest` to the routed
provider, forwards the raw events as ``stream_event`` frames when the session asked for partial
messages, folds them into the ``assistant`` message, runs the tool calls through the client, and
repeats until the model stops, ``maxTurns`` or ``maxBudgetUsd``.

The loop does not send the ``result`` itself: :meth:`AgentTurn.run` returns the turn's outcome
(a :class:`TurnOutcome`) and the connection settles the turn, then sends :meth:`AgentTurn.result`
(docs/protocol.md section 4: exactly one per turn, always last, integer counters). Every frame it
sends is a :mod:`chucky.messages` model, encoded by :class:`~chucky.protocol.server.ServerProtocol`.

Every model call is paid for in advance through the turn's
:class:`~chucky.server.account.TurnAccount`: its worst case is reserved in the ledger, its
``max_tokens`` lowered to what the user's window budget and the session's ``maxBudgetUsd`` can
pay for, and its actual cost settled after it. The first call is reserved before anything is
sent, so a user with nothing left gets ``BUDGET_EXCEEDED`` and the turn does not run; a later
call that cannot be paid for ends the turn with ``error_max_budget_usd``. Each call also runs
under its deadlines (:mod:`chucky.server.call_deadline`): no turn waits for a model forever.

With an ``outputFormat`` the system prompt carries the schema, and the final text is validated
against it (:mod:`chucky.server.structured`). An invalid answer is answered with a repair request
(a user message in the transcript) and the model is called again, counted and paid for like any
call; after ``max_structured_output_retries`` failed repairs the turn ends with
``error_max_structured_output_retries``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .._redact import redacting_logger
from ..errors import ProviderError
from ..messages import (
    AssistantBody,
    AssistantMessage,
    ResultMessage,
    StreamEventMessage,
    SystemMessage,
    Usage,
    UserBody,
    UserMessage,
    WireModel,
)
from ..protocol.frames import ToolResultPayload
from ..protocol.turns import ModelCallReserved, ModelOutput, TurnEvent
from .account import TurnAccount
from .budget import CallGrant, CallPlan
from .call_deadline import CallDeadline
from .catalog import ClientTool, ToolCatalog
from .config import DEFAULT_FIRST_EVENT_TIMEOUT, DEFAULT_MODEL_TIMEOUT
from .pricing import microdollars_to_usd, usd_to_microdollars
from .providers.base import MessageAccumulator, ModelRequest
from .routing import Route
from .store import SessionRecord, new_id
from .structured import repair_request, schema_instruction, validate_output
from .turn_frames import INTERRUPTED, error_payload, fit_echo, outcome, result_blocks

__all__ = [
    "AgentTurn",
    "TurnIO",
    "TurnOutcome",
    "TurnSettings",
]

logger = redacting_logger("chucky.server.agent")


class TurnIO(Protocol):
    """What the loop needs from the connection."""

    async def send_message(self, message: WireModel) -> None:
        """Send one SDK message."""

    async def call_tool(self, tool: ClientTool, call_id: str, arguments: Any) -> ToolResultPayload:
        """Have the client run ``tool``; always returns a result (errors included)."""

    def record(self, event: TurnEvent) -> None:
        """Tell the turn's state machine what the loop did."""


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    """How the loop ended: the ``result`` subtype and its errors."""

    subtype: str
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """The options in force for one turn."""

    model: str
    system_prompt: str | None
    max_turns: int
    max_tokens: int
    include_partial_messages: bool = False
    max_budget_usd: float | None = None
    permission_mode: str = "default"
    output_schema: Mapping[str, Any] | None = None
    max_structured_output_retries: int = 2
    cwd: str = field(default_factory=os.getcwd)
    params: Mapping[str, Any] = field(default_factory=dict)
    fallback_model: str | None = None
    tool_choice: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    model_timeout: float | None = DEFAULT_MODEL_TIMEOUT
    first_event_timeout: float | None = DEFAULT_FIRST_EVENT_TIMEOUT
    unsupported_options: tuple[str, ...] = ()
    """The session's ``init`` options this server does not act on (``unsupportedOptions``)."""


def _add_usage(total: dict[str, int], usage: Mapping[str, int]) -> None:
    for key, value in usage.items():
        total[key] = total.get(key, 0) + value


class AgentTurn:
    """One user turn. :meth:`run` drives it; :meth:`result` builds its ``result`` at any point
    (the connection uses it for an interrupted turn)."""

    def __init__(
        self,
        *,
        session: SessionRecord,
        content: str | list[dict[str, Any]],
        settings: TurnSettings,
        catalog: ToolCatalog,
        route: Route,
        io: TurnIO,
        account: TurnAccount,
        fallback: Route | None = None,
        turn_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.content = content
        self.settings = settings
        self.catalog = catalog
        self.route = route
        self.io = io
        self.account = account
        self.fallback = fallback
        self.turn_id = turn_id
        """The client's id of the turn: its user message's ``uuid`` (docs/protocol.md
        section 10)."""
        self._streamed = False
        self._clock = clock
        self._wall_clock = wall_clock
        self._began = clock()
        self.api_seconds = 0.0
        self.num_turns = 0
        self.usage: dict[str, int] = {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        }
        self.cost_microdollars = 0
        self.stop_reason: str | None = None
        self.final_text = ""
        self.structured: Any = None
        self._repairs = 0
        self._first: CallGrant | str = "max_turns"
        self.started = False
        """Whether the turn got past its start (its user message is stored)."""

    # -- frames --------------------------------------------------------------------------------

    def _system_init(self) -> SystemMessage:
        return SystemMessage(
            subtype="init",
            uuid=new_id(),
            session_id=self.session.session_id,
            cwd=self.settings.cwd,
            tools=self.catalog.names,
            mcp_servers=self.catalog.servers,
            model=self.route.name or self.settings.model,
            permission_mode=self.settings.permission_mode,
            unsupported_options=list(self.settings.unsupported_options) or None,
        )

    def result(
        self, subtype: str = "success", *, errors: tuple[str, ...] | list[str] | None = None
    ) -> ResultMessage:
        """The ``result`` of this turn as it stands."""
        success = subtype == "success"
        structured: Any = None
        if success and self.settings.output_schema is not None:
            structured = self.structured
        return ResultMessage(
            subtype=subtype,
            uuid=new_id(),
            session_id=self.session.session_id,
            is_error=not success,
            num_turns=self.num_turns,
            duration_ms=round((self._clock() - self._began) * 1000),
            duration_api_ms=round(self.api_seconds * 1000),
            total_cost_usd=microdollars_to_usd(self.cost_microdollars),
            usage=Usage(**self.usage),
            result=self.final_text if success else None,
            structured_output=structured,
            errors=list(errors or ()) if not success else None,
            stop_reason=self.stop_reason,
        )

    # -- the loop ------------------------------------------------------------------------------

    async def start(self, *, turns_per_minute: int | None) -> None:
        """Admit the turn: the rate limit, the first compute grant, the first call's
        reservation and the user's message, in one transaction (:meth:`TurnAccount.start`).

        Raises:
            RateLimitError: too many turns this minute.
            BudgetExceededError: the user's window cannot pay for the turn's compute or its
                first call; nothing was stored and the transcript is unchanged.
        """
        settings = self.settings
        session = self.session
        plan: CallPlan | None = None
        # Stored before it is announced: a turn the client saw start is never lost (a turn
        # refused at its start takes it back).
        session.append("user", self.content, self.turn_id)
        if settings.max_turns > 0:
            try:
                planned = self._plan(self._request(session.model_messages()))
            except BaseException:
                session.drop_last()
                raise
            if planned == "session":
                self._first = "session"
            else:
                plan = planned
        grant = await self.account.start(turns_per_minute=turns_per_minute, call=plan)
        if plan is not None:
            assert grant is not None
            self._first = grant
        self.started = True

    async def run(self) -> TurnOutcome:
        """Run the started turn (:meth:`start`) to its end and say how it ended (the caller
        settles the turn, then sends :meth:`result`).

        Raises:
            ProviderError: the model failed; the caller reports it as an ``error`` frame.
            asyncio.CancelledError: the turn was stopped (interrupt, socket gone, shutdown).
        """
        settings = self.settings
        session = self.session
        grant = self._first
        if isinstance(grant, CallGrant):
            self.io.record(ModelCallReserved())
        await self.io.send_message(self._system_init())
        while True:
            if self.num_turns >= settings.max_turns:
                return TurnOutcome("error_max_turns", ("max turns reached",))
            if not isinstance(grant, CallGrant):
                return TurnOutcome("error_max_budget_usd", ("max budget reached",))
            call = await self._call_with_fallback(grant)
            if call is None:
                return TurnOutcome("error_max_budget_usd", ("max budget reached",))
            tool_uses = [b for b in call if b.get("type") == "tool_use"]
            if not tool_uses:
                error = self._check_structured()
                if error is None:
                    return TurnOutcome("success")
                if self._repairs >= settings.max_structured_output_retries:
                    return TurnOutcome(
                        "error_max_structured_output_retries",
                        (f"structured output failed validation: {error}",),
                    )
                # The repair request is an ordinary user message: it stays in the transcript,
                # and the next call is reserved, counted and capped like any other.
                self._repairs += 1
                session.append("user", repair_request(error))
                if self.num_turns < settings.max_turns:
                    grant = await self._reserve(self._request(session.model_messages()))
                continue
            await self._run_tools(tool_uses)
            if self.num_turns < settings.max_turns:
                # Stored with the next call's reservation: the tool results, the settled call.
                grant = await self._reserve(self._request(session.model_messages()))

    def _check_structured(self) -> str | None:
        """Validate the final text against the output schema (if any); the error, or ``None``."""
        schema = self.settings.output_schema
        if schema is None:
            return None
        value, error = validate_output(self.final_text, schema)
        if error is None:
            self.structured = value
        return error

    def _system_prompt(self) -> str | None:
        settings = self.settings
        if settings.output_schema is None:
            return settings.system_prompt
        instruction = schema_instruction(settings.output_schema)
        if not settings.system_prompt:
            return instruction
        return f"{settings.system_prompt}\n\n{instruction}"

    def _request(self, messages: list[dict[str, Any]]) -> ModelRequest:
        settings = self.settings
        params = settings.params
        choice = self._tool_choice()
        if choice is not None:
            params = {**params, "tool_choice": dict(choice)}
        return ModelRequest(
            model=self.route.model,
            system=self._system_prompt(),
            messages=messages,
            tools=self.catalog.specs,
            max_tokens=settings.max_tokens,
            params=params,
        )

    def _tool_choice(self) -> Mapping[str, Any] | None:
        """The ``toolChoice`` of the turn's next model call.

        A list gives each call's choice, its last entry the rest. A single forced choice
        (``any``, a named tool) binds the turn's first call only, the next ones choose freely:
        forced on every call, the model could never answer with the tool's result.
        """
        choice = self.settings.tool_choice
        if isinstance(choice, Mapping):
            forced = choice["type"] not in ("auto", "none")
            # After the forced call: nothing sent, the provider's default (auto).
            return None if forced and self.num_turns > 0 else choice
        if not choice:
            return None
        return choice[min(self.num_turns, len(choice) - 1)]

    def _plan(self, request: ModelRequest) -> CallPlan | Literal["session"]:
        """The worst case of a call of ``request``, or ``"session"``: the session's
        ``maxBudgetUsd`` cannot pay for it."""
        room: int | None = None
        cap = self.settings.max_budget_usd
        if cap is not None and cap < 1e12:  # larger caps cannot bind (and would not convert)
            room = max(0, usd_to_microdollars(cap) - self.session.spent_microdollars)
        return self.account.budget.plan_call(
            input_tokens=self.route.provider.estimate_input_tokens(request),
            max_tokens=request.max_tokens,
            price=self.route.price,
            session_room=room,
        )

    async def _reserve(self, request: ModelRequest) -> CallGrant | Literal["session", "window"]:
        """Reserve the call's worst case (with a checkpoint: the turn's messages so far and the
        calls that finished), or say which budget refuses it."""
        plan = self._plan(request)
        if plan == "session":
            return plan
        grant = await self.account.reserve_call(plan)
        if isinstance(grant, CallGrant):
            self.io.record(ModelCallReserved())
        return grant

    async def _call_with_fallback(self, grant: CallGrant) -> list[dict[str, Any]] | None:
        """One model call; if the provider fails with a retryable error before anything was
        streamed and the session has a ``fallbackModel``, the call is made once more on it (the
        fallback then serves the rest of the turn). ``None``: the budget refused the retry."""
        try:
            return await self._call_model(self._request(self.session.model_messages()), grant)
        except ProviderError as exc:
            fallback = self.fallback
            if fallback is None or self._streamed or not exc.retryable:
                raise
            logger.warning(
                "model %s failed (%s); retrying the call on the fallback model %s",
                self.route.name or self.route.model,
                exc.message,
                fallback.name or fallback.model,
            )
            self.route, self.fallback = fallback, None
            retry = await self._reserve(self._request(self.session.model_messages()))
            if not isinstance(retry, CallGrant):
                return None
            return await self._call_model(self._request(self.session.model_messages()), retry)

    async def _call_model(self, request: ModelRequest, grant: CallGrant) -> list[dict[str, Any]]:
        settings = self.settings
        session = self.session
        if grant.max_tokens != request.max_tokens:
            request = dataclasses.replace(request, max_tokens=grant.max_tokens)
        accumulator = MessageAccumulator()
        partial = settings.include_partial_messages
        send = self.io.send_message
        session_id = session.session_id
        started = self._clock()
        self._streamed = False
        route = self.route
        deadline = CallDeadline.pick(
            route.name or route.model,
            route_first_event=route.first_event_timeout,
            route_whole=route.model_timeout,
            first_event=settings.first_event_timeout,
            whole=settings.model_timeout,
        )
        timeout = asyncio.timeout(deadline.before_first_event)
        began = asyncio.get_running_loop().time()
        try:
            async with timeout:
                async for event in route.provider.stream(request):
                    if not self._streamed:
                        self._streamed = True
                        timeout.reschedule(deadline.after_first_event(began))
                        self.io.record(ModelOutput())
                    accumulator.feed(event)
                    if partial:
                        await send(
                            StreamEventMessage(uuid=new_id(), session_id=session_id, event=event)
                        )
        except TimeoutError:
            if not timeout.expired():
                raise
            raise deadline.error(streamed=self._streamed) from None
        finally:
            self.api_seconds += self._clock() - started
            # A call that failed or was stopped part-way still used tokens: charge what was
            # reported; the rest of the reservation is released.
            self._charge(grant, accumulator.usage)
        self.num_turns += 1
        self.stop_reason = accumulator.stop_reason
        content = accumulator.content
        message_uuid = new_id()
        session.append("assistant", content, message_uuid)
        self.final_text = accumulator.text
        try:
            await send(
                AssistantMessage(
                    uuid=message_uuid,
                    session_id=session_id,
                    message=AssistantBody(
                        id=accumulator.message_id,
                        model=self.route.name or settings.model,
                        content=content,
                        stop_reason=accumulator.stop_reason,
                        usage=Usage(**accumulator.usage),
                    ),
                )
            )
        except BaseException:
            # Stopped before its tool calls went out (the socket went, an interrupt): each
            # resolves to an error result, so no tool_use is left without its tool_result.
            tool_uses = [b for b in content if b.get("type") == "tool_use"]
            if tool_uses:
                unanswered = [INTERRUPTED] * len(tool_uses)
                session.append("user", result_blocks(tool_uses, unanswered))
            raise
        return content

    def _charge(self, grant: CallGrant, usage: Mapping[str, int]) -> None:
        _add_usage(self.usage, usage)
        cost = self.account.charge(grant, dict(usage), self.route.price)
        self.cost_microdollars += cost
        self.session.spent_microdollars += cost

    async def _run_tools(self, tool_uses: list[dict[str, Any]]) -> None:
        # Several tool_use blocks: the calls go out back to back and run concurrently.
        calls = [asyncio.ensure_future(self._run_tool(block)) for block in tool_uses]
        try:
            results = await asyncio.gather(*calls)
        except BaseException:
            # Interrupt, socket gone (section 6): each unanswered call resolves to an error
            # result, so the transcript never holds a tool_use without its tool_result.
            for call in calls:
                call.cancel()
            self.session.append("user", result_blocks(tool_uses, [outcome(call) for call in calls]))
            await asyncio.gather(*calls, return_exceptions=True)
            raise
        blocks = result_blocks(tool_uses, results)
        message_uuid = new_id()
        self.session.append("user", blocks, message_uuid)
        await self.io.send_message(
            UserMessage(
                uuid=message_uuid,
                session_id=self.session.session_id,
                message=UserBody(content=fit_echo(blocks)),
            )
        )

    async def _run_tool(self, block: Mapping[str, Any]) -> ToolResultPayload:
        name = str(block.get("name", ""))
        tool = self.catalog.resolve(name)
        if tool is None:
            available = ", ".join(self.catalog.names) or "none"
            return error_payload(f"Unknown tool: {name}. Available tools: {available}")
        if not tool.definition.runs_on_client:
            return error_payload(
                f"Tool {tool.full_name} runs in {tool.definition.execute_in!r}, "
                "which this server does not support"
            )
        return await self.io.call_tool(tool, str(block.get("id")), block.get("input", {}))
