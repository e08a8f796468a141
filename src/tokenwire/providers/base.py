"""What every provider adapter shares: the request, the adapter protocol, part numbering.

An adapter turns one model API's streaming response into :data:`ProviderEvent`s.
It is an async generator: the producer closes it (``aclose()`` or task
cancellation) to stop, and the adapter must then close the upstream HTTP response
so the provider stops generating (and billing). An adapter ends with exactly one
:class:`~tokenwire.events.Finish`, or raises :class:`~tokenwire.errors.ProviderError`.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping
from typing import Literal, Protocol, runtime_checkable

import msgspec

from tokenwire.errors import ProviderError
from tokenwire.events import (
    ErrorCode,
    Finish,
    FinishReason,
    ReasoningDelta,
    Source,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)

__all__ = [
    "CheckedProvider",
    "GenerationRequest",
    "Message",
    "MessageToolCall",
    "Parts",
    "Provider",
    "ProviderEvent",
    "ToolSpec",
    "connection_error",
    "error_for_code",
    "error_for_status",
    "finish",
    "parse_arguments",
    "retry_after_seconds",
    "tool_call",
]

ProviderEvent = (
    TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | ToolCall | Source | Usage | Finish
)


class MessageToolCall(msgspec.Struct, frozen=True):
    """A tool call an assistant message made (OpenAI Chat Completions
    ``message.tool_calls[]``, Anthropic ``tool_use`` block, Gemini ``functionCall``).

    Attributes:
        id: the provider's tool call id (``call_…``, ``toolu_…``); a tool message
            answers it with the same ``tool_call_id``.
        name: the tool's name.
        arguments: the arguments as JSON text, exactly as the model produced them.
    """

    id: str
    name: str
    arguments: str = "{}"


class Message(msgspec.Struct, frozen=True):
    """One chat message.

    ``role`` is ``user``, ``assistant``, ``system`` or ``tool``. An ``assistant``
    message may carry ``tool_calls`` (its ``content`` may then be empty); a ``tool``
    message is the result of one call: ``tool_call_id`` names the call, ``name`` the
    tool, ``content`` the output as text, ``is_error`` marks a failed call.
    """

    role: Literal["user", "assistant", "system", "tool"]
    content: str
    tool_calls: tuple[MessageToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None
    is_error: bool = False


class ToolSpec(msgspec.Struct, frozen=True):
    """A tool the model may call (OpenAI ``tools[].function``, Anthropic ``tools[]``,
    Gemini ``functionDeclarations[]``).

    Attributes:
        name: the tool's name, as the model calls it.
        description: what the tool does, for the model.
        parameters: the JSON Schema of the arguments object.
    """

    name: str
    description: str = ""
    parameters: dict[str, object] = msgspec.field(default_factory=lambda: {"type": "object"})


class GenerationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What to generate.

    Attributes:
        model: the provider's own model name (the part after ``provider:``).
        messages: the conversation so far, oldest first.
        system: a system prompt, or ``None``.
        params: provider parameters passed through (``temperature``,
            ``max_tokens`` …); unknown keys are the provider's to reject.
        tools: the tools the model may call; empty means none.
    """

    model: str
    messages: list[Message]
    system: str | None = None
    params: dict[str, object] = msgspec.field(default_factory=dict)
    tools: list[ToolSpec] = msgspec.field(default_factory=list)


class Provider(Protocol):
    """A model API. ``stream`` yields events and ends with :class:`Finish`.

    A provider that can refuse a request before it is sent is also a
    :class:`CheckedProvider`.

    Raises:
        ProviderError: from ``stream``'s iteration, for every upstream failure,
            including in-band errors after HTTP 200.
    """

    def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]: ...


@runtime_checkable
class CheckedProvider(Provider, Protocol):
    """A provider that can tell, before anything is created, whether it can serve
    a request: :meth:`~tokenwire.providers.ProviderRegistry.resolve` calls
    :meth:`check`, so what it refuses is a 4xx on every surface, never a stream
    that ends in an error.
    """

    def check(self, model: str, params: Mapping[str, object]) -> None:
        """Return if ``model`` (the name after ``provider:``) can be served with ``params``.

        Raises:
            UnknownModelError: the model is unknown here, or the provider is not
                configured; the message names what to set.
            InvalidRequestError: a param the provider refuses, naming it
                (``params.tokens`` …).
        """


