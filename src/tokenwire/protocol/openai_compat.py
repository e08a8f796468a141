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

:func:`parse_request` turns a request body into tokenwire's ``start`` arguments
(:class:`ChatRequest`); :class:`ChunkEncoder` turns a stream's events into chunk
dicts, SSE bytes, or the final ``chat.completion`` object.

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

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
    "ChatRequest",
    "ChunkEncoder",
    "OpenAIRequestError",
    "error_body",
    "error_status",
    "frame",
    "parse_request",
]


Role = Literal["user", "assistant"]
SYSTEM_FINGERPRINT = "fp_tokenwire"
"""``system_fingerprint`` of every chunk and completion: stable, since tokenwire's own
configuration does not change what the provider computes (OpenAI sends ``fp_<hex>``)."""
SERVICE_TIER = "default"
"""``service_tier`` of every chunk and completion (OpenAI's value for standard processing)."""
_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A Chat Completions request, mapped to :meth:`tokenwire.Tokenwire.start` arguments.

    Attributes:
        model: the tokenwire ``provider:model`` name.
        messages: ``(role, text)`` of the user and assistant messages, oldest first.
        system: every ``system``/``developer`` message joined with a blank line, or ``None``.
        params: provider parameters (see :func:`parse_request`).
        stream: answer with ``chat.completion.chunk`` SSE instead of one object.
        include_usage: ``stream_options.include_usage``.
    """

    model: str
    messages: tuple[tuple[Role, str], ...]
    system: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False


# --- request -------------------------------------------------------------------------

_CONTROL = frozenset({"model", "messages", "stream", "stream_options", "n"})
_IGNORED = frozenset(
    {"user", "store", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"}
)
"""Informational parameters: passed to ``openai:``-family providers, dropped for others."""
_REJECTED = {
    "functions": "is deprecated and not supported; use 'tools'",
    "function_call": "is deprecated and not supported; use 'tool_choice'",
    "logprobs": "is not supported: tokenwire streams carry no log probabilities",
    "top_logprobs": "is not supported: tokenwire streams carry no log probabilities",
    "audio": "is not supported: tokenwire streams carry text only",
    "modalities": "is not supported: tokenwire streams carry text only",
    "prediction": "is not supported",
}
_NOT_FOR = {
    "anthropic": frozenset(
        {"seed", "presence_penalty", "frequency_penalty", "logit_bias", "response_format"}
        | {"reasoning_effort", "verbosity", "web_search_options"}
    ),
    "openai-responses": frozenset(
        {"seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias"}
        | {"response_format", "web_search_options"}
    ),
}
"""Chat Completions parameters a provider family has no equivalent for."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_stop(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(s, str) for s in value)
    )


_CHECKS: dict[str, tuple[Callable[[object], bool], str]] = {
    "temperature": (_is_number, "a number"),
    "top_p": (_is_number, "a number"),
    "presence_penalty": (_is_number, "a number"),
    "frequency_penalty": (_is_number, "a number"),
    "max_tokens": (_is_int, "an integer"),
    "max_completion_tokens": (_is_int, "an integer"),
    "seed": (_is_int, "an integer"),
    "stop": (_is_stop, "a string or an array of strings"),
    "tools": (lambda v: isinstance(v, list), "an array"),
}


