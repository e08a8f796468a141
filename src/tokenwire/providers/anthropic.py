"""Anthropic Messages API streaming (``POST /v1/messages`` with ``stream: true``).

Protocol reference: Anthropic API docs, "Streaming Messages"
(https://docs.anthropic.com/en/docs/build-with-claude/streaming). The stream is
``message_start``, then per content block ``content_block_start``, any number of
``content_block_delta`` and ``content_block_stop``, then ``message_delta`` (with
``stop_reason`` and cumulative ``usage``) and ``message_stop``; ``ping`` events may
appear anywhere and an ``error`` event may arrive inside an HTTP 200 body.

Mapping: each content block is one part. ``text_delta`` → text; ``thinking_delta``
→ reasoning (``signature_delta`` and ``redacted_thinking`` carry no readable text
and are skipped); ``tool_use`` blocks with ``input_json_delta`` → tool calls;
``server_tool_use`` (web search, web fetch …) → tool calls with
``provider_executed``; ``web_search_tool_result`` results and ``citations_delta``
citations → :class:`~tokenwire.events.Source`, once per URL.

Usage: Anthropic's ``input_tokens`` exclude cache reads and writes; tokenwire's
``input_tokens`` is the sum of the three (as OpenAI counts) and
``cached_input_tokens`` the cache reads. ``message_delta`` usage is cumulative.

:class:`MessagesParser` is sans-I/O; :class:`AnthropicProvider` is the I/O shell on
the official ``anthropic`` SDK; :func:`anthropic_messages` and :func:`anthropic_tools`
build the request's tools and tool history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anthropic
import httpx2
import msgspec

from tokenwire.errors import ProviderError
from tokenwire.events import (
    FinishReason,
    ReasoningDelta,
    Source,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tokenwire.providers.base import (
    GenerationRequest,
    Message,
    Parts,
    ProviderEvent,
    ToolSpec,
    connection_error,
    error_for_code,
    error_for_status,
    finish,
    parse_arguments,
    tool_call,
)
from tokenwire.providers.openai_chat import body_error, closed_early
from tokenwire.providers.sdk import SDKProvider

__all__ = [
    "AnthropicProvider",
    "MessagesParser",
    "anthropic_messages",
    "anthropic_tools",
    "translate_anthropic_error",
]

_STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "other",
}
_TOOL_BLOCKS = {"tool_use": False, "server_tool_use": True, "mcp_tool_use": True}


@dataclass
class _Call:
    id: str
    name: str
    part: int
    provider_executed: bool
    initial: str  # ``input`` of the start event, used when no delta follows
    text: str = ""


class MessagesParser:
    """Turns Messages API stream events (dicts) into events (sans-I/O).

    Call :meth:`feed` for every event and :meth:`end` once the stream is over.
    """

    def __init__(self) -> None:
        self._parts = Parts()
        self._calls: dict[int, _Call] = {}  # open tool-use blocks by content-block index
        self._sources: set[str] = set()
        self._counts: dict[str, int] = {}
        self._usage: Usage | None = None
        self._stop_reason: str | None = None
        self._stopped = False
        self._handlers: dict[str, Callable[[Mapping[str, Any]], list[ProviderEvent]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
        }

    def feed(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        """Consume one stream event; ``ping`` and unknown events are ignored.

        Raises:
            ProviderError: an ``error`` event (``overloaded_error`` →
                ``provider_overloaded``, ``rate_limit_error`` → ``provider_rate_limited``).
        """
        handler = self._handlers.get(str(event.get("type")))
        return handler(event) if handler is not None else []

    def end(self) -> list[ProviderEvent]:
        """The stream is over: complete open tool calls and finish.

        Raises:
            ProviderError: the stream ended before ``message_delta``/``message_stop``.
        """
        if self._stop_reason is None and not self._stopped:
            raise closed_early()
        out = [self._complete(index) for index in list(self._calls)]
        raw = self._stop_reason
        reason = _STOP_REASONS.get(raw, "other") if raw is not None else "other"
        out.append(finish(reason, raw, self._usage))
        return out

    def _message_start(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return self._update_usage((event.get("message") or {}).get("usage"))

    def _message_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        reason = (event.get("delta") or {}).get("stop_reason")
        if isinstance(reason, str):
            self._stop_reason = reason
        return self._update_usage(event.get("usage"))

    def _message_stop(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        self._stopped = True
        return []

    def _update_usage(self, usage: object) -> list[ProviderEvent]:
        if not isinstance(usage, Mapping):
            return []
        for key in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ):
            value = usage.get(key)
            if isinstance(value, int):
                self._counts[key] = value
        thinking = (usage.get("output_tokens_details") or {}).get("thinking_tokens")
        if isinstance(thinking, int):
            self._counts["thinking_tokens"] = thinking
        counts = self._counts
        cached = counts.get("cache_read_input_tokens", 0)
        self._usage = Usage(
            input_tokens=counts.get("input_tokens", 0)
            + cached
            + counts.get("cache_creation_input_tokens", 0),
            output_tokens=counts.get("output_tokens", 0),
            reasoning_tokens=counts.get("thinking_tokens", 0),
            cached_input_tokens=cached,
        )
        return [self._usage]

    def _block_start(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        index = int(event.get("index") or 0)
        block = event.get("content_block") or {}
        kind = block.get("type")
        if kind == "text":
            out = self._text(index, block.get("text"))
            for citation in block.get("citations") or ():
                out += self._source(citation)
            return out
        if kind == "thinking":
            return self._reasoning(index, block.get("thinking"))
        if kind in _TOOL_BLOCKS:
            return self._tool_start(index, block, provider_executed=_TOOL_BLOCKS[str(kind)])
        if kind == "web_search_tool_result":
            out = []
            content = block.get("content")
            for result in content if isinstance(content, list) else ():
                out += self._source(result)
            return out
        return []

    def _tool_start(
        self, index: int, block: Mapping[str, Any], *, provider_executed: bool
    ) -> list[ProviderEvent]:
        part = self._parts.index("tool", ("block", index))
        initial = block.get("input")
        call = _Call(
            id=str(block.get("id") or f"toolu_{index}"),
            name=str(block.get("name") or ""),
            part=part,
            provider_executed=provider_executed,
            initial=msgspec.json.encode(initial).decode() if initial else "",
        )
        self._calls[index] = call
        return [
            ToolCallStart(
                part=part, tool_call_id=call.id, name=call.name, provider_executed=provider_executed
            )
        ]

    def _block_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        index = int(event.get("index") or 0)
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return self._text(index, delta.get("text"))
        if kind == "thinking_delta":
            return self._reasoning(index, delta.get("thinking"))
        if kind == "citations_delta":
            return self._source(delta.get("citation") or {})
        call = self._calls.get(index)
        text = delta.get("partial_json")
        if kind != "input_json_delta" or call is None or not isinstance(text, str) or not text:
            return []
        call.text += text
        part = self._parts.index("tool", ("block", index))
        return [ToolCallDelta(part=part, tool_call_id=call.id, delta=text)]

    def _block_stop(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        index = int(event.get("index") or 0)
        return [self._complete(index)] if index in self._calls else []

    def _complete(self, index: int) -> ProviderEvent:
        call = self._calls.pop(index)
        text = call.text or call.initial
        return tool_call(
            call.part, call.id, call.name, text, provider_executed=call.provider_executed
        )

    def _text(self, index: int, text: object) -> list[ProviderEvent]:
        if not isinstance(text, str) or not text:
            return []
        return [TextDelta(part=self._parts.index("text", ("block", index)), delta=text)]

    def _reasoning(self, index: int, text: object) -> list[ProviderEvent]:
        if not isinstance(text, str) or not text:
            return []
        return [ReasoningDelta(part=self._parts.index("reasoning", ("block", index)), delta=text)]

    def _source(self, item: Mapping[str, Any]) -> list[ProviderEvent]:
        url = item.get("url")
        if not isinstance(url, str) or not url or url in self._sources:
            return []
        self._sources.add(url)
        title = item.get("title")
        part = self._parts.index("source", url)
        return [Source(part=part, url=url, title=title if isinstance(title, str) else None)]

    def _error(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        raise error_for_code(*body_error(event))


def translate_anthropic_error(exc: Exception) -> ProviderError:
    """Translate an ``anthropic`` SDK or ``httpx2`` exception (the one boundary).

    The SDK raises an ``event: error`` inside an HTTP 200 body as ``APIStatusError``
    with status 200; that is mapped as an in-band error by its ``error.type``.
    """
    if isinstance(exc, anthropic.APIStatusError):
        kind, message = body_error(exc.body)
        status = exc.status_code
        if status < 400:
            return error_for_code(kind, message)
        fallback = f"the provider answered HTTP {status}"
        return error_for_status(status, message or fallback, exc.response.headers)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        return connection_error(
            isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException)
        )
    if isinstance(exc, anthropic.APIError):
        return error_for_code(*body_error(exc.body))
    return ProviderError(
        "provider_error", "the Anthropic client failed (is ANTHROPIC_API_KEY set?)"
    )


def anthropic_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages API ``messages`` (Anthropic API docs, "Tool use → Handling tool use
    and tool results"): an assistant's tool calls become ``tool_use`` blocks (their
    ``input`` the parsed arguments; text that is not a JSON object is sent as
    ``{"arguments": text}``), ``tool`` messages ``tool_result`` blocks (``is_error``
    when the call failed) in one ``user`` message, before that turn's user text;
    ``system`` messages are left out (they go to ``system``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        blocks: list[dict[str, Any]] = []
        if m.role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            blocks.append({**result, "is_error": True} if m.is_error else result)
        elif m.tool_calls:
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for call in m.tool_calls:
                arguments, invalid = parse_arguments(call.arguments)
                payload = {"arguments": call.arguments} if invalid else arguments
                blocks.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": payload}
                )
        else:
            blocks.append({"type": "text", "text": m.content})
        role = "assistant" if m.role == "assistant" else "user"
        if out and out[-1]["role"] == role and m.role != "assistant":  # results, then the text
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for message in out:  # plain text stays a string, as before tools
        if len(message["content"]) == 1 and message["content"][0]["type"] == "text":
            message["content"] = message["content"][0]["text"]
    return out


def anthropic_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Messages API ``tools``: ``{name, description?, input_schema}``."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        entry: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description:
            entry["description"] = tool.description
        out.append(entry)
    return out


class AnthropicProvider(SDKProvider[anthropic.AsyncAnthropic]):
    """The Messages API over the official ``anthropic`` SDK (``POST /v1/messages``).

    Args:
        api_key: the key; ``None`` lets the SDK read ``ANTHROPIC_API_KEY``.
        base_url: ``None`` lets the SDK read ``ANTHROPIC_BASE_URL`` (default
            ``https://api.anthropic.com``).
        http_client: an ``httpx2.AsyncClient`` to send requests with; ``None`` lets
            the SDK make its own.
        max_tokens: ``max_tokens`` (required by the API) when the request's
            ``params`` don't set it, in tokens.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
        max_tokens: int = 4096,
    ) -> None:
        super().__init__(api_key=api_key, base_url=base_url, http_client=http_client)
        self._max_tokens = max_tokens

    def _make_client(self) -> anthropic.AsyncAnthropic:
        client = anthropic.AsyncAnthropic(
            api_key=self._api_key,
            base_url=self._base_url,
            http_client=self._http_client,
            max_retries=0,
        )
        if client.api_key is None and client.auth_token is None:
            # The SDK only fails at the first request, with a TypeError.
            message = "the Anthropic client is not configured (is ANTHROPIC_API_KEY set?)"
            raise ProviderError("invalid_request", message)
        return client

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one message; closing this generator closes the HTTP response.

        Raises:
            ProviderError: for every upstream failure, in-band errors included.
        """
        parser = MessagesParser()
        params = dict(request.params)
        max_tokens = params.pop("max_tokens", self._max_tokens)
        system = [m.content for m in request.messages if m.role == "system"]
        if request.system is not None:
            system.insert(0, request.system)
        tools = anthropic_tools(request.tools)
        try:
            events = await self._sdk().messages.create(
                model=request.model,
                max_tokens=cast(int, max_tokens),
                messages=cast(Any, anthropic_messages(request.messages)),
                tools=cast(Any, tools) if tools else anthropic.omit,
                system="\n\n".join(system) if system else anthropic.omit,
                stream=True,
                extra_body=params or None,
            )
            async with events:
                async for event in events:
                    for produced in parser.feed(event.to_dict()):
                        yield produced
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise translate_anthropic_error(exc) from exc
        for produced in parser.end():
            yield produced
