"""Vercel AI SDK UI message stream protocol, sans-I/O (DESIGN §8).

Two halves, both pure:

- :func:`parse_dialect` reads the dialect header; the request body (``{id,
  messages, trigger, messageId}``) is parsed by :mod:`tokenwire.server.aisdk_request`
  (it maps to chat messages and tools, a layer to the right of this one).
- :class:`UIMessageStreamEncoder` turns tokenwire events (DESIGN §2) into UI
  message stream chunks (dicts), and :func:`frame_chunks` frames them as
  ``data: <json>\\n\\n``; the body ends with :data:`DONE`.

Sources: AI SDK docs, "Stream Protocols" → "UI Message Stream Protocol"
(https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol), "Chatbot Resume Streams"
(https://ai-sdk.dev/docs/ai-sdk-ui/chatbot-resume-streams), "Transport"
(https://ai-sdk.dev/docs/ai-sdk-ui/transport); and the ``ai`` package source,
``packages/ai/src/ui-message-stream/ui-message-chunks.ts`` (``uiMessageChunkSchema``,
the zod union every received chunk is validated against) and
``packages/ai/src/ui/http-chat-transport.ts`` (request body, reconnect URL),
as published in ``ai`` 5.0.277, 6.0.322 and 7.0.173.

Dialects (what each version's ``uiMessageChunkSchema`` accepts):

- ``5``: ``finish`` and ``abort`` are sent bare. ``finishReason`` and the abort
  ``reason`` were added late in the 5.x line and early 5.0 releases validated
  with strict objects, so the v5 dialect sends neither (deliberately conservative).
- ``6``: ``finish.finishReason`` ∈ stop, length, content-filter, tool-calls,
  error, other; ``abort.reason``.
- ``7``: as 6 (7 adds ``interrupted`` and ``reset-step``, which tokenwire does
  not need).

Errors are masked as ``streamText``'s default ``onError`` masks them: the
``error`` chunk carries ``"An error occurred."``, never the provider's message
(``packages/ai/src/generate-text/stream-text.ts``, ``toUIMessageStream``'s
``onError`` default). Pass ``mask_errors=False`` to send our error message,
which never carries stack traces (DESIGN §2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from tokenwire.errors import ChatRequestError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Source,
    Start,
    StepFinish,
    StepStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    is_terminal,
)
from tokenwire.protocol.sse import DONE, encode_sse

__all__ = [
    "DEFAULT_DIALECT",
    "DIALECTS",
    "DONE",
    "HEADERS",
    "MASKED_ERROR",
    "ChatRequestError",
    "Dialect",
    "UIMessageStreamEncoder",
    "frame_chunks",
    "parse_dialect",
]

Dialect = Literal["5", "6", "7"]
DIALECTS: tuple[Dialect, ...] = ("5", "6", "7")
DEFAULT_DIALECT: Dialect = "7"
"""The last frame of every response (the SDK's ``JsonToSseTransformStream`` ends so)."""
HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}
"""Response headers the SDK's ``UI_MESSAGE_STREAM_HEADERS`` add to the SSE ones."""
MASKED_ERROR = "An error occurred."
"""``errorText`` of ``streamText``'s default ``onError``."""

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
    "other": "other",
}

Chunk = dict[str, Any]


def parse_dialect(value: str | None) -> Dialect:
    """The dialect named by a header value (``"5"``, ``"6"``, ``"7"``, or ``v``-prefixed).

    Args:
        value: the header value; ``None`` or empty = :data:`DEFAULT_DIALECT`.

    Raises:
        ChatRequestError: any other value.
    """
    if value is None or not value.strip():
        return DEFAULT_DIALECT
    name = value.strip().lower().removeprefix("v").split(".")[0]
    for dialect in DIALECTS:
        if name == dialect:
            return dialect
    raise ChatRequestError(f"x-tokenwire-ai-sdk must be one of 5, 6, 7, not {value!r}", header=True)


