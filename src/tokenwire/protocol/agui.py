"""AG-UI (Agent User Interaction protocol) adapter, sans-I/O.

Two halves, both pure:

- :func:`parse_run_input` validates the ``RunAgentInput`` an AG-UI client POSTs
  (``HttpAgent`` in ``@ag-ui/client``, CopilotKit's runtime) with the
  ``ag-ui-protocol`` package's own pydantic model and turns it into :class:`AguiRun`:
  the messages for the model (and which of them are new to a known thread), the
  client's tools, the system prompt, and the model and params from
  ``forwardedProps``. (:mod:`tokenwire.server.agui` maps them onto tokenwire's
  provider types, a layer this module does not import.)
- :class:`AguiEncoder` turns tokenwire events (DESIGN §2) into the package's event
  models; :func:`frame_events` frames them with its ``EventEncoder``
  (``data: <json>\\n\\n``).

Sources: the AG-UI docs, "Events" and "Types"
(https://docs.ag-ui.com/concepts/events, https://docs.ag-ui.com/sdk/python/core/types),
and the ``ag-ui-protocol`` 1.0 package (``ag_ui.core``: the generated models of
``spec/1.0/schema.json``; ``ag_ui.encoder.EventEncoder``). Protocol 1.0 replaced the
``THINKING_*`` events by ``REASONING_*``, which is what reasoning maps to here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic
from ag_ui.core import (
    AssistantMessage,
    BaseEvent,
    DeveloperMessage,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    SystemMessage,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    Tool,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui.core import (
    TokenUsage as AguiUsage,
)
from ag_ui.encoder import EventEncoder

from tokenwire.errors import InvalidRequestError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Start,
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

__all__ = ["AguiEncoder", "AguiRun", "ChatMessage", "frame_events", "parse_run_input", "text_of"]

ChatMessage = UserMessage | AssistantMessage | ToolMessage
"""The messages a model is sent (system and developer ones become the system prompt)."""

_ENCODER = EventEncoder()
_FORWARDED: dict[str, tuple[Callable[[object], bool], str]] = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "system": (lambda v: isinstance(v, str), "a string"),
    "params": (lambda v: isinstance(v, dict), "an object"),
    "tools": (
        lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "a list of tool names",
    ),
    "max_steps": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
}


@dataclass(frozen=True)
class AguiRun:
    """What a ``POST /api/agui`` asks for.

    Attributes:
        thread_id: ``threadId`` = the tokenwire conversation id.
        run_id: ``runId``, echoed in ``RUN_STARTED`` / ``RUN_FINISHED``.
        history: the request's user, assistant and tool messages, oldest first, to
            seed a thread tokenwire does not know yet.
        new: the messages that may be new for a thread tokenwire knows: the
            trailing tool results with the assistant message whose calls they
            answer, else the last user message (see :func:`parse_run_input`).
        system: the ``system`` / ``developer`` messages, ``forwardedProps.system``
            and the ``context`` entries, joined by blank lines; ``None`` if none.
        tools: the client's tools (``tools[]``), for the model to call.
        model: ``forwardedProps.model`` (``"provider:model"``), if sent.
        params: ``forwardedProps.params`` (provider parameters), if sent.
        server_tools: ``forwardedProps.tools``: names of registered server-side
            tools (the agent loop, docs/tools.md), as the native body's ``tools``.
        max_steps: ``forwardedProps.max_steps`` (most model calls), if sent.
    """

    thread_id: str
    run_id: str
    history: list[ChatMessage]
    new: list[ChatMessage]
    system: str | None = None
    tools: list[Tool] = field(default_factory=list)
    model: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    server_tools: list[str] = field(default_factory=list)
    max_steps: int | None = None


def parse_run_input(body: object) -> AguiRun:
    """Validate a ``RunAgentInput`` body (camelCase, as AG-UI clients send it).

    Messages: ``user`` (text, or the text parts of a content list), ``assistant``
    (``content`` and ``toolCalls``), ``tool`` (``toolCallId``, ``content``; an
    ``error`` marks a failed call), ``system`` and ``developer`` (into the system
    prompt). ``state`` is accepted and not used. ``forwardedProps`` may carry
    ``model``, ``system`` (strings), ``params`` (an object), ``tools`` (server-side
    tool names) and ``max_steps`` (an integer, checked by the engine), as the native
    body names them; other keys are ignored.

    Raises:
        InvalidRequestError: naming the field (``messages.0.content``,
            ``forwardedProps.model`` …): the body is not a ``RunAgentInput``, a
            ``threadId`` is empty or over 200 characters, the messages end neither
            with a user message nor with tool results, or a forwarded prop has the
            wrong type.
    """
    try:
        run = RunAgentInput.model_validate(body)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidRequestError(where, first["msg"]) from None
    if not run.thread_id or len(run.thread_id) > 200:
        raise InvalidRequestError("threadId", "must be a non-empty string (at most 200 chars)")
    system: list[str] = []
    history: list[ChatMessage] = []
    for message in run.messages:
        if isinstance(message, SystemMessage | DeveloperMessage):
            system.append(message.content)
        elif isinstance(message, UserMessage | AssistantMessage | ToolMessage):
            history.append(message)  # activity and reasoning messages are not sent
    forwarded = _forwarded(run.forwarded_props)
    if isinstance(forwarded.get("system"), str):
        system.insert(0, str(forwarded["system"]))
    system += [f"{c.description}: {c.value}" for c in run.context or ()]
    return AguiRun(
        thread_id=run.thread_id,
        run_id=run.run_id,
        history=history,
        new=_new_messages(history),
        system="\n\n".join(system) if system else None,
        tools=list(run.tools or ()),
        model=forwarded.get("model"),  # type: ignore[arg-type]
        params=dict(forwarded.get("params") or {}),  # type: ignore[call-overload]
        server_tools=list(forwarded.get("tools") or ()),  # type: ignore[call-overload]
        max_steps=forwarded.get("max_steps"),  # type: ignore[arg-type]
    )


def text_of(content: object) -> str:
    """The text of a message's ``content``: the string, or its ``text`` parts joined."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else []
    return "".join(str(getattr(p, "text", "")) for p in parts if getattr(p, "type", "") == "text")


