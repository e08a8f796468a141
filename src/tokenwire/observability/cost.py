"""A message's price from `genai-prices <https://pypi.org/project/genai-prices/>`_.

The price is looked up by the provider and the provider's model name of a
``provider:model`` (``openai:gpt-4o`` is ``gpt-4o`` at ``openai``), for the token
counts of the message's usage (``input_tokens`` includes ``cached_input_tokens``,
as genai-prices counts). Models that run on your own hardware (``local:``,
``ollama:``), scripted ones (``fake:``) and every model genai-prices does not
know have no price: :func:`message_cost` returns ``None``, which the API shows
as ``"cost": null``. Prices are estimates: genai-prices' own warning applies
(cached-token discounts, tiers and batch pricing may differ from your bill).

genai-prices is imported on first use (it loads a price table of ~1.5 MB).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

__all__ = ["PRICED_PROVIDERS", "message_cost", "price"]

logger = logging.getLogger("tokenwire.cost")

PRICED_PROVIDERS: Mapping[str, str] = {
    "openai": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
}
"""tokenwire provider prefix -> genai-prices provider id; other prefixes have no price."""


def message_cost(model: str | None, usage: Mapping[str, int] | None) -> dict[str, Any] | None:
    """The price of one generation, or ``None`` when unknown.

    Args:
        model: ``provider:model`` as the generation was started (``None``: unknown).
        usage: token counts as stored with the message (``input_tokens``,
            ``output_tokens``, ``cached_input_tokens``); ``None``: no usage reported.

    Returns:
        ``{"currency": "USD", "input": float, "output": float, "total": float}``
        (amounts in US dollars), or ``None`` when the model, its provider or the
        usage is unknown. Never raises.
    """
    if not model or usage is None:
        return None
    prefix, _, name = model.partition(":")
    provider_id = PRICED_PROVIDERS.get(prefix)
    if provider_id is None or not name:
        return None
    try:
        from genai_prices import Usage, calc_price

        price = calc_price(
            Usage(
                input_tokens=int(usage.get("input_tokens", 0)),
                cache_read_tokens=int(usage.get("cached_input_tokens", 0)),
                output_tokens=int(usage.get("output_tokens", 0)),
            ),
            model_ref=name,
            provider_id=provider_id,
        )
    except LookupError:
        return None
    except Exception:  # a bug or bad data in the price table must not fail a message
        logger.warning("could not price model %s", model, exc_info=True)
        return None
    return {
        "currency": "USD",
        "input": float(price.input_price),
        "output": float(price.output_price),
        "total": float(price.total_price),
    }


async def price(model: str | None, usage: Mapping[str, int] | None) -> dict[str, Any] | None:
    """:func:`message_cost` off the event loop (in a thread) when there may be a price
    (genai-prices' first use loads its table); at once when there cannot be one."""
    if not model or usage is None or model.partition(":")[0] not in PRICED_PROVIDERS:
        return None
    return await asyncio.to_thread(message_cost, model, usage)