class UIMessageStreamEncoder:
    """Events → UI message stream chunks, for one response (it keeps part state).

    Feed every event of a stream from ``seq`` 1 (a resumed response replays from
    ``start`` too, so the client sees the same ``messageId`` and rebuilds one
    message). Text and reasoning parts are opened with ``*-start`` on their first
    delta and closed with ``*-end`` when another part begins or the stream ends;
    ids are ``text-<part>`` / ``reasoning-<part>``. ``start-step`` follows
    ``start`` and ``finish-step`` precedes the terminal chunk, as ``streamText``
    does for a single model call; an agent loop's ``step-start`` / ``step-finish``
    events (server-side tools) open and close the further steps, and its
    ``tool-result`` events become ``tool-output-available`` (``output``) or, with
    ``is_error``, ``tool-output-error`` (``errorText``), as a multi-step
    ``streamText`` with executed tools sends them.

    Args:
        dialect: the AI SDK major version to satisfy.
        mask_errors: send :data:`MASKED_ERROR` instead of the error's message.
        message_id: the ``start`` chunk's ``messageId`` (the client's message this
            answer continues); ``None`` = the ``start`` event's ``message_id``.
    """

    def __init__(
        self,
        dialect: Dialect = DEFAULT_DIALECT,
        *,
        mask_errors: bool = True,
        message_id: str | None = None,
    ) -> None:
        self.dialect = dialect
        self.mask_errors = mask_errors
        self.message_id = message_id
        self._open: tuple[str, str] | None = None  # (kind, id) of the open text/reasoning part
        self._tools: set[str] = set()  # tool calls whose tool-input-start was sent
        self._stepped = False

    def frame(self, events: Sequence[Event]) -> bytes:
        """The SSE bytes for ``events`` (:func:`frame_chunks` of :meth:`encode`), then
        :data:`DONE` after a terminal event (:class:`~tokenwire.protocol.sse.EventEncoder`)."""
        body = frame_chunks(self.encode(events))
        return body + DONE if events and is_terminal(events[-1]) else body

    def encode(self, events: Iterable[Event]) -> list[Chunk]:
        """The chunks for ``events`` (possibly none: usage events map to nothing)."""
        out: list[Chunk] = []
        for event in events:
            self._encode(event, out)
        return out

    def _encode(self, event: Event, out: list[Chunk]) -> None:
        if isinstance(event, Start):
            out.append({"type": "start", "messageId": self.message_id or event.message_id})
            out.append({"type": "start-step"})
            self._stepped = True
        elif isinstance(event, TextDelta | ReasoningDelta):
            kind = "text" if isinstance(event, TextDelta) else "reasoning"
            part_id = f"{kind}-{event.part}"
            if self._open != (kind, part_id):
                self._close(out)
                out.append({"type": f"{kind}-start", "id": part_id})
                self._open = (kind, part_id)
            out.append({"type": f"{kind}-delta", "id": part_id, "delta": event.delta})
        elif isinstance(event, ToolCallStart):
            self._close(out)
            self._tool_start(event.tool_call_id, event.name, event.provider_executed, out)
        elif isinstance(event, ToolCallDelta):
            out.append(
                {
                    "type": "tool-input-delta",
                    "toolCallId": event.tool_call_id,
                    "inputTextDelta": event.delta,
                }
            )
        elif isinstance(event, ToolCall):
            self._close(out)
            self._tool_start(event.tool_call_id, event.name, event.provider_executed, out)
            out.append(_tool_call(event))
        elif isinstance(event, Source):
            self._close(out)
            chunk: Chunk = {"type": "source-url", "sourceId": f"source-{event.part}"}
            chunk["url"] = event.url
            if event.title is not None:
                chunk["title"] = event.title
            out.append(chunk)
        elif isinstance(event, StepStart | StepFinish | ToolResult):
            self._step(event, out)
        elif isinstance(event, Finish | Error | Cancelled):
            self._end(event, out)

    def _step(self, event: StepStart | StepFinish | ToolResult, out: list[Chunk]) -> None:
        self._close(out)
        if isinstance(event, StepStart) and not self._stepped:
            out.append({"type": "start-step"})
            self._stepped = True
        elif isinstance(event, StepFinish) and self._stepped:
            out.append({"type": "finish-step"})
            self._stepped = False
        elif isinstance(event, ToolResult):
            chunk: Chunk = {"type": "tool-output-available", "toolCallId": event.tool_call_id}
            if event.is_error:
                chunk["type"] = "tool-output-error"
                chunk["errorText"] = event.output if isinstance(event.output, str) else "error"
            else:
                chunk["output"] = event.output
            out.append(chunk)

    def _tool_start(self, call_id: str, name: str, executed: bool, out: list[Chunk]) -> None:
        if call_id in self._tools:
            return
        self._tools.add(call_id)
        chunk: Chunk = {"type": "tool-input-start", "toolCallId": call_id, "toolName": name}
        if executed:
            chunk["providerExecuted"] = True
        out.append(chunk)

    def _close(self, out: list[Chunk]) -> None:
        if self._open is not None:
            kind, part_id = self._open
            out.append({"type": f"{kind}-end", "id": part_id})
            self._open = None

    def _end(self, event: Finish | Error | Cancelled, out: list[Chunk]) -> None:
        self._close(out)
        if self._stepped:
            out.append({"type": "finish-step"})
            self._stepped = False
        if isinstance(event, Finish):
            chunk: Chunk = {"type": "finish"}
            if self.dialect != "5":
                chunk["finishReason"] = _FINISH_REASONS.get(event.finish_reason, "other")
            out.append(chunk)
        elif isinstance(event, Error):
            text = MASKED_ERROR if self.mask_errors else event.message
            out.append({"type": "error", "errorText": text})
        else:
            abort: Chunk = {"type": "abort"}
            if self.dialect != "5":
                abort["reason"] = event.reason
            out.append(abort)


def _tool_call(event: ToolCall) -> Chunk:
    chunk: Chunk = {"type": "tool-input-available", "toolCallId": event.tool_call_id}
    chunk["toolName"] = event.name
    if event.invalid or event.arguments is None:
        chunk["type"] = "tool-input-error"
        chunk["input"] = event.arguments_text or ""
        chunk["errorText"] = "The tool call's arguments are not valid JSON."
    else:
        chunk["input"] = event.arguments
    if event.provider_executed:
        chunk["providerExecuted"] = True
    return chunk


def frame_chunks(chunks: Iterable[Chunk]) -> bytes:
    """``data: <json>\\n\\n`` per chunk (compact JSON, UTF-8, no line breaks)."""
    return b"".join(
        encode_sse(json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode())
        for c in chunks
    )
