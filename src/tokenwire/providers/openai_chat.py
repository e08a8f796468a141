"""OpenAI Chat Completions streaming (and the many servers that copy it).

Protocol reference: OpenAI API reference, "Chat Completions → The chat completion
chunk object" and "Streaming" (https://platform.openai.com/docs/api-reference/chat-streaming).
Each SSE ``data:`` line carries one ``chat.completion.chunk``; ``data: [DONE]`` ends
the stream. With ``stream_options.include_usage`` a last chunk with ``choices: []``
carries ``usage``.

:class:`ChatCompletionsParser` is sans-I/O: one decoded chunk (a dict) in, events
out. :class:`OpenAIChatProvider` is the I/O shell on the official ``openai`` SDK.

Compatible servers differ; the parser accepts, per choice ``delta``:

- ``content`` as a string, or as a typed part array (Mistral's
  ``[{"type": "thinking", "thinking": [...]}, {"type": "text", "text": ...}]``);
- reasoning under ``reasoning_content`` (DeepSeek, vLLM) or ``reasoning`` (Groq,
  OpenRouter), or inline ``<think>…</think>`` at the start of ``content``
  (see :mod:`tokenwire.providers.think`);
- ``refusal`` deltas, passed on as text marked ``refusal`` (``delta.refusal`` again on the
  OpenAI-compatible surface);
- ``tool_calls`` split over many deltas and interleaved, keyed by ``index``, and the
  legacy ``function_call``;
- usage at the top level or under ``x_groq.usage`` (Groq).

Requests (:func:`chat_messages`, :func:`chat_tools`) carry the request's tools and
its tool history (assistant ``tool_calls``, ``tool`` messages).

Deliberate deviation: with ``n > 1`` only the choice with ``index`` 0 is followed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx2
import openai

from tokenwire.errors import ProviderError
from tokenwire.events import (
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tokenwire.providers.base import (
    GenerationRequest,
    Parts,
    ProviderEvent,
    ToolSpec,
    connection_error,
    error_for_code,
    error_for_status,
    finish,
    tool_call,
)
from tokenwire.providers.sdk import SDKProvider
from tokenwire.providers.think import ThinkSplitter

__all__ = [
    "ChatCompletionsParser",
    "OpenAIChatProvider",
    "body_error",
    "chat_messages",
    "chat_tools",
    "closed_early",
    "make_openai_client",
    "translate_openai_error",
]

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def closed_early() -> ProviderError:
    """The error for a stream that ended without a finish reason (a cut connection)."""
    return ProviderError(
        "provider_error", "the provider closed the stream before it finished", retryable=True
    )


def body_error(body: object) -> tuple[str | None, str | None]:
    """Find ``(kind, message)`` in a provider's error body.

    ``kind`` joins the error's ``type`` and ``code`` (``server_error/overloaded``).
    Accepts ``{"error": {"type"|"code", "message"}}``, the inner object itself, or
    plain text (cut to 500 characters; an HTML error page gives no message).
    """
    if isinstance(body, str):
        text = body.strip()
        return None, text[:500] if text and not text.startswith("<") else None
    if not isinstance(body, Mapping):
        return None, None
    inner = body.get("error")
    if isinstance(inner, Mapping):
        body = inner
    elif isinstance(inner, str):
        return None, inner
    names = [body.get("type"), body.get("code")]  # OpenAI: e.g. server_error + overloaded
    kind = "/".join(n for n in names if isinstance(n, str) and n and n != "error") or None
    message = body.get("message")
    return kind, message if isinstance(message, str) and message else None


@dataclass
class _Call:
    id: str
    name: str
    part: int
    text: str = ""
    done: bool = False


class ChatCompletionsParser:
    """Turns ``chat.completion.chunk`` dicts into events (sans-I/O).

    Call :meth:`feed` for every chunk and :meth:`end` once the stream is over.
    Tool calls are complete (:class:`~tokenwire.events.ToolCall`) when choice 0
    reports its ``finish_reason``; :meth:`end` returns the :class:`Finish`, which
    comes after the usage-only chunk that may follow the finish reason.
    """

    def __init__(self) -> None:
        self._parts = Parts()
        self._think = ThinkSplitter()
        self._calls: dict[object, _Call] = {}
        self._last_key: object = None
        self._finish_reason: str | None = None
        self._usage: Usage | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[ProviderEvent]:
        """Consume one chunk.

        Raises:
            ProviderError: the chunk is an in-band error (a top-level ``"error"``).
        """
        if chunk.get("error"):
            raise error_for_code(*body_error(chunk))
        out: list[ProviderEvent] = []
        for choice in chunk.get("choices") or ():
            if (choice.get("index") or 0) != 0:
                continue
            self._delta(choice.get("delta") or {}, out)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
                self._close(out)
        usage = chunk.get("usage") or (chunk.get("x_groq") or {}).get("usage")
        if isinstance(usage, Mapping):
            self._usage = _usage(usage)
            out.append(self._usage)
        return out

    def end(self) -> list[ProviderEvent]:
        """The stream is over: complete what is pending and finish.

        Raises:
            ProviderError: no finish reason was seen (the stream was cut).
        """
        if self._finish_reason is None:
            raise closed_early()
        out: list[ProviderEvent] = []
        self._close(out)
        reason = _FINISH_REASONS.get(self._finish_reason, "other")
        out.append(finish(reason, self._finish_reason, self._usage))
        return out

    def _delta(self, delta: Mapping[str, Any], out: list[ProviderEvent]) -> None:
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str):
            self._emit("reasoning", reasoning, out)
        content = delta.get("content")
        if isinstance(content, str):
            for kind, text in self._think.feed(content):
                self._emit(kind, text, out)
        elif isinstance(content, list):
            for item in content:
                if isinstance(item, Mapping):
                    self._content_part(item, out)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            out.append(TextDelta(part=self._parts.index("text"), delta=refusal, refusal=True))
        for call in delta.get("tool_calls") or ():
            self._tool_delta(call, out)
        legacy = delta.get("function_call")
        if isinstance(legacy, Mapping):
            self._tool_delta({"index": "function_call", "function": legacy}, out)

    def _content_part(self, item: Mapping[str, Any], out: list[ProviderEvent]) -> None:
        kind = item.get("type")
        if kind == "text":
            self._emit("text", _text_of(item.get("text")), out)
        elif kind in ("thinking", "reasoning"):
            value = item.get(kind)
            self._emit("reasoning", _text_of(value if value is not None else item.get("text")), out)

    def _emit(self, kind: str, text: str, out: list[ProviderEvent]) -> None:
        if not text:
            return
        part = self._parts.index(kind)
        if kind == "reasoning":
            out.append(ReasoningDelta(part=part, delta=text))
        else:
            out.append(TextDelta(part=part, delta=text))

    def _tool_delta(self, delta: Mapping[str, Any], out: list[ProviderEvent]) -> None:
        key = self._tool_key(delta)
        function = delta.get("function") or {}
        call = self._calls.get(key)
        if call is None:
            call_id = delta.get("id") or f"call_{len(self._calls)}"
            name = function.get("name") or ""
            call = _Call(id=call_id, name=name, part=self._parts.index("tool", key))
            self._calls[key] = call
            out.append(ToolCallStart(part=call.part, tool_call_id=call.id, name=call.name))
        self._last_key = key
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.text += arguments
            part = self._parts.index("tool", key)
            out.append(ToolCallDelta(part=part, tool_call_id=call.id, delta=arguments))

    def _tool_key(self, delta: Mapping[str, Any]) -> object:
        index = delta.get("index")
        if index is not None:
            return index
        call_id = delta.get("id")  # some servers omit ``index``: key by id, else the last call
        if call_id:
            for key, call in self._calls.items():
                if call.id == call_id:
                    return key
            return call_id
        return self._last_key if self._last_key is not None else 0

    def _close(self, out: list[ProviderEvent]) -> None:
        for kind, text in self._think.flush():
            self._emit(kind, text, out)
        for call in self._calls.values():
            if not call.done:
                call.done = True
                out.append(tool_call(call.part, call.id, call.name, call.text))


def _text_of(value: object) -> str:
    """Text of a string or of a list of ``{"type": "text", "text": …}`` parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(_text_of(item.get("text")) for item in value if isinstance(item, Mapping))
    return ""


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _usage(usage: Mapping[str, Any]) -> Usage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = (
        _count(prompt_details.get("cached_tokens"))
        or _count(usage.get("prompt_cache_hit_tokens"))  # DeepSeek
        or _count(usage.get("cached_tokens"))
    )
    return Usage(
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
        reasoning_tokens=_count(completion_details.get("reasoning_tokens")),
        cached_input_tokens=cached,
    )


