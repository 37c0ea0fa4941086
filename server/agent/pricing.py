"""What a model call costs, from OpenAI's published per-million-token prices (standard tier, 2025).

A task's log records the cost of every call so a user sees what a task spent and a budget can stop
it; a model missing from the table (a local or third-party model) still has its tokens counted, and
its cost is None — unknown, never a guess.
"""

from __future__ import annotations

import re

# model: (input, cached input, output) in USD per million tokens
PRICES: dict[str, tuple[float, float, float]] = {
    "gpt-5": (1.25, 0.125, 10.00),
    "gpt-5-mini": (0.25, 0.025, 2.00),
    "gpt-5-nano": (0.05, 0.005, 0.40),
    "gpt-5-chat-latest": (1.25, 0.125, 10.00),
    "gpt-5-codex": (1.25, 0.125, 10.00),
    "gpt-5-pro": (15.00, 15.00, 120.00),
    "gpt-5.1": (1.25, 0.125, 10.00),
    "gpt-5.1-codex": (1.25, 0.125, 10.00),
    "gpt-5.1-codex-mini": (0.25, 0.025, 2.00),
    "codex-mini-latest": (1.50, 0.375, 6.00),
    "gpt-4.1": (2.00, 0.50, 8.00),
    "gpt-4.1-mini": (0.40, 0.10, 1.60),
    "gpt-4.1-nano": (0.10, 0.025, 0.40),
    "gpt-4o": (2.50, 1.25, 10.00),
    "gpt-4o-mini": (0.15, 0.075, 0.60),
    "o1": (15.00, 7.50, 60.00),
    "o1-mini": (1.10, 0.55, 4.40),
    "o1-pro": (150.00, 150.00, 600.00),
    "o3": (2.00, 0.50, 8.00),
    "o3-mini": (1.10, 0.55, 4.40),
    "o3-pro": (20.00, 20.00, 80.00),
    "o4-mini": (1.10, 0.275, 4.40),
    "gpt-4-turbo": (10.00, 10.00, 30.00),
    "gpt-4": (30.00, 30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 0.50, 1.50),
}

_SNAPSHOT = re.compile(r"-\d{4}-\d{2}-\d{2}$")  # gpt-4o-2024-08-06 is priced as gpt-4o


def price(model: str) -> tuple[float, float, float] | None:
    """The prices of `model` (a dated snapshot or an `openai/` prefixed name too), or None."""
    name = model.strip().lower().removeprefix("openai/")
    return PRICES.get(name) or PRICES.get(_SNAPSHOT.sub("", name))


def cost(model: str, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float | None:
    """USD for one call; cached input tokens (part of `input_tokens`) at their lower price."""
    prices = price(model)
    if prices is None:
        return None
    uncached = max(0, input_tokens - cached_tokens)
    return (uncached * prices[0] + min(cached_tokens, input_tokens) * prices[1] + output_tokens * prices[2]) / 1e6
