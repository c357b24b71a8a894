"""Model routing: which provider serves a requested model name, and at what price."""

from __future__ import annotations

from dataclasses import dataclass

from .pricing import ModelPrice, price_for
from .providers.base import Provider

__all__ = ["ModelRouter", "Route"]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a model request goes: the provider, the model id it knows, the price to charge."""

    provider: Provider
    model: str
    price: ModelPrice


class ModelRouter:
    """Maps requested model names to routes.

    This version routes every model to one provider (the scripted provider by default, priced
    like Sonnet so cost and budget numbers are realistic). Configured routing by name and alias
    replaces it without changing its callers.
    """

    def __init__(self, provider: Provider, *, price_model: str | None = None) -> None:
        self.provider = provider
        self._price = price_for(price_model or provider.name)

    def resolve(self, model: str) -> Route:
        return Route(self.provider, model, self._price)

    async def aclose(self) -> None:
        await self.provider.aclose()
