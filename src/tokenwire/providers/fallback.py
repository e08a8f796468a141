"""Fallback models: try the next model only when the previous one failed before its
first event (DESIGN §5: a retry after the first event would duplicate text).

A request names several models, in order, as OpenRouter's ``models`` array does
(https://openrouter.ai/docs/features/model-routing): ``{"model": "a:x", "models":
["b:y", "c:z"]}`` tries ``a:x``, then ``b:y``, then ``c:z``. Inside tokenwire the list
travels as one model name joined by :data:`SEPARATOR` (``"a:x,b:y,c:z"``): that is the
``model`` of the ``start`` event and of the stored message, and what
:meth:`~tokenwire.providers.ProviderRegistry.resolve` turns into a
:class:`FallbackProvider`. The model that answered is the ``model`` of the ``finish``
event.

- A candidate that raises :class:`~tokenwire.errors.ProviderError` before yielding
  anything is abandoned and the next one is asked, whatever the error (rate limit,
  overload, refusal of the request), as OpenRouter does; the last one's error is
  raised when every candidate failed.
- After a candidate's first event, its errors end the stream: never a fallback.
- A candidate that stalls before its first event is not abandoned: the producer's
  ``provider_timeout`` ends the whole stream.
- Params go to every candidate unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence

import msgspec

from tokenwire.errors import InvalidRequestError, ProviderError
from tokenwire.events import Finish
from tokenwire.providers.base import GenerationRequest, Provider, ProviderEvent

__all__ = ["SEPARATOR", "Candidate", "FallbackProvider", "fallback_provider", "join_models"]

SEPARATOR = ","
"""Joins the models of one request into one model name (no model name contains it)."""
MAX_MODELS = 8
"""Most models one request may name (``model`` and ``models`` together)."""

logger = logging.getLogger("tokenwire.providers.fallback")


def join_models(model: object, models: object, *, field: str = "models") -> str | None:
    """One model name for ``model`` followed by the fallbacks ``models``.

    Args:
        model: the request's ``model`` (``None`` = none given).
        models: the request's ``models`` array (``None`` = none given).
        field: the name of the array, for errors.

    Returns:
        ``model`` when there are no fallbacks; the names, duplicates dropped, joined
        by :data:`SEPARATOR`; ``None`` when neither was given (the default model).

    Raises:
        InvalidRequestError: ``models`` is not an array of non-empty strings, a name
            contains :data:`SEPARATOR`, or more than :data:`MAX_MODELS` are named.
    """
    if models is None:
        return model if isinstance(model, str) or model is None else str(model)
    if not isinstance(models, list) or not models:
        raise InvalidRequestError(field, "must be a non-empty array of 'provider:model' names")
    names: list[str] = [model] if isinstance(model, str) and model else []
    for i, name in enumerate(models):
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequestError(f"{field}[{i}]", "must be a 'provider:model' name")
        if SEPARATOR in name:
            raise InvalidRequestError(f"{field}[{i}]", f"must not contain {SEPARATOR!r}")
        if name not in names:
            names.append(name)
    if len(names) > MAX_MODELS:
        raise InvalidRequestError(field, f"at most {MAX_MODELS} models per request")
    return SEPARATOR.join(names)


class Candidate(msgspec.Struct, frozen=True):
    """One model to try: its full ``provider:model`` name, its provider, and the
    provider's own model name."""

    name: str
    provider: Provider
    model: str


def fallback_provider(
    name: str, resolve: Callable[[str], tuple[Provider, str]]
) -> tuple[FallbackProvider, str]:
    """Resolve every model of a joined ``name`` (checked now, before anything starts).

    Args:
        name: models joined by :data:`SEPARATOR`.
        resolve: the registry's resolution of one ``provider:model`` name.

    Returns:
        ``(the provider, name)``: the request's ``model`` stays the joined name.

    Raises:
        UnknownModelError, InvalidRequestError: from ``resolve``, for the first
            model it refuses.
    """
    candidates = []
    for one in name.split(SEPARATOR):
        provider, model = resolve(one)
        candidates.append(Candidate(one, provider, model))
    return FallbackProvider(candidates), name


class FallbackProvider:
    """A :class:`~tokenwire.providers.base.Provider` trying ``candidates`` in order.

    ``stream`` asks each candidate with the request's ``model`` replaced by the
    candidate's; the ``finish`` event of the candidate that answered carries its
    full name as ``model``.

    Raises:
        ProviderError: the last candidate's, when every one failed before its first
            event; a candidate's, when it failed after its first event.
    """

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        if not candidates:
            raise ValueError("a fallback needs at least one candidate")
        self.candidates = tuple(candidates)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        last = len(self.candidates) - 1
        for i, candidate in enumerate(self.candidates):
            events = candidate.provider.stream(
                msgspec.structs.replace(request, model=candidate.model)
            )
            try:
                first = await anext(events)
            except StopAsyncIteration:
                return
            except ProviderError as exc:
                if i == last:
                    raise
                logger.info(
                    "%s failed before its first event (%s); trying %s",
                    candidate.name,
                    exc.code,
                    self.candidates[i + 1].name,
                )
                await _close(events)
                continue
            try:
                yield _named(first, candidate.name)
                async for event in events:
                    yield _named(event, candidate.name)
            finally:
                await _close(events)
            return


def _named(event: ProviderEvent, name: str) -> ProviderEvent:
    return msgspec.structs.replace(event, model=name) if isinstance(event, Finish) else event


async def _close(events: AsyncIterator[ProviderEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
