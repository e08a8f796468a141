"""Google Gemini API streaming (``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``).

Protocol reference: Gemini API reference, "Generating content → streamGenerateContent"
and "Thinking", "Function calling", "Thought signatures"
(https://ai.google.dev/api/generate-content, https://ai.google.dev/gemini-api/docs/thinking,
https://ai.google.dev/gemini-api/docs/thought-signatures). With ``alt=sse`` each SSE
``data:`` line is one ``GenerateContentResponse``; without it the body is one JSON
array of them, sent as it is generated (both framings are read).

Mapping (only candidate 0 is followed): a part with ``text`` → text, with
``thought: true`` → reasoning; ``functionCall`` → a tool call (Gemini sends the
arguments whole: :class:`ToolCallStart` then the complete :class:`ToolCall`; the
streamed form of Gemini 3 / Vertex, ``partialArgs`` with ``jsonPath`` and
``willContinue``, is assembled and sent once complete). ``finishReason``: ``STOP`` →
``stop`` (``tool_calls`` when the answer called tools), ``MAX_TOKENS`` → ``length``,
``SAFETY``, ``RECITATION``, ``BLOCKLIST``, ``PROHIBITED_CONTENT``, ``SPII``,
``IMAGE_SAFETY`` → ``content_filter``, others → ``other``; a prompt blocked
(``promptFeedback.blockReason``, no candidate) → ``content_filter``.

Usage (``usageMetadata``): ``input_tokens`` = ``promptTokenCount``,
``output_tokens`` = ``candidatesTokenCount`` + ``thoughtsTokenCount`` (OpenAI's
counting: output includes reasoning), ``reasoning_tokens`` = ``thoughtsTokenCount``,
``cached_input_tokens`` = ``cachedContentTokenCount``.

Thought signatures: Gemini has no tool call ids (``functionCall.id`` is used when
present); tokenwire's id is ``gc_<n>`` and, when the part carries a
``thoughtSignature``, ``gc_<n>~<signature>``. A history that sends such an id back
(:class:`~tokenwire.providers.base.MessageToolCall`) gets the signature back on its
``functionCall`` part, as Gemini 3 requires for function calling.

:class:`GeminiParser` is sans-I/O; :class:`GeminiProvider` is the I/O shell on ``httpx2``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx2
import msgspec

from tokenwire.errors import ProviderError, UnknownModelError
from tokenwire.events import FinishReason, ReasoningDelta, TextDelta, ToolCallStart, Usage
from tokenwire.protocol.sse import SSEDecoder
from tokenwire.providers.base import (
    GenerationRequest,
    Parts,
    ProviderEvent,
    error_for_code,
    finish,
    tool_call,
)
from tokenwire.providers.gemini_request import build_request, split_call_id
from tokenwire.providers.http import HTTPProvider, count, decode_json, env_url
from tokenwire.providers.openai_chat import closed_early

__all__ = ["GeminiParser", "GeminiProvider", "JSONArraySplitter", "build_request", "split_call_id"]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

_FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_ERROR_STATUSES = {
    "RESOURCE_EXHAUSTED": "rate_limit",
    "UNAVAILABLE": "overloaded",
    "DEADLINE_EXCEEDED": "timeout",
}


@dataclass
class _Streamed:
    """A ``functionCall`` that arrives in pieces (``willContinue``)."""

    id: str
    name: str
    part: int
    args: dict[str, Any] = field(default_factory=dict)


class GeminiParser:
    """Turns ``GenerateContentResponse`` dicts into events (sans-I/O).

    Call :meth:`feed` for every response object and :meth:`end` once the stream is over.
    """

    def __init__(self) -> None:
        self._parts = Parts()
        self._calls = 0
        self._streamed: _Streamed | None = None
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self._blocked = False

    def feed(self, chunk: Mapping[str, Any]) -> list[ProviderEvent]:
        """Consume one response object.

        Raises:
            ProviderError: the object is an in-band error (a top-level ``"error"``).
        """
        error = chunk.get("error")
        if error:
            raise _inband_error(error)
        out: list[ProviderEvent] = []
        for candidate in chunk.get("candidates") or ():
            if (candidate.get("index") or 0) != 0:
                continue
            for part in (candidate.get("content") or {}).get("parts") or ():
                if isinstance(part, Mapping):
                    self._part(part, out)
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                self._finish_reason = reason
        feedback = chunk.get("promptFeedback") or {}
        blocked = feedback.get("blockReason")
        if isinstance(blocked, str) and blocked and self._finish_reason is None:
            self._finish_reason, self._blocked = blocked, True
        usage = chunk.get("usageMetadata")
        if isinstance(usage, Mapping) and "promptTokenCount" in usage:
            self._usage = _usage(usage)
            out.append(self._usage)
        return out

    def end(self) -> list[ProviderEvent]:
        """The stream is over: complete a pending call and finish.

        Raises:
            ProviderError: no finish reason was seen (the stream was cut).
        """
        if self._finish_reason is None:
            raise closed_early()
        out: list[ProviderEvent] = []
        self._end_streamed(out)
        reason = self._finish_reason
        mapped: FinishReason = _FINISH_REASONS.get(reason, "other")
        if self._blocked:
            mapped = "content_filter"
        if mapped == "stop" and self._calls:
            mapped = "tool_calls"
        out.append(finish(mapped, reason, self._usage))
        return out

    def _part(self, part: Mapping[str, Any], out: list[ProviderEvent]) -> None:
        call = part.get("functionCall")
        if isinstance(call, Mapping):
            self._function_call(call, part.get("thoughtSignature"), out)
            return
        text = part.get("text")
        if isinstance(text, str) and text:
            kind = "reasoning" if part.get("thought") is True else "text"
            index = self._parts.index(kind)
            event = ReasoningDelta if kind == "reasoning" else TextDelta
            out.append(event(part=index, delta=text))

    def _function_call(
        self, call: Mapping[str, Any], signature: object, out: list[ProviderEvent]
    ) -> None:
        name = call.get("name")
        streamed = self._streamed
        if streamed is not None and not name:  # a piece of the call being streamed
            for piece in call.get("partialArgs") or ():
                _apply_partial(streamed.args, piece)
            if not call.get("willContinue"):
                self._end_streamed(out)
            return
        self._end_streamed(out)
        if not isinstance(name, str) or not name:
            return
        call_id = self._new_id(call.get("id"), signature)
        part = self._parts.index("tool", call_id)
        out.append(ToolCallStart(part=part, tool_call_id=call_id, name=name))
        if call.get("willContinue"):
            self._streamed = _Streamed(id=call_id, name=name, part=part)
            for piece in call.get("partialArgs") or ():
                _apply_partial(self._streamed.args, piece)
            return
        args = call.get("args")
        text = msgspec.json.encode(args if args is not None else {}).decode()
        out.append(tool_call(part, call_id, name, text))

    def _new_id(self, given: object, signature: object) -> str:
        base = given if isinstance(given, str) and given else f"gc_{self._calls}"
        self._calls += 1
        if isinstance(signature, str) and signature:
            return f"{base}~{signature}"
        return base

    def _end_streamed(self, out: list[ProviderEvent]) -> None:
        streamed, self._streamed = self._streamed, None
        if streamed is not None:
            text = msgspec.json.encode(streamed.args).decode()
            out.append(tool_call(streamed.part, streamed.id, streamed.name, text))


def _apply_partial(args: dict[str, Any], piece: object) -> None:
    """Apply one ``partialArgs`` entry (``jsonPath`` like ``$.a.b[2].c`` and one of
    ``stringValue`` (appended to a string already there), ``numberValue``,
    ``boolValue``, ``nullValue``) to ``args``."""
    if not isinstance(piece, Mapping) or not isinstance(piece.get("jsonPath"), str):
        return
    keys = _path_keys(piece["jsonPath"])
    if not keys:
        return
    container: Any = args
    for key, following in itertools.pairwise(keys):
        fresh: Any = [] if isinstance(following, int) else {}
        container = _slot(container, key, fresh)
        if container is None:
            return
    last = keys[-1]
    if "stringValue" in piece:
        previous = _slot(container, last, "")
        value: Any = (previous if isinstance(previous, str) else "") + str(piece["stringValue"])
    elif "numberValue" in piece:
        value = piece["numberValue"]
    elif "boolValue" in piece:
        value = piece["boolValue"]
    else:
        value = None
    _slot(container, last, value, replace=True)


def _path_keys(path: str) -> list[str | int]:
    keys: list[str | int] = []
    for name in path.removeprefix("$").split("."):
        head, *indices = name.split("[")
        if head:
            keys.append(head)
        for index in indices:
            digits = index.rstrip("]")
            if not digits.isdigit():
                return []
            keys.append(int(digits))
    return keys


def _slot(container: Any, key: str | int, fresh: Any, *, replace: bool = False) -> Any:
    """The value at ``key`` (created as ``fresh`` if missing, or set to it with
    ``replace``); ``None`` when ``key`` does not fit ``container``."""
    if isinstance(container, dict) and isinstance(key, str):
        if replace or key not in container:
            container[key] = fresh
        return container[key]
    if isinstance(container, list) and isinstance(key, int):
        while len(container) <= key:
            container.append(None)
        if replace or container[key] is None:
            container[key] = fresh
        return container[key]
    return None


def _usage(usage: Mapping[str, Any]) -> Usage:
    thoughts = count(usage.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=count(usage.get("promptTokenCount")),
        output_tokens=count(usage.get("candidatesTokenCount")) + thoughts,
        reasoning_tokens=thoughts,
        cached_input_tokens=count(usage.get("cachedContentTokenCount")),
    )


def _inband_error(error: object) -> ProviderError:
    """Gemini's ``{"error": {"code", "message", "status"}}`` as a :class:`ProviderError`."""
    if not isinstance(error, Mapping):
        return error_for_code(None, str(error))
    status = error.get("status")
    kind = _ERROR_STATUSES.get(status, status) if isinstance(status, str) else None
    message = error.get("message")
    return error_for_code(kind, message if isinstance(message, str) else None)