class Parts:
    """Assigns part indices (DESIGN §2): a new part whenever the kind of content
    changes or a new block begins.

    ``index(kind, key)`` returns the part for content of ``kind`` in block ``key``
    (a tool call id, a provider's content-block index, or ``None`` for "the
    current one"). Consecutive calls with the same kind and key share a part;
    a key seen before (an interleaved parallel tool call) keeps its part.
    """

    def __init__(self) -> None:
        self._current: tuple[str, object] | None = None
        self._known: dict[tuple[str, object], int] = {}
        self._next = 0

    def index(self, kind: str, key: object = None) -> int:
        block = (kind, key)
        if block == self._current:
            return self._known[block]
        if key is not None and block in self._known:
            self._current = block
            return self._known[block]
        part = self._next
        self._next += 1
        self._known[block] = part
        self._current = block
        return part


def parse_arguments(text: str) -> tuple[dict[str, object] | None, bool]:
    """Parse tool-call argument text. Empty text means ``{}``.

    Returns:
        ``(arguments, invalid)``: the object, or ``(None, True)`` when the text is
        not a JSON object.
    """
    if not text.strip():
        return {}, False
    try:
        value = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None, True
    if not isinstance(value, dict):
        return None, True
    return value, False


def tool_call(
    part: int, tool_call_id: str, name: str, text: str, *, provider_executed: bool = False
) -> ToolCall:
    """Build the complete :class:`ToolCall` from accumulated argument text."""
    arguments, invalid = parse_arguments(text)
    return ToolCall(
        part=part,
        tool_call_id=tool_call_id,
        name=name,
        arguments=arguments,
        provider_executed=provider_executed,
        arguments_text=text if invalid else None,
        invalid=invalid,
    )


def error_for_status(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> ProviderError:
    """Map an upstream HTTP status to a :class:`ProviderError`.

    429 → ``provider_rate_limited``; 529 and 503 → ``provider_overloaded``;
    408 and 504 → ``provider_timeout``; other 4xx → ``invalid_request`` (not
    retryable); other 5xx → ``provider_error`` (retryable). ``headers`` (the
    provider's response headers) give ``retry_after`` (:func:`retry_after_seconds`).
    """
    code: ErrorCode = "provider_error"
    if status == 429:
        code = "provider_rate_limited"
    elif status in (503, 529):
        code = "provider_overloaded"
    elif status in (408, 504):
        code = "provider_timeout"
    elif 400 <= status < 500:
        code = "invalid_request"
    wait = retry_after_seconds(headers or {})
    retryable = code != "invalid_request"
    return ProviderError(code, message, retryable=retryable, status=status, retry_after=wait)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds a provider asked to wait: ``retry-after-ms`` (OpenAI's, milliseconds) or
    ``retry-after`` in delay-seconds (RFC 9110 §10.2.3; an HTTP-date is ignored).

    Args:
        headers: response headers with lower-case names (httpx's are case-insensitive).

    Returns:
        Seconds ≥ 0, or ``None`` when neither header holds a number.
    """
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        try:
            value = float(raw) / scale if raw is not None else math.nan
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def connection_error(timed_out: bool) -> ProviderError:
    """The retryable error for a request to the provider that timed out
    (``provider_timeout``) or whose connection failed (``provider_error``)."""
    if timed_out:
        return ProviderError(
            "provider_timeout", "the provider did not answer in time", retryable=True
        )
    return ProviderError("provider_error", "the connection to the provider failed", retryable=True)


def error_for_code(kind: str | None, message: str | None) -> ProviderError:
    """Map an in-band error (an error event inside an HTTP 200 stream) to a :class:`ProviderError`.

    Args:
        kind: the provider's error type or code (``overloaded_error``,
            ``rate_limit_exceeded``, ``server_error`` …), or ``None``.
        message: the provider's own message, or ``None``.

    Returns:
        ``provider_overloaded`` for "overloaded" kinds, ``provider_rate_limited`` for
        "rate_limit" kinds, ``provider_timeout`` for "timeout" kinds, else
        ``provider_error``; all retryable.
    """
    kind = kind or ""
    text = message or (f"the provider reported an error ({kind})" if kind else "")
    text = text or "the provider reported an error"
    lowered = kind.lower()
    code: ErrorCode = "provider_error"
    if "overloaded" in lowered:
        code = "provider_overloaded"
    elif "rate_limit" in lowered:
        code = "provider_rate_limited"
    elif "timeout" in lowered:
        code = "provider_timeout"
    return ProviderError(code, text, retryable=True)


def finish(reason: FinishReason, provider_reason: str | None, usage: Usage | None) -> Finish:
    """Build the terminal :class:`Finish` event with the last usage seen."""
    return Finish(
        finish_reason=reason,
        provider_finish_reason=provider_reason,
        usage=usage.as_token_usage() if usage is not None else None,
    )
