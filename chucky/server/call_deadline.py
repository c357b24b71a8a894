"""The deadlines of one model call, so that no turn waits for a model forever.

A call must send its first event within ``first_event_timeout`` seconds and end within
``model_timeout`` seconds of its request (both include the provider's own retries and waits;
the whole-call one also the delivery of the events to the client, which has its own write
deadline). Each comes from the route's provider table when the routing file sets it, else from
the server (:class:`~chucky.server.config.ServerConfig`); ``None`` is no deadline.

:class:`CallDeadline` is pure: it says when to give up and what error ends the turn. The agent
loop holds the clock: it runs the call under one ``asyncio.timeout`` that starts at the first
deadline and is moved to the whole call's when the first event arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProviderError
from .providers.base import provider_error

__all__ = ["CallDeadline"]


@dataclass(frozen=True, slots=True)
class CallDeadline:
    """The deadlines of a call to ``model`` (seconds; ``None``: none)."""

    model: str
    first_event: float | None
    whole: float | None

    @classmethod
    def pick(
        cls,
        model: str,
        *,
        route_first_event: float | None,
        route_whole: float | None,
        first_event: float | None,
        whole: float | None,
    ) -> CallDeadline:
        """The route's deadlines where set, else the server's."""
        return cls(
            model,
            route_first_event if route_first_event is not None else first_event,
            route_whole if route_whole is not None else whole,
        )

    @property
    def before_first_event(self) -> float | None:
        """Seconds from the request to the first deadline (the earlier of the two)."""
        if self.first_event is None:
            return self.whole
        if self.whole is None:
            return self.first_event
        return min(self.first_event, self.whole)

    def after_first_event(self, began: float) -> float | None:
        """The deadline once an event arrived: ``began`` (the request's time) plus the whole
        call's, or ``None``."""
        return None if self.whole is None else began + self.whole

    def error(self, *, streamed: bool) -> ProviderError:
        """The ``PROVIDER_ERROR`` of a call that passed a deadline (kind ``timeout``).

        Retryable: the same call may succeed later, or on the session's ``fallbackModel`` (which
        the agent loop tries only when nothing was streamed).
        """
        if (
            not streamed
            and self.first_event is not None
            and self.before_first_event == (self.first_event)
        ):
            seconds = self.first_event
            text = f"sent nothing for {seconds:g} s (first_event_timeout)"
            which = "first_event"
        else:
            seconds = self.whole if self.whole is not None else 0.0
            text = f"did not finish its answer within {seconds:g} s (model_timeout)"
            which = "model"
        return provider_error(
            f"Provider error: the model {self.model} {text}; the call was abandoned",
            kind="timeout",
            retryable=True,
            deadline=which,
            timeout=seconds,
            streamed=streamed,
        )