def parse_request(body: Mapping[str, Any]) -> ChatRequest:
    """Validate a Chat Completions request body and map it to tokenwire arguments.

    Parameters are handled one by one:

    - ``model`` must be ``provider:model``; ``messages`` roles ``system``,
      ``developer`` (both become ``system``), ``user``, ``assistant``, with content a
      string or an array of ``{"type": "text", "text": …}`` parts;
    - ``n`` may be 1 only; ``functions``, ``function_call``, ``logprobs``,
      ``top_logprobs``, ``audio``, ``modalities``, ``prediction`` are refused;
    - every other key becomes a tokenwire param, passed to the provider as extra
      body fields (provider-specific extras such as the ``fake:`` script's
      ``stall_after`` arrive this way, through the SDK's ``extra_body``), translated
      for ``anthropic:`` (``max_completion_tokens``→``max_tokens``,
      ``stop``→``stop_sequences``, ``tools``/``tool_choice`` to Anthropic's shape)
      and ``openai-responses:`` (``max_*tokens``→``max_output_tokens``, flat
      ``tools``); a parameter the family has no equivalent for is refused.

    Raises:
        OpenAIRequestError: naming the offending parameter; status 404 for a model
            that is not ``provider:model``.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIRequestError("you must provide a model parameter", param="model")
    family, sep, rest = model.partition(":")
    if not sep or not family or not rest:
        message = f"The model {model!r} does not exist: tokenwire models are named 'provider:model'"
        raise OpenAIRequestError(message, param="model", status=404, code="model_not_found")
    n = body.get("n")
    if n is not None and n != 1:
        raise _unsupported("n", "must be 1: tokenwire streams one choice per request")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise OpenAIRequestError("'stream_options' must be an object", param="stream_options")
    system, messages = _messages(body.get("messages"))
    return ChatRequest(
        model=model,
        messages=messages,
        system=system,
        params=_params(body, family),
        stream=body.get("stream") is True,
        include_usage=bool(options and options.get("include_usage") is True),
    )


def _unsupported(param: str, why: str) -> OpenAIRequestError:
    return OpenAIRequestError(f"'{param}' {why}", param=param, code="unsupported_parameter")


def _messages(value: object) -> tuple[str | None, tuple[tuple[Role, str], ...]]:
    if not isinstance(value, list) or not value:
        raise OpenAIRequestError("'messages' must be a non-empty array", param="messages")
    system: list[str] = []
    out: list[tuple[Role, str]] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise OpenAIRequestError(f"'{where}' must be an object", param=where)
        role = message.get("role")
        if message.get("tool_calls") or message.get("function_call"):
            why = "assistant tool calls in the history are not supported (text only)"
            raise OpenAIRequestError(f"'{where}': {why}", param=f"{where}.tool_calls")
        text = _content(message.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user" or role == "assistant":
            out.append((role, text))
        else:
            why = "must be 'system', 'developer', 'user' or 'assistant' (text conversations only)"
            raise OpenAIRequestError(f"'{where}.role' {why}, got {role!r}", param=f"{where}.role")
    if not out:
        raise OpenAIRequestError(
            "'messages' must contain at least one user or assistant message", param="messages"
        )
    return ("\n\n".join(system) if system else None), tuple(out)


def _content(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise OpenAIRequestError(
            f"'{where}' must be a string or an array of text parts", param=where
        )
    texts: list[str] = []
    for j, part in enumerate(value):
        kind = part.get("type") if isinstance(part, Mapping) else None
        text = part.get("text") if isinstance(part, Mapping) else None
        if kind != "text" or not isinstance(text, str):
            why = f"must be a {{'type': 'text', 'text': ...}} part, got type {kind!r}"
            raise OpenAIRequestError(f"'{where}[{j}]' {why}", param=f"{where}[{j}]")
        texts.append(text)
    return "".join(texts)


def _params(body: Mapping[str, Any], family: str) -> dict[str, object]:
    params: dict[str, object] = {}
    not_for = _NOT_FOR.get(family, frozenset())
    for key, value in body.items():
        if key in _CONTROL or value is None:
            continue
        if key in _REJECTED:
            raise _unsupported(key, _REJECTED[key])
        if key in not_for:
            raise _unsupported(key, f"is not supported for '{family}:' models")
        check = _CHECKS.get(key)
        if check is not None and not check[0](value):
            raise OpenAIRequestError(f"'{key}' must be {check[1]}", param=key)
        if key in _IGNORED and family in _NOT_FOR:
            continue
        params[key] = value
    if family == "anthropic":
        return _for_anthropic(params)
    if family == "openai-responses":
        return _for_responses(params)
    return params


def _for_anthropic(params: dict[str, object]) -> dict[str, object]:
    out = dict(params)
    if "max_completion_tokens" in out:
        out["max_tokens"] = out.pop("max_completion_tokens")
    if "stop" in out:
        stop = out.pop("stop")
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    out.pop("parallel_tool_calls", None)
    if "tools" in out:
        out["tools"] = [
            {
                "name": fn.get("name"),
                **({"description": fn["description"]} if "description" in fn else {}),
                "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
            }
            for fn in _functions(out["tools"])
        ]
    if "tool_choice" in out:
        out["tool_choice"] = _anthropic_choice(out["tool_choice"])
    return out


def _anthropic_choice(choice: object) -> dict[str, object]:
    simple = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in simple:
        return {"type": simple[choice]}
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        return {"type": "tool", "name": choice["function"].get("name")}
    raise OpenAIRequestError("'tool_choice' is not a valid tool choice", param="tool_choice")


def _for_responses(params: dict[str, object]) -> dict[str, object]:
    out = dict(params)
    for key in ("max_tokens", "max_completion_tokens"):
        if key in out:
            out["max_output_tokens"] = out.pop(key)
    if "tools" in out:
        out["tools"] = [{"type": "function", **fn} for fn in _functions(out["tools"])]
    choice = out.get("tool_choice")
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        out["tool_choice"] = {"type": "function", "name": choice["function"].get("name")}
    return out


def _functions(tools: object) -> list[Mapping[str, Any]]:
    """The ``function`` objects of Chat Completions ``tools``."""
    out: list[Mapping[str, Any]] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type") != "function" or not fn:
            why = "must be a {'type': 'function', 'function': {...}} tool"
            raise OpenAIRequestError(f"'tools[{i}]' {why}", param=f"tools[{i}]")
        out.append(fn)
    return out


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
