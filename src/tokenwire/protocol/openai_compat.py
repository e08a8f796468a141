"""OpenAI Chat Completions on the wire, sans-I/O: request bodies in, chunks out.

Wire format references (OpenAI API reference):

- request: "Chat → Create chat completion"
  (https://platform.openai.com/docs/api-reference/chat/create);
- streaming: "Chat → Streaming → The chat completion chunk object"
  (https://platform.openai.com/docs/api-reference/chat-streaming/streaming): every
  SSE ``data:`` line is one ``chat.completion.chunk``; the first carries
  ``delta.role``; the last choice chunk carries ``finish_reason``; with
  ``stream_options.include_usage`` every chunk has ``"usage": null`` and one more
  chunk with ``"choices": []`` carries the usage; ``data: [DONE]`` ends the stream;
- non-streaming: "The chat completion object";
- errors: ``{"error": {"message", "type", "param", "code"}}`` ("Error codes" guide);
  after the stream started, the same object as an in-band ``data:`` line (the
  official SDKs raise ``APIError`` with its ``message``).

Request bodies are parsed by :mod:`tokenwire.server.openai_request` (they map to
chat messages and tools, a layer to the right of this one). :class:`ChunkEncoder`
turns a stream's events into chunk dicts (a model's tool calls as
``delta.tool_calls``, ``finish_reason: "tool_calls"``), SSE bytes, or the final
``chat.completion`` object.

Deliberate deviations from OpenAI, all documented in ``docs/openai-compatible.md``:

- reasoning is sent as ``delta.reasoning_content`` / ``message.reasoning_content``
  (the DeepSeek/vLLM convention OpenAI itself does not emit);
- a ``cancelled`` stream ends with ``finish_reason: "stop"`` and a top-level
  ``x_tokenwire: {"status": "cancelled", "reason": …}`` extension on that chunk
  (after the Groq ``x_groq`` precedent), then usage and ``[DONE]`` as usual;
- provider-executed tool calls (web search) and citations have no Chat
  Completions field and are not sent (they are in the native stream);
- ``finish_reason`` ``other`` is sent as ``stop``; unknown usage as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tokenwire.errors import OpenAIRequestError
from tokenwire.events import (
    Cancelled,
    Error,
    Event,
    Finish,
    ReasoningDelta,
    Start,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tokenwire.protocol.sse import DONE, encode_sse

__all__ = [
    "DONE",
    "ChunkEncoder",
    "OpenAIRequestError",
    "error_body",
    "error_status",
    "frame",
]


SYSTEM_FINGERPRINT = "fp_tokenwire"
"""``system_fingerprint`` of every chunk and completion: stable, since tokenwire's own
configuration does not change what the provider computes (OpenAI sends ``fp_<hex>``)."""
SERVICE_TIER = "default"
"""``service_tier`` of every chunk and completion (OpenAI's value for standard processing)."""
_json = msgspec.json.Encoder()


# --- errors --------------------------------------------------------------------------

_STATUS = {
    "invalid_request": 400,
    "provider_rate_limited": 429,
    "provider_overloaded": 503,
    "provider_timeout": 504,
    "stream_timeout": 504,
    "internal_error": 500,
}
_TYPES = {"invalid_request": "invalid_request_error", "provider_rate_limited": "rate_limit_error"}


def error_status(code: str) -> int:
    """The HTTP status for a tokenwire ``error.code``: 400 ``invalid_request``,
    429 rate limited, 503 overloaded, 504 timeouts, 500 ``internal_error``, else 502."""
    return _STATUS.get(code, 502)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _event_error(event: Error) -> dict[str, Any]:
    kind = _TYPES.get(event.code, "server_error")
    return error_body(event.message, type=kind, code=event.code)


# --- responses -----------------------------------------------------------------------


def frame(chunk: Mapping[str, Any]) -> bytes:
    """One SSE frame: ``data: <compact JSON>\\n\\n``."""
    return encode_sse(_json.encode(chunk))


def _usage(usage: TokenUsage | None) -> dict[str, Any]:
    u = usage or TokenUsage()
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


@dataclass
class _Call:
    index: int
    id: str
    name: str
    arguments: str = ""


class ChunkEncoder:
    """Folds one stream's events into Chat Completions chunks and the final object.

    Feed every event from ``seq`` 1 (the ``start`` event gives ``id`` =
    ``chatcmpl-<stream_id>`` and ``created``). :meth:`feed` returns the chunk dicts
    for an event, :meth:`encode` the SSE bytes (``[DONE]`` after ``finish`` and
    ``cancelled``, nothing after an ``error`` chunk); after the terminal event
    :meth:`completion` is the ``chat.completion`` object and :attr:`error` the
    :class:`~tokenwire.events.Error`, if it failed.

    Args:
        model: the model name to report (the one the client asked for).
        include_usage: ``stream_options.include_usage``: ``"usage": null`` on every
            chunk and a last usage chunk with ``"choices": []``.
    """

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.model = model
        self.include_usage = include_usage
        self.id = "chatcmpl-"
        self.created = 0
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[str, _Call] = {}
        self.usage: TokenUsage | None = None
        self.finish_reason: str | None = None
        self.cancel_reason: str | None = None
        self.error: Error | None = None
        self._skip: set[str] = set()

    def frame(self, events: Sequence[Event]) -> bytes:
        """SSE bytes for ``events``, in order (:meth:`encode` of each;
        :class:`~tokenwire.protocol.sse.EventEncoder`)."""
        return b"".join([self.encode(event) for event in events])

    def encode(self, event: Event) -> bytes:
        """SSE bytes for ``event`` (possibly empty)."""
        out = b"".join(frame(chunk) for chunk in self.feed(event))
        return out + DONE if isinstance(event, Finish | Cancelled) else out

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """Chunk dicts for ``event``; updates the message state."""
        match event:
            case Start():
                self.id = f"chatcmpl-{event.stream_id}"
                self.created = int(event.created_at)
                return [self._chunk({"role": "assistant", "content": "", "refusal": None})]
            case TextDelta(delta=delta, refusal=True) if delta:
                self.refusal.append(delta)
                return [self._chunk({"refusal": delta})]
            case TextDelta(delta=delta) if delta:
                self.text.append(delta)
                return [self._chunk({"content": delta})]
            case ReasoningDelta(delta=delta) if delta:
                self.reasoning.append(delta)
                return [self._chunk({"reasoning_content": delta})]
            case ToolCallStart() | ToolCallDelta() | ToolCall():
                return self._tool(event)
            case Usage():
                self.usage = event.as_token_usage()
            case Finish():
                self.usage = event.usage or self.usage
                reason = event.finish_reason if event.finish_reason != "other" else "stop"
                return self._end(reason)
            case Cancelled(reason=reason):
                self.cancel_reason = reason
                return self._end("stop", {"x_tokenwire": {"status": "cancelled", "reason": reason}})
            case Error():
                self.error = event
                return [_event_error(event)]
        return []

    def _tool(self, event: ToolCallStart | ToolCallDelta | ToolCall) -> list[dict[str, Any]]:
        key = event.tool_call_id
        if key in self._skip or getattr(event, "provider_executed", False):
            self._skip.add(key)
            return []
        call = self.calls.get(key)
        entry: dict[str, Any] = {}
        if call is None:
            name = event.name if isinstance(event, ToolCallStart | ToolCall) else ""
            call = self.calls[key] = _Call(index=len(self.calls), id=key, name=name)
            entry = {"id": key, "type": "function", "function": {"name": name, "arguments": ""}}
        delta = ""
        if isinstance(event, ToolCallDelta):
            delta = event.delta
        elif isinstance(event, ToolCall) and not call.arguments:
            delta = _arguments_text(event)
        if not entry and not delta:
            return []
        call.arguments += delta
        entry = {"index": call.index, **entry}
        entry.setdefault("function", {})["arguments"] = delta
        return [self._chunk({"tool_calls": [entry]})]

    def _end(self, reason: str, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        self.finish_reason = reason
        last = self._chunk({}, reason)
        if extra:
            last.update(extra)
        if not self.include_usage:
            return [last]
        usage = self._base()
        usage["choices"] = []
        usage["usage"] = _usage(self.usage)
        return [last, usage]

    def _base(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": SERVICE_TIER,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = self._base()
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk["choices"] = [choice]
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def completion(self) -> dict[str, Any]:
        """The ``chat.completion`` object for the events fed so far (call after the
        terminal event; an unfinished stream reports ``finish_reason: null``)."""
        text, refusal = "".join(self.text), "".join(self.refusal)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not (self.calls or refusal) else None,
            "refusal": refusal or None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in self.calls.values()
            ]
        out: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "service_tier": SERVICE_TIER,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": _usage(self.usage),
        }
        if self.cancel_reason is not None:
            out["x_tokenwire"] = {"status": "cancelled", "reason": self.cancel_reason}
        return out


def _arguments_text(event: ToolCall) -> str:
    if event.arguments_text is not None:
        return event.arguments_text
    return _json.encode(event.arguments or {}).decode()
