"""Ollama's native chat API (``POST /api/chat`` with ``"stream": true``).

Protocol reference: Ollama API docs, "Generate a chat completion" and "Thinking"
(https://github.com/ollama/ollama/blob/main/docs/api.md,
https://ollama.com/blog/thinking). The body is NDJSON: one JSON object per line,
``{"message": {"content", "thinking"?, "tool_calls"?}, "done": false}`` … then one
with ``"done": true``, ``done_reason`` (``stop``, ``length`` …) and the counts
``prompt_eval_count`` / ``eval_count``; a line ``{"error": "…"}`` reports a failure
inside an HTTP 200 body. ``/api/generate`` lines (``response`` and ``thinking`` at
the top level) are read the same way, so its recordings replay through this parser.

Mapping: ``content`` (or ``response``) → text, with a leading ``<think>…</think>``
split out as reasoning (models run without ``think``, see
:mod:`tokenwire.providers.think`); ``thinking`` → reasoning; each ``tool_calls``
entry → :class:`ToolCallStart` and the complete :class:`ToolCall` (Ollama sends the
arguments whole, as an object); ``done_reason`` ``stop`` → ``stop`` (``tool_calls``
when the answer called tools), ``length`` → ``length``, others → ``other``.
Usage: ``input_tokens`` = ``prompt_eval_count``, ``output_tokens`` = ``eval_count``.

:class:`OllamaParser` is sans-I/O; :class:`OllamaProvider` is the I/O shell on ``httpx2``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx2
import msgspec

from tokenwire.events import FinishReason, ReasoningDelta, TextDelta, ToolCallStart, Usage
from tokenwire.providers.base import (
    GenerationRequest,
    Message,
    Parts,
    ProviderEvent,
    error_for_code,
    finish,
    parse_arguments,
    tool_call,
)
from tokenwire.providers.http import HTTPProvider, count, decode_json, env_url
from tokenwire.providers.openai_chat import closed_early
from tokenwire.providers.think import ThinkSplitter

__all__ = ["NDJSONSplitter", "OllamaParser", "OllamaProvider", "build_request"]

DEFAULT_BASE_URL = "http://127.0.0.1:11434"

_FINISH_REASONS: dict[str, FinishReason] = {"stop": "stop", "length": "length"}
_OPTIONS = {
    "max_tokens": "num_predict",
    "num_predict": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "num_ctx": "num_ctx",
}


class OllamaParser:
    """Turns Ollama's NDJSON objects into events (sans-I/O).

    Call :meth:`feed` for every line's object and :meth:`end` once the body is over.
    """

    def __init__(self) -> None:
        self._parts = Parts()
        self._think = ThinkSplitter()
        self._calls = 0
        self._done_reason: str | None = None
        self._usage: Usage | None = None

    def feed(self, chunk: Mapping[str, Any]) -> list[ProviderEvent]:
        """Consume one object.

        Raises:
            ProviderError: the object is an in-band error (``{"error": …}``).
        """
        error = chunk.get("error")
        if error:
            raise error_for_code(None, error if isinstance(error, str) else str(error))
        out: list[ProviderEvent] = []
        message = chunk.get("message")
        source: Mapping[str, Any] = message if isinstance(message, Mapping) else {}
        thinking = source.get("thinking", chunk.get("thinking"))
        if isinstance(thinking, str):
            self._emit("reasoning", thinking, out)
        content = source.get("content", chunk.get("response"))
        if isinstance(content, str):
            for kind, text in self._think.feed(content):
                self._emit(kind, text, out)
        for call in source.get("tool_calls") or ():
            if isinstance(call, Mapping):
                self._tool_call(call, out)
        if chunk.get("done") is True:
            for kind, text in self._think.flush():
                self._emit(kind, text, out)
            reason = chunk.get("done_reason")
            self._done_reason = reason if isinstance(reason, str) and reason else "stop"
            if "prompt_eval_count" in chunk or "eval_count" in chunk:
                self._usage = Usage(
                    input_tokens=count(chunk.get("prompt_eval_count")),
                    output_tokens=count(chunk.get("eval_count")),
                )
                out.append(self._usage)
        return out

    def end(self) -> list[ProviderEvent]:
        """The body is over: finish.

        Raises:
            ProviderError: no ``"done": true`` object was seen (the stream was cut).
        """
        if self._done_reason is None:
            raise closed_early()
        reason: FinishReason = _FINISH_REASONS.get(self._done_reason, "other")
        if reason == "stop" and self._calls:
            reason = "tool_calls"
        return [finish(reason, self._done_reason, self._usage)]

    def _emit(self, kind: str, text: str, out: list[ProviderEvent]) -> None:
        if not text:
            return
        part = self._parts.index(kind)
        out.append(
            ReasoningDelta(part=part, delta=text)
            if kind == "reasoning"
            else TextDelta(part=part, delta=text)
        )

    def _tool_call(self, call: Mapping[str, Any], out: list[ProviderEvent]) -> None:
        function = call.get("function") or {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            return
        given = call.get("id")
        call_id = given if isinstance(given, str) and given else f"call_{self._calls}"
        self._calls += 1
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            text = arguments
        else:
            text = msgspec.json.encode(arguments if arguments is not None else {}).decode()
        part = self._parts.index("tool", call_id)
        out.append(ToolCallStart(part=part, tool_call_id=call_id, name=name))
        out.append(tool_call(part, call_id, name, text))


class NDJSONSplitter:
    """Cuts a byte stream into JSON lines as they arrive (blank lines skipped)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Any]:
        """Feed bytes; return the objects of the lines completed by them.

        Raises:
            ProviderError: a line is not JSON.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        return [decode_json(line) for line in lines if line.strip()]

    def flush(self) -> list[Any]:
        """End of input: the last line, if it had no line break."""
        rest, self._buffer = self._buffer, b""
        return [decode_json(rest)] if rest.strip() else []


def build_request(request: GenerationRequest) -> dict[str, Any]:
    """The JSON body for ``/api/chat``.

    ``params``: ``max_tokens`` (→ ``num_predict``), ``temperature``, ``top_p``,
    ``top_k``, ``seed``, ``stop``, ``num_ctx`` go to ``options``; ``think`` is sent
    as it is (true/false, or ``"low"``/``"medium"``/``"high"`` for gpt-oss) and
    ``reasoning_effort`` sets ``think`` (false for ``"none"``, else true); other
    keys go to the top level (``keep_alive``, ``format`` …).
    """
    params = dict(request.params)
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    messages += [_message(m) for m in request.messages]
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
    options = {ollama: params.pop(name) for name, ollama in _OPTIONS.items() if name in params}
    if options:
        body["options"] = options
    effort = params.pop("reasoning_effort", None)
    if effort is not None and "think" not in params:
        body["think"] = effort != "none"
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
    body.update(params)
    return body


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": parse_arguments(c.arguments)[0] or {}}}
            for c in message.tool_calls
        ]
    if message.role == "tool" and message.name:
        out["tool_name"] = message.name
    return out


def _host_url(host: str | None) -> str | None:
    """``OLLAMA_HOST`` as Ollama's own client reads it: ``host``, ``host:port`` or a
    URL; without a port, 11434."""
    if not host:
        return None
    url = env_url(host, DEFAULT_BASE_URL)
    return url if urlsplit(url).port is not None else f"{url}:11434"


class OllamaProvider(HTTPProvider):
    """Ollama's ``/api/chat`` over ``httpx2``.

    Args:
        base_url: ``None`` = ``OLLAMA_BASE_URL``, else ``OLLAMA_HOST`` (Ollama's own
            variable; ``host`` or ``host:port`` is enough, port 11434 by default),
            default ``http://127.0.0.1:11434``.
        api_key: sent as ``Authorization: Bearer`` (ollama.com, or a proxy in front);
            ``None`` = ``OLLAMA_API_KEY``, unset = no header.
        http_client: an ``httpx2.AsyncClient`` to send requests with; ``None`` =
            one of tokenwire's own.
    """

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        if base_url is None:
            base_url = os.environ.get("OLLAMA_BASE_URL") or _host_url(os.environ.get("OLLAMA_HOST"))
        super().__init__(base_url=env_url(base_url, DEFAULT_BASE_URL), http_client=http_client)
        self._api_key = api_key or os.environ.get("OLLAMA_API_KEY")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one answer; closing this generator closes the HTTP response.

        Raises:
            ProviderError: for every upstream failure, in-band errors included.
        """
        parser, lines = OllamaParser(), NDJSONSplitter()
        headers = {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        async with self._post("/api/chat", build_request(request), headers) as response:
            async for data in response.aiter_bytes():
                for chunk in lines.feed(data):
                    for event in parser.feed(chunk):
                        yield event
            for chunk in lines.flush():
                for event in parser.feed(chunk):
                    yield event
        for event in parser.end():
            yield event
