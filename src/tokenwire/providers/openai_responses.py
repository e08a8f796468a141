"""OpenAI Responses API streaming (``POST /v1/responses`` with ``stream: true``).

Protocol reference: OpenAI API reference, "Responses → Streaming events"
(https://platform.openai.com/docs/api-reference/responses-streaming). Every SSE
event carries a JSON object whose ``type`` names it; the stream ends with one of
``response.completed``, ``response.incomplete``, ``response.failed`` or ``error``.

Events used here:

- ``response.output_text.delta`` and ``response.refusal.delta`` → text, one part
  per output item content part;
- ``response.reasoning_summary_text.delta`` and ``response.reasoning_text.delta``
  → reasoning, one part per summary/content part;
- ``response.output_item.added``/``.done`` with a ``function_call`` item and
  ``response.function_call_arguments.delta`` between them → a tool call;
- ``web_search_call``, ``file_search_call`` and ``code_interpreter_call`` items →
  tool calls run by the provider (``provider_executed``), their ``action`` /
  ``queries`` / ``code`` as arguments;
- ``url_citation`` annotations (``response.output_text.annotation.added`` or on the
  finished message item) → :class:`~tokenwire.events.Source`, once per URL;
- ``response.completed``/``response.incomplete`` → usage and the finish reason.

:class:`ResponsesParser` is sans-I/O; :class:`OpenAIResponsesProvider` is the I/O
shell on the official ``openai`` SDK; :func:`responses_input` and
:func:`responses_tools` build the request's tools and tool history.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import openai

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
    error_for_code,
    finish,
    tool_call,
)
from tokenwire.providers.openai_chat import (
    SDK_ERRORS,
    body_error,
    closed_early,
    make_openai_client,
    translate_openai_error,
)
from tokenwire.providers.sdk import SDKProvider

__all__ = ["OpenAIResponsesProvider", "ResponsesParser", "responses_input", "responses_tools"]

_INCOMPLETE_REASONS: dict[str, FinishReason] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
}


def _provider_call_arguments(item: Mapping[str, Any]) -> dict[str, Any]:
    kind = item.get("type")
    if kind == "web_search_call":
        action = item.get("action")
        return dict(action) if isinstance(action, Mapping) else {}
    if kind == "file_search_call":
        return {"queries": item.get("queries") or []}
    if kind == "code_interpreter_call":
        return {"code": item.get("code") or ""}
    return {}


_PROVIDER_CALLS = {"web_search_call", "file_search_call", "code_interpreter_call"}


@dataclass
class _Call:
    id: str
    name: str
    part: int
    provider_executed: bool
    text: str = ""
    done: bool = False


class ResponsesParser:
    """Turns Responses API streaming events (dicts) into events (sans-I/O).

    Call :meth:`feed` for every event and :meth:`end` once the stream is over.
    """

    def __init__(self) -> None:
        self._parts = Parts()
        self._calls: dict[str, _Call] = {}  # by output item id
        self._sources: set[str] = set()
        self._usage: Usage | None = None
        self._status: str | None = None
        self._reason: str | None = None
        self._handlers: dict[str, Callable[[Mapping[str, Any]], list[ProviderEvent]]] = {
            "response.output_item.added": self._item_added,
            "response.output_item.done": self._item_done,
            "response.function_call_arguments.delta": self._arguments_delta,
            "response.output_text.delta": self._text_delta,
            "response.refusal.delta": self._refusal_delta,
            "response.reasoning_summary_text.delta": self._reasoning_delta,
            "response.reasoning_text.delta": self._reasoning_delta,
            "response.output_text.annotation.added": self._annotation,
            "response.completed": self._completed,
            "response.incomplete": self._completed,
            "response.failed": self._failed,
            "error": self._error,
        }

    def feed(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        """Consume one streaming event; unknown event types are ignored.

        Raises:
            ProviderError: ``error`` and ``response.failed`` events.
        """
        handler = self._handlers.get(str(event.get("type")))
        return handler(event) if handler is not None else []

    def end(self) -> list[ProviderEvent]:
        """The stream is over: complete pending tool calls and finish.

        Raises:
            ProviderError: no ``response.completed``/``response.incomplete`` was seen.
        """
        if self._status is None:
            raise closed_early()
        out: list[ProviderEvent] = []
        for call in self._calls.values():
            if not call.done:
                out.append(self._complete(call, call.text))
        client_calls = any(not call.provider_executed for call in self._calls.values())
        reason: FinishReason
        if self._status == "completed":
            reason = "tool_calls" if client_calls else "stop"
            raw = self._status
        else:
            raw = self._reason or self._status
            reason = _INCOMPLETE_REASONS.get(raw, "other")
        out.append(finish(reason, raw, self._usage))
        return out

    def _item_added(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        item = event.get("item") or {}
        kind, item_id = item.get("type"), str(item.get("id") or "")
        if item_id in self._calls:
            return []
        if kind == "function_call":
            call_id, name, provider = item.get("call_id") or item_id, item.get("name") or "", False
        elif kind in _PROVIDER_CALLS:
            call_id, name, provider = item_id, str(kind).removesuffix("_call"), True
        else:
            return []
        part = self._parts.index("tool", item_id)
        call = _Call(id=str(call_id), name=str(name), part=part, provider_executed=provider)
        self._calls[item_id] = call
        return [
            ToolCallStart(
                part=part, tool_call_id=call.id, name=call.name, provider_executed=provider
            )
        ]

    def _item_done(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        item = event.get("item") or {}
        kind = item.get("type")
        if kind == "message":
            out: list[ProviderEvent] = []
            for content in item.get("content") or ():
                for annotation in content.get("annotations") or ():
                    out += self._source(annotation)
            return out
        out = self._item_added(event)  # a call whose ``added`` event we missed
        call = self._calls.get(str(item.get("id") or ""))
        if call is None or call.done:
            return out
        if call.provider_executed:
            text = msgspec.json.encode(_provider_call_arguments(item)).decode()
        else:
            arguments = item.get("arguments")
            text = arguments if isinstance(arguments, str) else call.text
        out.append(self._complete(call, text))
        return out

    def _complete(self, call: _Call, text: str) -> ProviderEvent:
        call.done = True
        return tool_call(
            call.part, call.id, call.name, text, provider_executed=call.provider_executed
        )

    def _arguments_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        item_id = str(event.get("item_id") or "")
        call = self._calls.get(item_id)
        delta = event.get("delta")
        if call is None or not isinstance(delta, str) or not delta:
            return []
        call.text += delta
        part = self._parts.index("tool", item_id)
        return [ToolCallDelta(part=part, tool_call_id=call.id, delta=delta)]

    def _text_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        part = self._parts.index("text", (event.get("item_id"), event.get("content_index")))
        return [TextDelta(part=part, delta=delta)]

    def _refusal_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return [
            TextDelta(part=e.part, delta=e.delta, refusal=True)
            for e in self._text_delta(event)
            if isinstance(e, TextDelta)
        ]

    def _reasoning_delta(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return []
        index = event.get("summary_index", event.get("content_index"))
        part = self._parts.index("reasoning", (event.get("item_id"), event.get("type"), index))
        return [ReasoningDelta(part=part, delta=delta)]

    def _annotation(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        return self._source(event.get("annotation") or {})

    def _source(self, annotation: Mapping[str, Any]) -> list[ProviderEvent]:
        url = annotation.get("url")
        if annotation.get("type") != "url_citation" or not isinstance(url, str):
            return []
        if url in self._sources:
            return []
        self._sources.add(url)
        title = annotation.get("title")
        part = self._parts.index("source", url)
        return [Source(part=part, url=url, title=title if isinstance(title, str) else None)]

    def _completed(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        response = event.get("response") or {}
        self._status = str(response.get("status") or event.get("type", "").split(".")[-1])
        details = response.get("incomplete_details") or {}
        reason = details.get("reason")
        self._reason = reason if isinstance(reason, str) else None
        usage = response.get("usage")
        if not isinstance(usage, Mapping):
            return []
        input_details = usage.get("input_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or {}
        self._usage = Usage(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            reasoning_tokens=int(output_details.get("reasoning_tokens") or 0),
            cached_input_tokens=int(input_details.get("cached_tokens") or 0),
        )
        return [self._usage]

    def _failed(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        response = event.get("response") or {}
        raise error_for_code(*body_error(response.get("error") or {}))

    def _error(self, event: Mapping[str, Any]) -> list[ProviderEvent]:
        raise error_for_code(*body_error(event))


def responses_input(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Responses API ``input`` items (OpenAI API reference, "Responses → Create",
    "Function calling" guide): messages as ``{role, content}``, an assistant's
    tool calls as ``function_call`` items (``call_id``, ``name``, ``arguments``)
    after its text, ``tool`` messages as ``function_call_output`` items."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "tool":
            output = {"type": "function_call_output", "call_id": m.tool_call_id or ""}
            out.append({**output, "output": m.content})
            continue
        if m.content or not m.tool_calls:
            out.append({"role": m.role, "content": m.content})
        for c in m.tool_calls:
            call = {"type": "function_call", "call_id": c.id, "name": c.name}
            out.append({**call, "arguments": c.arguments})
    return out


def responses_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """Responses API function ``tools``: flat ``{type: "function", name,
    description?, parameters}``."""
    out: list[dict[str, Any]] = []
    for tool in tools:
        entry: dict[str, Any] = {"type": "function", "name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        out.append({**entry, "parameters": tool.parameters})
    return out


class OpenAIResponsesProvider(SDKProvider[openai.AsyncOpenAI]):
    """The Responses API over the official ``openai`` SDK (``POST /v1/responses``).

    Args:
        api_key: the key; ``None`` lets the SDK read ``OPENAI_API_KEY``.
        base_url: ``None`` lets the SDK read ``OPENAI_BASE_URL`` (default
            ``https://api.openai.com/v1``).
        http_client: an ``httpx2.AsyncClient`` to send requests with; ``None`` lets
            the SDK make its own.
    """

    def _make_client(self) -> openai.AsyncOpenAI:
        return make_openai_client(self._api_key, self._base_url, self._http_client)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[ProviderEvent]:
        """Stream one response; closing this generator closes the HTTP response.

        Raises:
            ProviderError: for every upstream failure, in-band errors included.
        """
        parser = ResponsesParser()
        tools = responses_tools(request.tools)
        try:
            events = await self._sdk().responses.create(
                model=request.model,
                input=cast(Any, responses_input(request.messages)),
                tools=cast(Any, tools) if tools else openai.omit,
                instructions=request.system if request.system is not None else openai.omit,
                stream=True,
                extra_body=dict(request.params) or None,
            )
            async with events:
                async for event in events:
                    for produced in parser.feed(event.to_dict()):
                        yield produced
        except SDK_ERRORS as exc:
            raise translate_openai_error(exc) from exc
        for produced in parser.end():
            yield produced