def _new_messages(history: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The tail a known thread may not have seen: trailing tool results with the
    assistant message that called them, else the last user message. (The thread may
    store that assistant message already, its answer: the server leaves out what it
    stores.)"""
    end = len(history)
    start = end
    while start > 0 and history[start - 1].role == "tool":
        start -= 1
    if start < end:
        if start > 0 and history[start - 1].role == "assistant":
            start -= 1
        return list(history[start:])
    if not history or history[-1].role != "user":
        raise InvalidRequestError(
            "messages", "must end with a user message or with tool messages (tool results)"
        )
    return [history[-1]]


def _forwarded(props: object) -> dict[str, object]:
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise InvalidRequestError("forwardedProps", "must be an object")
    out: dict[str, object] = {}
    for key, (valid, kind) in _FORWARDED.items():
        value = props.get(key)
        if value is None:
            continue
        if not valid(value):
            raise InvalidRequestError(f"forwardedProps.{key}", f"must be {kind}")
        out[key] = value
    return out


class AguiEncoder:
    """Events → AG-UI events, for one response (it keeps message and step state).

    Feed every event of a stream from ``seq`` 1. ``start`` → ``RUN_STARTED``; text
    parts → ``TEXT_MESSAGE_START/CONTENT/END`` (the first text part's ``messageId``
    is tokenwire's ``message_id``, later ones ``<message_id>-<part>``); reasoning
    parts → ``REASONING_START``, ``REASONING_MESSAGE_START/CONTENT/END``,
    ``REASONING_END``; tool calls → ``TOOL_CALL_START/ARGS/END`` (parent: the current
    text message); ``tool-result`` → ``TOOL_CALL_RESULT``; ``step-start`` /
    ``step-finish`` → ``STEP_STARTED`` / ``STEP_FINISHED`` (``stepName``
    ``step-<n>``). The terminal event closes whatever is open, then: ``finish`` →
    ``RUN_FINISHED`` (outcome ``success``, ``pendingToolCallIds`` = calls without a
    result and not run by the provider, which the client is to run), ``cancelled`` →
    ``RUN_FINISHED`` (outcome ``cancelled``), ``error`` → ``RUN_ERROR`` (``message``,
    ``code``); both carry the last ``usage`` (one ``TokenUsage``, with the model) when
    there was one. Sources map to nothing.

    Args:
        thread_id: the ``threadId`` to echo.
        run_id: the ``runId`` to echo.
    """

    def __init__(self, thread_id: str, run_id: str) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self._message_id = ""
        self._text_id: str | None = None  # the latest text message (tool calls' parent)
        self._open: tuple[str, str] | None = None  # (kind, id) of the open text/reasoning
        self._tools: dict[str, bool] = {}  # tool call id -> arguments sent
        self._ended: list[str] = []  # tool calls ended, in order
        self._results: set[str] = set()  # calls answered here, or run by the provider
        self._steps: list[str] = []  # open steps
        self._model = ""
        self._usage: AguiUsage | None = None  # the latest cumulative usage

    def frame(self, events: Sequence[Event]) -> bytes:
        """The SSE bytes for ``events`` (:func:`frame_events` of :meth:`encode`;
        :class:`~tokenwire.protocol.sse.EventEncoder`)."""
        return frame_events(self.encode(events))

    def encode(self, events: Iterable[Event]) -> list[BaseEvent]:
        """The AG-UI events for ``events`` (possibly none)."""
        out: list[BaseEvent] = []
        for event in events:
            self._encode(event, out)
        return out

    def _encode(self, event: Event, out: list[BaseEvent]) -> None:
        if isinstance(event, Start):
            self._message_id, self._model = event.message_id, event.model
            out.append(RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id))
        elif isinstance(event, TextDelta):
            self._text(event, out)
        elif isinstance(event, ReasoningDelta):
            self._reasoning(event, out)
        elif isinstance(event, ToolCallStart):
            self._tool_start(event.tool_call_id, event.name, out)
            if event.provider_executed:
                self._results.add(event.tool_call_id)
        elif isinstance(event, ToolCallDelta):
            self._tool_start(event.tool_call_id, "", out)
            self._tools[event.tool_call_id] = True
            out.append(ToolCallArgsEvent(tool_call_id=event.tool_call_id, delta=event.delta))
        elif isinstance(event, ToolCall):
            self._tool_call(event, out)
        elif isinstance(event, ToolResult):
            self._tool_result(event, out)
        elif isinstance(event, StepStart):
            self._close(out)
            self._steps.append(f"step-{event.step}")
            out.append(StepStartedEvent(step_name=self._steps[-1]))
        elif isinstance(event, StepFinish):
            self._close(out)
            name = f"step-{event.step}"
            if name in self._steps:
                self._steps.remove(name)
                out.append(StepFinishedEvent(step_name=name))
        elif isinstance(event, Usage):
            self._count(event)
        elif isinstance(event, Finish | Error | Cancelled):
            if isinstance(event, Finish) and event.usage is not None:
                self._count(event.usage)
            self._end(event, out)

    def _count(self, usage: Usage | TokenUsage) -> None:
        self._usage = AguiUsage(
            model=self._model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.input_tokens + usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cached_input_tokens=usage.cached_input_tokens,
        )

    def _text(self, event: TextDelta, out: list[BaseEvent]) -> None:
        if self._open is None or self._open[0] != f"text-{event.part}":
            self._close(out)
            first = self._text_id is None
            message_id = self._message_id if first else f"{self._message_id}-{event.part}"
            self._open = (f"text-{event.part}", message_id)
            self._text_id = message_id
            out.append(TextMessageStartEvent(message_id=message_id, role="assistant"))
        out.append(TextMessageContentEvent(message_id=self._open[1], delta=event.delta))

    def _reasoning(self, event: ReasoningDelta, out: list[BaseEvent]) -> None:
        if self._open is None or self._open[0] != f"reasoning-{event.part}":
            self._close(out)
            reasoning_id = f"{self._message_id}-reasoning-{event.part}"
            self._open = (f"reasoning-{event.part}", reasoning_id)
            out.append(ReasoningStartEvent(message_id=reasoning_id))
            out.append(ReasoningMessageStartEvent(message_id=reasoning_id))
        out.append(ReasoningMessageContentEvent(message_id=self._open[1], delta=event.delta))

    def _tool_start(self, call_id: str, name: str, out: list[BaseEvent]) -> None:
        if call_id in self._tools:
            return
        self._close(out)
        self._tools[call_id] = False
        parent = self._text_id if self._text_id is not None else self._message_id
        out.append(
            ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name, parent_message_id=parent)
        )

    def _tool_call(self, event: ToolCall, out: list[BaseEvent]) -> None:
        call_id = event.tool_call_id
        self._tool_start(call_id, event.name, out)
        if event.provider_executed:
            self._results.add(call_id)
        if call_id in self._ended:
            return
        if not self._tools[call_id]:  # no deltas: the whole argument text at once
            text = event.arguments_text
            if text is None:
                text = json.dumps(event.arguments or {}, ensure_ascii=False)
            out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=text))
        self._ended.append(call_id)
        out.append(ToolCallEndEvent(tool_call_id=call_id))

    def _tool_result(self, event: ToolResult, out: list[BaseEvent]) -> None:
        self._close(out)
        self._results.add(event.tool_call_id)
        output = event.output
        content = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        out.append(
            ToolCallResultEvent(
                message_id=f"{self._message_id}-result-{event.tool_call_id}",
                tool_call_id=event.tool_call_id,
                content=content,
                role="tool",
            )
        )

    def _close(self, out: list[BaseEvent]) -> None:
        if self._open is None:
            return
        kind, message_id = self._open
        self._open = None
        if kind.startswith("text"):
            out.append(TextMessageEndEvent(message_id=message_id))
        else:
            out.append(ReasoningMessageEndEvent(message_id=message_id))
            out.append(ReasoningEndEvent(message_id=message_id))

    def _end(self, event: Finish | Error | Cancelled, out: list[BaseEvent]) -> None:
        self._close(out)
        for call_id, _ in list(self._tools.items()):  # a call cut short is ended too
            if call_id not in self._ended:
                self._ended.append(call_id)
                out.append(ToolCallEndEvent(tool_call_id=call_id))
        while self._steps:
            out.append(StepFinishedEvent(step_name=self._steps.pop()))
        usage = None if self._usage is None else [self._usage]
        if isinstance(event, Error):
            out.append(RunErrorEvent(message=event.message, code=event.code, usage=usage))
            return
        outcome: Any
        if isinstance(event, Cancelled):
            outcome = RunFinishedCancelledOutcome()
        else:
            pending = [c for c in self._ended if c not in self._results]
            outcome = RunFinishedSuccessOutcome(pending_tool_call_ids=pending or None)
        out.append(
            RunFinishedEvent(
                thread_id=self.thread_id, run_id=self.run_id, outcome=outcome, usage=usage
            )
        )


def frame_events(events: Iterable[BaseEvent]) -> bytes:
    """``data: <json>\\n\\n`` per event, by the package's ``EventEncoder`` (camelCase,
    fields without a value left out), UTF-8."""
    return "".join(_ENCODER.encode(e) for e in events).encode()
