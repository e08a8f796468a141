"""``fake:`` models: scripted, deterministic, no network (for tests and demos).

The model name picks the script; ``request.params`` steer it:

- ``fake:echo``: answers with the last user message.
- ``fake:lorem``: answers with ``tokens`` (default 20) words.
- ``fake:think``: reasoning ``"Let me think."`` then the echo.
- ``fake:tool``: a ``get_weather`` tool call whose arguments arrive in pieces.
- ``fake:tools``: an agent step. When the history ends with tool results, answers
  with their text (joined by a space); otherwise, when tools are offered
  (``request.tools``), calls the first one with ``params.tool_args`` (an object,
  default ``{}``) and finishes with ``tool_calls``; with no tools offered, echoes.

Params (all optional): ``tokens`` (int, lorem length); ``delay_ms`` (float, pause
before each delta); ``text`` (str, the answer, overriding the script's);
``fail_before`` (``"rate_limited"``, ``"overloaded"`` or ``"error"``: raise that
:class:`ProviderError` before the first event, the first ``fail_times`` calls
only, default every call); ``fail_after`` (int N: a retryable ``provider_error``
after N deltas); ``crash_after`` (int N: a plain ``RuntimeError``, standing for a
bug in our code); ``stall_after`` (int N: wait forever after N deltas, until
cancelled). Deltas are cut at character boundaries, so multi-byte text is safe.

Bounds (:data:`LIMITS`, checked by :meth:`FakeProvider.check` before a
generation is created, so the server answers 422): ``tokens`` 0 … 10,000,
``delay_ms`` 0 … 60,000, ``text`` at most 20,000 characters, the ``*_after`` and
``fail_times`` counts 0 … 1,000,000; numbers must be finite. The script yields to
the event loop after every delta, so even 10,000 deltas without delay never
hold the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Mapping

import msgspec

from tokenwire.errors import InvalidRequestError, ProviderError
from tokenwire.events import ReasoningDelta, TextDelta, ToolCallDelta, ToolCallStart, Usage
from tokenwire.providers.base import (
    GenerationRequest,
    Parts,
    ProviderEvent,
    error_for_status,
    finish,
    tool_call,
)

__all__ = ["LIMITS", "MAX_TEXT_CHARS", "FakeProvider"]

LIMITS: dict[str, tuple[float, float]] = {
    "tokens": (0, 10_000),
    "delay_ms": (0, 60_000),
    "fail_times": (0, 1_000_000),
    "fail_after": (0, 1_000_000),
    "crash_after": (0, 1_000_000),
    "stall_after": (0, 1_000_000),
}
"""Inclusive bounds of the numeric params."""
MAX_TEXT_CHARS = 20_000
"""Longest ``text`` param, characters."""

_LOREM = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
]
_FAILURES = {"rate_limited": 429, "overloaded": 529, "error": 500}


class FakeProvider:
    """A scripted :class:`~tokenwire.providers.base.Provider`.

    Attributes:
        calls: how many times :meth:`stream` was started (retries included).
    """

    def __init__(self) -> None:
        self.calls = 0

    def check(self, model: str, params: Mapping[str, object]) -> None:
        """Refuse params out of their bounds (module docstring) before anything starts.

        Raises:
            InvalidRequestError: naming the param (``params.tokens`` …).
        """
        for key, (low, high) in LIMITS.items():
            value = params.get(key)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise InvalidRequestError(
                    f"params.{key}", f"must be a number from {low:g} to {high:g}"
                )
        tool_args = params.get("tool_args")
        if tool_args is not None and not isinstance(tool_args, dict):
            raise InvalidRequestError("params.tool_args", "must be a JSON object")
        text = params.get("text")
        if text is not None and (not isinstance(text, str) or len(text) > MAX_TEXT_CHARS):
            raise InvalidRequestError(
                "params.text", f"must be a string of at most {MAX_TEXT_CHARS} characters"
            )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        self.calls += 1
        params = request.params
        try:
            self.check(request.model, params)
        except InvalidRequestError as exc:
            raise ProviderError("invalid_request", str(exc)) from None
        failure = params.get("fail_before")
        if isinstance(failure, str) and self.calls <= _int(params, "fail_times", 1_000_000):
            raise error_for_status(_FAILURES.get(failure, 500), f"fake {failure}")
        delay = float(_number(params, "delay_ms", 0)) / 1000
        parts = Parts()
        count = 0
        events = _script(request, parts)
        for event in events:
            if isinstance(event, TextDelta | ReasoningDelta | ToolCallDelta):
                if count == _int(params, "stall_after", -1):
                    await asyncio.Event().wait()
                if count == _int(params, "fail_after", -1):
                    raise ProviderError("provider_error", "fake failure mid-stream", retryable=True)
                if count == _int(params, "crash_after", -1):
                    raise RuntimeError("fake crash")
                count += 1
                await asyncio.sleep(delay)  # sleep(0) too: let the loop run between deltas
            yield event
        usage = Usage(input_tokens=_words(request), output_tokens=count)
        yield usage
        calls_tool = any(isinstance(event, ToolCallStart) for event in events)
        yield finish("tool_calls" if calls_tool else "stop", None, usage)


def _script(request: GenerationRequest, parts: Parts) -> list[ProviderEvent]:
    text = request.params.get("text")
    last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    if request.model == "tool":
        part = parts.index("tool", "call_1")
        args = '{"city": "Paris", "unit": "celsius"}'
        pieces = [args[i : i + 7] for i in range(0, len(args), 7)]
        return [
            ToolCallStart(part=part, tool_call_id="call_1", name="get_weather"),
            *(ToolCallDelta(part=part, tool_call_id="call_1", delta=p) for p in pieces),
            tool_call(part, "call_1", "get_weather", args),
        ]
    if request.model == "tools":
        results = _trailing_tool_results(request)
        if results:
            text = " ".join(results)
        elif request.tools:
            return _first_tool_call(request, parts)
    events: list[ProviderEvent] = []
    if request.model == "think":
        part = parts.index("reasoning")
        events += [ReasoningDelta(part=part, delta=w) for w in ("Let ", "me ", "think.")]
    if isinstance(text, str):
        answer = text
    elif request.model == "lorem":
        words = itertools.islice(itertools.cycle(_LOREM), _int(request.params, "tokens", 20))
        answer = " ".join(words)
    else:
        answer = last_user
    part = parts.index("text")
    return events + [TextDelta(part=part, delta=piece) for piece in _pieces(answer)]


def _trailing_tool_results(request: GenerationRequest) -> list[str]:
    """The contents of the tool messages that end the history, oldest first."""
    results: list[str] = []
    for message in reversed(request.messages):
        if message.role != "tool":
            break
        results.insert(0, message.content)
    return results


def _first_tool_call(request: GenerationRequest, parts: Parts) -> list[ProviderEvent]:
    """A call of the first offered tool, numbered after the history's earlier calls."""
    earlier = sum(len(m.tool_calls) for m in request.messages)
    call_id = f"call_{earlier + 1}"
    name = request.tools[0].name
    tool_args = request.params.get("tool_args")
    args = msgspec.json.encode(tool_args if isinstance(tool_args, dict) else {}).decode()
    part = parts.index("tool", call_id)
    return [
        ToolCallStart(part=part, tool_call_id=call_id, name=name),
        ToolCallDelta(part=part, tool_call_id=call_id, delta=args),
        tool_call(part, call_id, name, args),
    ]


def _pieces(text: str) -> list[str]:
    """Split into word-sized deltas (a space leads each word but the first)."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words) if w or i == 0] if text else []


def _number(params: dict[str, object], key: str, default: float) -> float:
    value = params.get(key, default)
    return float(value) if isinstance(value, int | float) else default


def _int(params: dict[str, object], key: str, default: int) -> int:
    return int(_number(params, key, default))


def _words(request: GenerationRequest) -> int:
    return sum(len(m.content.split()) for m in request.messages)