class JSONArraySplitter:
    """Cuts a streamed JSON array (``[{…}\\n,\\r\\n{…}]``, Gemini without ``alt=sse``)
    into its top-level objects as their bytes arrive; any split of the input,
    multi-byte characters included, gives the same objects."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, data: bytes) -> list[Any]:
        """Feed bytes; return the objects completed by them, decoded."""
        out: list[Any] = []
        for byte in data:
            if self._depth:
                self._buffer.append(byte)
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif byte == 0x22 and self._depth:
                self._in_string = True
            elif byte == 0x7B:  # {
                if not self._depth:
                    self._buffer = bytearray(b"{")
                self._depth += 1
            elif byte == 0x7D and self._depth:  # }
                self._depth -= 1
                if not self._depth:
                    out.append(msgspec.json.decode(bytes(self._buffer)))
        return out


class GeminiProvider(HTTPProvider):
    """The Gemini API over ``httpx2`` (header ``x-goog-api-key``).

    Args:
        api_key: the key; ``None`` = ``GEMINI_API_KEY`` (else ``GOOGLE_API_KEY``,
            as Google's SDK reads them).
        base_url: ``None`` = ``GEMINI_BASE_URL``, default
            ``https://generativelanguage.googleapis.com``.
        http_client: an ``httpx2.AsyncClient`` to send requests with; ``None`` =
            one of tokenwire's own.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        base = base_url or env_url(os.environ.get("GEMINI_BASE_URL"), DEFAULT_BASE_URL)
        super().__init__(base_url=base, http_client=http_client)
        self._given_key = api_key

    @property
    def _api_key(self) -> str | None:
        """The explicit key, else the variables as they are now."""
        given = self._given_key
        return given or os.environ.get("GEMINI_API_KEY") or os.environ.get("GOOGLE_API_KEY")

    def check(self, model: str, params: Mapping[str, object]) -> None:
        """Refuse before anything is created when no key is set.

        Raises:
            UnknownModelError: no API key; the message names ``GEMINI_API_KEY``.
        """
        if not self._api_key:
            raise UnknownModelError(f"gemini:{model} needs an API key: set GEMINI_API_KEY")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one answer; closing this generator closes the HTTP response.

        Raises:
            ProviderError: for every upstream failure, in-band errors included;
                ``invalid_request`` without an API key.
        """
        api_key = self._api_key
        if not api_key:
            raise ProviderError("invalid_request", "the Gemini API key is not set (GEMINI_API_KEY)")
        name = request.model
        if not name.startswith(("models/", "tunedModels/")):
            name = f"models/{name}"
        path = f"/v1beta/{quote(name, safe='/')}:streamGenerateContent?alt=sse"
        parser = GeminiParser()
        headers = {"x-goog-api-key": api_key}
        async with self._post(path, build_request(request), headers) as response:
            array = "json" in response.headers.get("content-type", "")
            splitter, decoder = JSONArraySplitter(), SSEDecoder()
            async for data in response.aiter_bytes():
                if array:
                    chunks = splitter.feed(data)
                else:
                    chunks = [decode_json(e.data) for e in decoder.decode(data) if e.data.strip()]
                for chunk in chunks:
                    for event in parser.feed(chunk):
                        yield event
        for event in parser.end():
            yield event
