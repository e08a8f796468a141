"""OpenAI Responses API on the wire, sans-I/O: a stream's events in, Responses
streaming events and the ``response`` object out.

Wire format references: OpenAI API reference, "Responses → Streaming events"
(https://platform.openai.com/docs/api-reference/responses-streaming) and "The
response object"; the ``openai`` Python SDK's ``ResponseStreamEvent`` and
``Response`` types (``openai/types/responses/``), which the tests parse every
event with. Each SSE frame is ``event: <type>`` plus ``data: <JSON>``, the JSON
carrying ``type`` and ``sequence_number`` (0, 1, 2 … per response); there is no
``[DONE]``.

One stream maps to one response, id ``resp_<stream_id>``:

- ``start`` → ``response.created``, ``response.in_progress``;
- reasoning → a ``reasoning`` output item with one ``summary_text`` part
  (``response.reasoning_summary_part.added``, ``…_text.delta``, ``…_text.done``,
  ``…_part.done``);
- text → a ``message`` item with one ``output_text`` part
  (``response.content_part.added``, ``response.output_text.delta`` / ``.done``,
  ``response.content_part.done``);
- a tool call → a ``function_call`` item (``response.function_call_arguments.delta``
  / ``.done``); provider-executed calls (web search) are not sent;
- every item opens with ``response.output_item.added`` and closes with
  ``response.output_item.done``;
- exactly one terminal event: ``finish`` → ``response.completed``, or
  ``response.incomplete`` for ``length`` (reason ``max_output_tokens``) and
  ``content_filter``; ``error`` → ``response.failed`` with ``response.error``;
  ``cancelled`` → ``response.incomplete`` with status ``cancelled`` and the
  ``x_tokenwire: {"status": "cancelled", "reason": …}`` extension (OpenAI has no
  event for a cancelled stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

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
from tokenwire.protocol.openai_compat import _arguments_text
from tokenwire.protocol.sse import encode_sse

__all__ = ["ResponseEncoder", "item_location", "response_id", "stream_id_of"]

_json = msgspec.json.Encoder()
_ERROR_CODES = {"provider_rate_limited": "rate_limit_exceeded", "invalid_request": "invalid_prompt"}
"""tokenwire ``error.code`` → the Responses ``error.code`` (else ``server_error``)."""
PREFIX = "resp_"


def response_id(stream_id: str) -> str:
    """The Responses id of a stream: ``resp_<stream_id>``."""
    return PREFIX + stream_id


def stream_id_of(response_id: str) -> str | None:
    """The stream id in a ``resp_…`` id, or ``None`` when it is not one of ours."""
    return response_id.removeprefix(PREFIX) if response_id.startswith(PREFIX) else None


def item_location(item_id: str) -> tuple[str, int] | None:
    """``(stream_id, output index)`` of an output item id this module made
    (``msg_…``, ``rs_…``, ``fc_…``: ``<prefix>_<stream_id>_<index>``), else ``None``."""
    prefix, _, rest = item_id.partition("_")
    stream_id, _, index = rest.rpartition("_")
    if prefix not in ("msg", "rs", "fc") or not stream_id or not index.isdigit():
        return None
    return stream_id, int(index)


@dataclass
class _Item:
    """One output item being built: ``kind`` is ``message``, ``reasoning`` or
    ``function_call``; ``text`` its text, summary text or arguments so far."""

    index: int
    id: str
    kind: str
    text: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"
    """``in_progress``, then ``completed``, or ``incomplete`` when the stream failed
    or was cancelled while the item was open."""

    @property
    def done(self) -> bool:
        return self.status != "in_progress"

    def body(self, status: str) -> dict[str, Any]:
        text = "".join(self.text)
        if self.kind == "message":
            content = [_text_part(text)] if status != "in_progress" else []
            return {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": content,
            }
        if self.kind == "reasoning":
            summary = [{"type": "summary_text", "text": text}] if status != "in_progress" else []
            return {"id": self.id, "type": "reasoning", "summary": summary}
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": text,
        }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponseEncoder:
    """Folds one stream's events into Responses streaming events and the response.

    Feed every event from ``seq`` 1 (``start`` gives the id and ``created_at``).
    :meth:`feed` returns the event dicts for an event (each with its
    ``sequence_number``), :meth:`encode` their SSE bytes; :meth:`response` is the
    ``response`` object so far (complete after the terminal event), and
    :attr:`error` the :class:`~tokenwire.events.Error` if the stream failed.

    Args:
        model: the model name to report (the one the client asked for).
        echo: request fields the response object repeats (``temperature``,
            ``tools``, ``metadata`` …), merged over the defaults.
    """

    def __init__(self, model: str, echo: dict[str, Any] | None = None) -> None:
        self.model = model
        self.echo = dict(echo or {})
        self.id = PREFIX
        self.created_at = 0.0
        self.status = "in_progress"
        self.items: list[_Item] = []
        self.calls: dict[str, _Item] = {}
        self.usage: TokenUsage | None = None
        self.error: Error | None = None
        self.incomplete: str | None = None
        self.cancel_reason: str | None = None
        self._open: _Item | None = None
        self._skip: set[str] = set()
        self._seq = 0

    # --- public ------------------------------------------------------------------

    def encode(self, event: Event, after: int = -1) -> bytes:
        """SSE bytes for ``event`` (possibly empty), leaving out the Responses events
        whose ``sequence_number`` is at most ``after`` (a resumed reader's)."""
        return b"".join(
            encode_sse(_json.encode(out), event=out["type"])
            for out in self.feed(event)
            if out["sequence_number"] > after
        )

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The Responses events for ``event``; updates the response state."""
        match event:
            case Start():
                self.id = response_id(event.stream_id)
                self.created_at = event.created_at
                snapshot = self.response()
                return [
                    self._event("response.created", response=snapshot),
                    self._event("response.in_progress", response=snapshot),
                ]
            case TextDelta(delta=delta) if delta:
                return self._delta("message", delta)
            case ReasoningDelta(delta=delta) if delta:
                return self._delta("reasoning", delta)
            case ToolCallStart() | ToolCallDelta() | ToolCall():
                return self._tool(event)
            case Usage():
                self.usage = event.as_token_usage()
            case Finish():
                self.usage = event.usage or self.usage
                reason = {"length": "max_output_tokens", "content_filter": "content_filter"}
                self.incomplete = reason.get(event.finish_reason)
                self.status = "incomplete" if self.incomplete else "completed"
                return self._end(f"response.{self.status}")
            case Cancelled(reason=reason):
                self.cancel_reason, self.status = reason, "cancelled"
                return self._end("response.incomplete")
            case Error():
                self.error, self.status = event, "failed"
                return self._end("response.failed")
        return []

    def response(self) -> dict[str, Any]:
        """The ``response`` object: ``output`` holds every item so far (items still
        open as ``in_progress``); ``usage`` is ``None`` until the terminal event."""
        terminal = self.status != "in_progress"
        out: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model,
            "output": [item.body(item.status) for item in self.items],
            "error": None,
            "incomplete_details": None,
            "usage": _usage(self.usage) if terminal else None,
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            **self.echo,
        }
        if self.error is not None:
            code = _ERROR_CODES.get(self.error.code, "server_error")
            out["error"] = {"code": code, "message": self.error.message}
        if self.incomplete is not None:
            out["incomplete_details"] = {"reason": self.incomplete}
        if self.cancel_reason is not None:
            out["x_tokenwire"] = {"status": "cancelled", "reason": self.cancel_reason}
        return out

    # --- items -------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        out = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return out

    def _where(self, item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index}

    def _add(
        self, kind: str, call_id: str = "", name: str = ""
    ) -> tuple[_Item, list[dict[str, Any]]]:
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        stream = self.id.removeprefix(PREFIX)
        index = len(self.items)
        item = _Item(index, f"{prefix}_{stream}_{index}", kind, call_id=call_id, name=name)
        self.items.append(item)
        added = self._event(
            "response.output_item.added", output_index=index, item=item.body("in_progress")
        )
        return item, [added]

    def _delta(self, kind: str, delta: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        item = self._open
        if item is None or item.kind != kind:
            out += self._close_open()
            item, added = self._add(kind)
            self._open = item
            out += added
            if kind == "message":
                part = {"content_index": 0, "part": _text_part("")}
                out.append(self._event("response.content_part.added", **self._where(item), **part))
            else:
                part = {"summary_index": 0, "part": {"type": "summary_text", "text": ""}}
                out.append(
                    self._event(
                        "response.reasoning_summary_part.added", **self._where(item), **part
                    )
                )
        item.text.append(delta)
        if kind == "message":
            where = {**self._where(item), "content_index": 0, "logprobs": []}
            out.append(self._event("response.output_text.delta", **where, delta=delta))
        else:
            where = {**self._where(item), "summary_index": 0}
            out.append(self._event("response.reasoning_summary_text.delta", **where, delta=delta))
        return out

    def _close_open(self) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        text = "".join(item.text)
        where = self._where(item)
        if item.kind == "message":
            at = {**where, "content_index": 0}
            out = [
                self._event("response.output_text.done", **at, text=text, logprobs=[]),
                self._event("response.content_part.done", **at, part=_text_part(text)),
            ]
        else:
            at = {**where, "summary_index": 0}
            part = {"type": "summary_text", "text": text}
            out = [
                self._event("response.reasoning_summary_text.done", **at, text=text),
                self._event("response.reasoning_summary_part.done", **at, part=part),
            ]
        return [*out, self._item_done(item)]

    def _item_done(self, item: _Item) -> dict[str, Any]:
        item.status = "completed" if self.status in ("in_progress", "completed") else "incomplete"
        return self._event(
            "response.output_item.done", output_index=item.index, item=item.body(item.status)
        )

    def _tool(self, event: ToolCallStart | ToolCallDelta | ToolCall) -> list[dict[str, Any]]:
        key = event.tool_call_id
        if key in self._skip or getattr(event, "provider_executed", False):
            self._skip.add(key)
            return []
        out: list[dict[str, Any]] = []
        item = self.calls.get(key)
        if item is None:
            out += self._close_open()
            name = event.name if isinstance(event, ToolCallStart | ToolCall) else ""
            item, added = self._add("function_call", call_id=key, name=name)
            self.calls[key] = item
            out += added
        delta = ""
        if isinstance(event, ToolCallDelta):
            delta = event.delta
        elif isinstance(event, ToolCall) and not item.text:
            delta = _arguments_text(event)
        if delta and not item.done:
            item.text.append(delta)
            out.append(
                self._event(
                    "response.function_call_arguments.delta", **self._where(item), delta=delta
                )
            )
        if isinstance(event, ToolCall) and not item.done:
            out += self._call_done(item)
        return out

    def _call_done(self, item: _Item) -> list[dict[str, Any]]:
        done = self._event(
            "response.function_call_arguments.done",
            **self._where(item),
            name=item.name,
            arguments="".join(item.text),
        )
        return [done, self._item_done(item)]

    def _end(self, kind: str) -> list[dict[str, Any]]:
        out = self._close_open()
        for item in self.calls.values():
            if not item.done:
                out += self._call_done(item)
        return [*out, self._event(kind, response=self.response())]


def _usage(usage: TokenUsage | None) -> dict[str, Any]:
    u = usage or TokenUsage()
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_input_tokens, "cache_write_tokens": 0},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    }
