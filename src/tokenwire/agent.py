"""The agent loop: model → tool calls → server-side tools → model again, in one stream.

:class:`Agent` wraps a provider: :meth:`Agent.stream` is what the producer
iterates instead of the provider's own stream when a request names server-side
tools (:mod:`tokenwire.tools`). Each model call is a *step*:

``step-start`` · the provider's events (their ``part`` shifted after the earlier
steps' parts) · ``tool-result`` per tool call · ``step-finish`` (that step's own
``usage``) … and one ``finish`` at the end, whose ``usage`` (like every ``usage``
event in between) sums all steps.

- The tools a step calls run in parallel (an :mod:`anyio` task group), each with
  ``tool_timeout`` seconds; an exception, a timeout, arguments that do not match
  the tool's schema, invalid JSON or a tool not offered become a ``tool-result``
  with ``is_error: true`` and a short message for the model; the loop goes on.
- The loop ends when a step calls no tool (its ``finish``), or after ``max_steps``
  steps: the last step's tools still run, and the stream finishes with
  ``finish_reason: "tool_calls"``.
- ``step-start`` is sent with the step's first provider event, so the producer's
  retry of a provider failing before its first event (DESIGN §5) still applies to
  the first step.
- A stop cancels the producer's task, which cancels the task group: running async
  tools are cancelled; a sync tool's thread runs to its end, its result dropped.

Also here: :func:`history`, the provider messages of a stored conversation, with
the assistant's tool calls and the tools' results (so the next turn sees them).
Event semantics follow the AI SDK's multi-step ``streamText`` (``start-step`` /
``finish-step``, ``tool-output-available``): https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import msgspec

from tokenwire.events import (
    Event,
    Finish,
    ReasoningDelta,
    Source,
    StepFinish,
    StepStart,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Usage,
)
from tokenwire.providers.base import GenerationRequest, Message, MessageToolCall, Provider
from tokenwire.tools import ToolArgumentsError, ToolRegistry, output_text

__all__ = ["DEFAULT_MAX_STEPS", "MAX_STEPS_LIMIT", "Agent", "history", "source"]

logger = logging.getLogger("tokenwire.agent")

DEFAULT_MAX_STEPS = 5
"""Model calls of one generation with tools, unless the request says otherwise."""
MAX_STEPS_LIMIT = 50
"""The largest ``max_steps`` a request may ask for."""

_PARTED = (TextDelta, ReasoningDelta, ToolCallStart, ToolCallDelta, ToolCall, Source)


class Agent:
    """Runs the agent loop around ``provider``.

    Args:
        provider: the model.
        registry: where tools are found.
        allowed: the names the request offers the model (others called → error result).
        max_steps: most model calls (≥ 1).
        tool_timeout: seconds one tool may run.
    """

    def __init__(
        self,
        provider: Provider,
        registry: ToolRegistry,
        allowed: Sequence[str],
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        tool_timeout: float = 30.0,
    ) -> None:
        self.provider = provider
        self.registry = registry
        self.allowed = frozenset(allowed)
        self.max_steps = max(1, max_steps)
        self.tool_timeout = tool_timeout

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """The whole loop's events; ends with one ``finish`` (or returns without one
        when the provider's stream ended without its ``finish``). Provider errors
        propagate."""
        messages = list(request.messages)
        total = TokenUsage()
        offset = 0  # part index of this step's part 0
        for step in range(1, self.max_steps + 1):
            outcome = _StepOutcome(offset)
            step_request = msgspec.structs.replace(request, messages=messages)
            async for event in self._step(step, step_request, total, outcome):
                yield event
            if outcome.finish is None:
                return
            total = _add(total, outcome.usage)
            calls = [c for c in outcome.calls if not c.provider_executed]
            if not calls:
                yield StepFinish(step=step, finish_reason=outcome.finish.finish_reason,
                                 usage=outcome.usage)  # fmt: skip
                yield msgspec.structs.replace(outcome.finish, usage=total, seq=0)
                return
            results = await self.run_tools(calls)
            for i, (call, (output, is_error)) in enumerate(zip(calls, results, strict=True)):
                yield ToolResult(
                    part=outcome.top + i,
                    tool_call_id=call.tool_call_id,
                    output=output,
                    is_error=is_error,
                )
            offset = outcome.top + len(calls)
            yield StepFinish(step=step, finish_reason="tool_calls", usage=outcome.usage)
            messages += _step_messages(outcome.text, calls, results)
        yield Finish(finish_reason="tool_calls", usage=total)

    async def _step(
        self, step: int, request: GenerationRequest, total: TokenUsage, outcome: _StepOutcome
    ) -> AsyncIterator[Event]:
        """One model call: its events, parts shifted, usage summed with ``total``."""
        stream = self.provider.stream(request)
        started = False
        try:
            async for event in stream:
                if not started:
                    started = True
                    yield StepStart(step=step)
                if isinstance(event, Finish):
                    outcome.finish = event
                    outcome.usage = event.usage or outcome.usage
                    return
                if isinstance(event, Usage):
                    outcome.usage = event.as_token_usage()
                    yield Usage(**msgspec.structs.asdict(_add(total, outcome.usage)))
                    continue
                if isinstance(event, _PARTED):
                    event = msgspec.structs.replace(event, part=outcome.offset + event.part)
                    outcome.top = max(outcome.top, event.part + 1)
                    if isinstance(event, TextDelta):
                        outcome.text.append(event.delta)
                    elif isinstance(event, ToolCall):
                        outcome.calls.append(event)
                yield event
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()

    async def run_tools(self, calls: Sequence[ToolCall]) -> list[tuple[object, bool]]:
        """``(output, is_error)`` per call, in order; the tools run in parallel."""
        results: list[tuple[object, bool]] = [(None, True)] * len(calls)

        async def run(i: int, call: ToolCall) -> None:
            results[i] = await self._run_one(call)

        async with anyio.create_task_group() as group:
            for i, call in enumerate(calls):
                group.start_soon(run, i, call)
        return results

    async def _run_one(self, call: ToolCall) -> tuple[object, bool]:
        tool = self.registry.get(call.name) if call.name in self.allowed else None
        if tool is None:
            return f"unknown tool {call.name!r}", True
        if call.invalid or call.arguments is None:
            return f"the arguments for {call.name} are not valid JSON", True
        try:
            with anyio.fail_after(self.tool_timeout):
                return await tool.call(call.arguments), False
        except TimeoutError:
            return f"the tool {call.name} timed out after {self.tool_timeout:g} s", True
        except ToolArgumentsError as exc:
            return str(exc), True
        except Exception as exc:
            logger.warning("tool %s failed", call.name, exc_info=True)
            return f"the tool {call.name} failed ({type(exc).__name__})", True


def source(
    provider: Provider,
    registry: ToolRegistry,
    allowed: Sequence[str],
    max_steps: int,
    tool_timeout: float,
) -> Callable[[GenerationRequest], AsyncIterator[Event]]:
    """What a producer iterates for a generation: the provider's own stream when it
    names no server-side tool (``allowed`` empty), else the :class:`Agent` loop's."""
    if not allowed:
        return provider.stream
    agent = Agent(provider, registry, allowed, max_steps=max_steps, tool_timeout=tool_timeout)
    return agent.stream


