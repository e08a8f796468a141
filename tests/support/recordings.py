"""An independent reading of recorded provider streams, to check tokenwire against.

Deliberately simple and separate from ``tokenwire.providers``: it imports nothing
from tokenwire and parses the raw bytes itself (split on blank lines, JSON-load the
``data:`` lines), so a bug in the adapters cannot hide behind the same bug here.
The lead's end-to-end tests reuse :func:`expected` as well.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

__all__ = ["RECORDINGS", "Expected", "expected", "recordings", "sse_events"]

RECORDINGS = Path(__file__).resolve().parents[2] / "src" / "tokenwire" / "recordings"
"""The recordings bundled with tokenwire (``<api>/<name>.sse`` + ``<name>.meta.json``)."""

_APIS = ("openai-chat", "openai-responses", "anthropic-messages")


@dataclass
class Expected:
    """What a recorded stream says, read independently.

    Attributes:
        text: all text, concatenated (OpenAI refusals count as text).
        reasoning: all reasoning, concatenated (``reasoning_content``/``reasoning``,
            ``<think>`` blocks, reasoning summaries, thinking).
        tool_calls: ``(name, arguments)`` in order of appearance, arguments parsed
            from JSON; provider-run calls (web search) included.
        finish_reason: tokenwire's ``finish_reason`` (``stop``, ``length``,
            ``tool_calls``, ``content_filter``, ``other``), ``None`` if the stream
            never says.
        error: the stream carries an in-band error.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    error: bool = False


def recordings(api: str | None = None) -> list[Path]:
    """The ``.sse`` recordings of the three supported APIs (or of ``api``), sorted."""
    apis = (api,) if api else _APIS
    return sorted(p for a in apis for p in (RECORDINGS / a).glob("*.sse"))


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """Split an SSE body into ``(event name, JSON data)``; ``[DONE]`` and comments dropped."""
    text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    out: list[tuple[str | None, Any]] = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[len("event:") :].strip()
            elif line.startswith("data:"):
                data.append(line[len("data:") :].removeprefix(" "))
        payload = "\n".join(data).strip()
        if payload and payload != "[DONE]":
            out.append((name, json.loads(payload)))
    return out


def expected(path: Path) -> Expected:
    """Read a recording (``.sse``) of ``openai-chat``, ``openai-responses`` or
    ``anthropic-messages`` (the API is its folder's name) into :class:`Expected`."""
    events = sse_events(Path(path).read_bytes())
    api = Path(path).parent.name
    if api == "openai-chat":
        return _chat(events)
    if api == "openai-responses":
        return _responses(events)
    if api == "anthropic-messages":
        return _anthropic(events)
    raise ValueError(f"no reader for {api}")


_CHAT_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}
_CHAT_FINISH |= {"function_call": "tool_calls", "content_filter": "content_filter"}


def _chat(events: list[tuple[str | None, Any]]) -> Expected:
    result = Expected()
    content, calls = "", cast(dict[Any, list[str]], {})
    for _, chunk in events:
        if "error" in chunk:
            result.error = True
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            result.reasoning += delta.get("reasoning_content") or delta.get("reasoning") or ""
            if isinstance(delta.get("content"), list):
                for item in delta["content"]:
                    if item.get("type") == "text":
                        result.text += item["text"]
                    elif item.get("type") == "thinking":
                        thinking = item["thinking"]
                        if isinstance(thinking, list):
                            thinking = "".join(t.get("text", "") for t in thinking)
                        result.reasoning += thinking
            else:
                content += delta.get("content") or ""
            content += delta.get("refusal") or ""
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call.get("index"), ["", ""])
                entry[0] += call.get("function", {}).get("name") or ""
                entry[1] += call.get("function", {}).get("arguments") or ""
            if choice.get("finish_reason"):
                result.finish_reason = _CHAT_FINISH.get(choice["finish_reason"], "other")
    match = re.match(r"\s*<think>(.*?)(</think>|$)", content, re.DOTALL)
    if match:
        result.reasoning += match.group(1).lstrip()
        content = content[match.end() :].lstrip()
    result.text += content
    result.tool_calls = [(name, json.loads(args or "{}")) for name, args in calls.values()]
    return result


def _responses(events: list[tuple[str | None, Any]]) -> Expected:
    result = Expected()
    function_calls = False
    for _, event in events:
        kind = event.get("type")
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            result.text += event["delta"]
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            result.reasoning += event["delta"]
        elif kind == "response.output_item.done" and event["item"]["type"] == "function_call":
            item = event["item"]
            result.tool_calls.append((item["name"], json.loads(item["arguments"] or "{}")))
            function_calls = True
        elif kind == "response.output_item.done" and event["item"]["type"] == "web_search_call":
            result.tool_calls.append(("web_search", event["item"].get("action") or {}))
        elif kind == "response.completed":
            result.finish_reason = "tool_calls" if function_calls else "stop"
        elif kind == "response.incomplete":
            reason = str((event["response"].get("incomplete_details") or {}).get("reason"))
            limits = {"max_output_tokens": "length", "content_filter": "content_filter"}
            result.finish_reason = limits.get(reason, "other")
        elif kind in ("error", "response.failed"):
            result.error = True
    return result


_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
_ANTHROPIC_FINISH |= {"tool_use": "tool_calls", "refusal": "content_filter"}


def _anthropic(events: list[tuple[str | None, Any]]) -> Expected:
    result = Expected()
    calls: dict[int, list[str]] = {}
    for name, event in events:
        kind = event.get("type")
        if kind == "content_block_start" and "tool_use" in event["content_block"]["type"]:
            calls[event["index"]] = [event["content_block"]["name"], ""]
        elif kind == "content_block_delta":
            delta = event["delta"]
            result.text += delta.get("text", "") if delta["type"] == "text_delta" else ""
            result.reasoning += (
                delta.get("thinking", "") if delta["type"] == "thinking_delta" else ""
            )
            if delta["type"] == "input_json_delta":
                calls[event["index"]][1] += delta["partial_json"]
        elif kind == "content_block_stop" and event["index"] in calls:
            call_name, arguments = calls.pop(event["index"])
            result.tool_calls.append((call_name, json.loads(arguments or "{}")))
        elif kind == "message_delta" and event["delta"].get("stop_reason"):
            result.finish_reason = _ANTHROPIC_FINISH.get(event["delta"]["stop_reason"], "other")
        elif kind == "error" or name == "error":
            result.error = True
    return result