def make_openai_client(
    api_key: str | None, base_url: str | None, http_client: httpx2.AsyncClient | None
) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` without SDK retries (the producer retries).

    Raises:
        ProviderError: ``invalid_request`` when the SDK cannot be configured (no key).
    """
    try:
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, http_client=http_client, max_retries=0
        )
    except openai.OpenAIError as exc:
        message = "the OpenAI client is not configured (is OPENAI_API_KEY set?)"
        raise ProviderError("invalid_request", message) from exc


def translate_openai_error(exc: Exception) -> ProviderError:
    """Translate an ``openai`` SDK or ``httpx2`` exception (the one boundary).

    HTTP errors follow :func:`~tokenwire.providers.base.error_for_status` with the
    provider's message; in-band errors (``APIError`` without a status: a chunk with
    a top-level ``"error"``) follow :func:`~tokenwire.providers.base.error_for_code`.
    """
    if isinstance(exc, openai.APIStatusError):
        _, message = body_error(exc.body)
        status = exc.status_code
        fallback = f"the provider answered HTTP {status}"
        return error_for_status(status, message or fallback, exc.response.headers)
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        return connection_error(isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException))
    if isinstance(exc, openai.APIError):
        kind, message = body_error(exc.body)
        return error_for_code(kind, message)
    return ProviderError("provider_error", "the provider client failed")


def chat_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """Chat Completions ``messages`` for ``request``: the system prompt first, an
    assistant's ``tool_calls`` (``content`` ``null`` when it said nothing), ``tool``
    messages with their ``tool_call_id`` (OpenAI API reference, "Create chat
    completion")."""
    out: list[dict[str, Any]] = []
    if request.system is not None:
        out.append({"role": "system", "content": request.system})
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "tool":
            message["tool_call_id"] = m.tool_call_id or ""
        elif m.tool_calls:
            message["content"] = m.content or None
            message["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for c in m.tool_calls
            ]
        out.append(message)
    return out


def chat_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Chat Completions ``tools``: ``{type: "function", function: {name,
    description, parameters}}`` (the description only when there is one)."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
        if tool.description:
            fn["description"] = tool.description
        out.append({"type": "function", "function": fn})
    return out


SDK_ERRORS = (openai.OpenAIError, httpx2.HTTPError)
"""What :func:`translate_openai_error` translates."""


class OpenAIChatProvider(SDKProvider[openai.AsyncOpenAI]):
    """Chat Completions over the official ``openai`` SDK (``POST /v1/chat/completions``).

    Args:
        api_key: the key; ``None`` lets the SDK read ``OPENAI_API_KEY``.
        base_url: e.g. ``https://api.groq.com/openai/v1``; ``None`` lets the SDK read
            ``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``).
        http_client: an ``httpx2.AsyncClient`` to send requests with (tests inject a
            ``MockTransport``); ``None`` lets the SDK make its own.
    """

    def _make_client(self) -> openai.AsyncOpenAI:
        return make_openai_client(self._api_key, self._base_url, self._http_client)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one completion; closing this generator closes the HTTP response.

        Raises:
            ProviderError: for every upstream failure, in-band errors included.
        """
        parser = ChatCompletionsParser()
        tools = chat_tools(request.tools)
        try:
            chunks = await self._sdk().chat.completions.create(
                model=request.model,
                messages=cast(Any, chat_messages(request)),
                tools=cast(Any, tools) if tools else openai.omit,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=dict(request.params) or None,
            )
            async with chunks:
                async for chunk in chunks:
                    for event in parser.feed(chunk.to_dict()):
                        yield event
        except SDK_ERRORS as exc:
            raise translate_openai_error(exc) from exc
        for event in parser.end():
            yield event