class _StepOutcome:
    """What one step produced (filled in by :meth:`Agent._step`)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.top = offset  # one past the highest part index used
        self.finish: Finish | None = None
        self.usage: TokenUsage | None = None
        self.text: list[str] = []
        self.calls: list[ToolCall] = []


def _add(total: TokenUsage, usage: TokenUsage | None) -> TokenUsage:
    if usage is None:
        return total
    return TokenUsage(
        input_tokens=total.input_tokens + usage.input_tokens,
        output_tokens=total.output_tokens + usage.output_tokens,
        reasoning_tokens=total.reasoning_tokens + usage.reasoning_tokens,
        cached_input_tokens=total.cached_input_tokens + usage.cached_input_tokens,
    )


def _step_messages(
    text: list[str], calls: Sequence[ToolCall], results: Sequence[tuple[object, bool]]
) -> list[Message]:
    """The assistant message of a step that called tools, and one tool message per call."""
    assistant = Message(
        "assistant",
        "".join(text),
        tool_calls=tuple(MessageToolCall(c.tool_call_id, c.name, _arguments(c)) for c in calls),
    )
    return [
        assistant,
        *(
            Message(
                "tool",
                output_text(output),
                tool_call_id=call.tool_call_id,
                name=call.name,
                is_error=is_error,
            )
            for call, (output, is_error) in zip(calls, results, strict=True)
        ),
    ]


def _arguments(call: ToolCall) -> str:
    if call.arguments is None:
        return call.arguments_text or "{}"
    return json.dumps(call.arguments, ensure_ascii=False, separators=(",", ":"))


def history(stored: Sequence[Any], new: Sequence[Message] = ()) -> list[Message]:
    """The provider messages of stored messages (objects with ``role`` and ``parts``):
    user and assistant text, and for every tool call that has a ``tool-result`` part
    (in the same message, a later stored ``tool`` message, or a ``tool`` message of
    ``new``: a client's results), an assistant message with its ``tool_calls``
    followed by the ``tool`` messages (calls without a result, e.g. a stopped loop's,
    are left out: providers refuse an unanswered call); a stored ``tool`` message
    gives its ``tool-result`` parts. System messages and empty ones are left out."""
    answered = {
        p.get("tool_call_id") for m in stored for p in m.parts if p.get("type") == "tool-result"
    }
    answered.update(m.tool_call_id for m in new if m.role == "tool")
    out: list[Message] = []
    for message in stored:
        parts: list[dict[str, Any]] = message.parts
        if message.role == "user":
            text = _text(parts)
            if text:
                out.append(Message("user", text))
        elif message.role == "assistant":
            out.extend(_assistant_messages(parts, answered))
        elif message.role == "tool":  # only its tool-result parts
            results = [p for p in parts if p.get("type") == "tool-result"]
            out.extend(m for m in _assistant_messages(results, answered) if m.role == "tool")
    return out


def _text(parts: Sequence[dict[str, Any]]) -> str:
    return "".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


def _assistant_messages(parts: Sequence[dict[str, Any]], answered: set[Any]) -> list[Message]:
    out: list[Message] = []
    text: list[str] = []
    calls: list[MessageToolCall] = []

    def flush() -> None:
        if text or calls:
            out.append(Message("assistant", "".join(text), tool_calls=tuple(calls)))
        text.clear()
        calls.clear()

    for part in parts:
        kind = part.get("type")
        if kind == "text":
            text.append(str(part.get("text", "")))
        elif kind == "tool-call" and part.get("tool_call_id") in answered:
            arguments = part.get("arguments")
            raw = part.get("arguments_text") if arguments is None else json.dumps(arguments)
            calls.append(MessageToolCall(str(part["tool_call_id"]), str(part.get("name", "")),
                                         str(raw or "{}")))  # fmt: skip
        elif kind == "tool-result":
            flush()
            out.append(
                Message(
                    "tool",
                    output_text(part.get("output")),
                    tool_call_id=str(part.get("tool_call_id")),
                    name=str(part.get("name") or "") or None,
                    is_error=bool(part.get("is_error")),
                )
            )
    flush()
    return [m for m in out if m.content or m.tool_calls or m.role == "tool"]
