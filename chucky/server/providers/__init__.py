"""Model providers: the seam between the agent loop and a model backend.

See :mod:`chucky.server.providers.base` for the event shape every provider emits and
:mod:`chucky.server.providers.scripted` for the deterministic test model. The real providers
import their SDK, so they are imported by name, not here: ``chucky.server.providers.anthropic``
(extra ``anthropic``) and ``chucky.server.providers.openai`` (extra ``openai``; any
OpenAI-compatible server).
"""

from __future__ import annotations

from .base import MessageAccumulator, ModelRequest, Provider, ToolSpec, provider_error
from .scripted import ScriptedProvider

__all__ = [
    "MessageAccumulator",
    "ModelRequest",
    "Provider",
    "ScriptedProvider",
    "ToolSpec",
    "provider_error",
]
