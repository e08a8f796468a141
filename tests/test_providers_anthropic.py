"""MessagesParser on small hand-written event tables (sans-I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenwire.errors import ProviderError
from tokenwire.events import (
    Finish,
    ReasoningDelta,
    Source,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tokenwire.providers.anthropic import MessagesParser
from tokenwire.providers.base import ProviderEvent


def run(*events: dict[str, Any]) -> list[ProviderEvent]:
    parser = MessagesParser()
    return [e for event in events for e in parser.feed(event)] + parser.end()


def start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str, output_tokens: int | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": stop_reason}}
    if output_tokens is not None:
        event["usage"] = {"output_tokens": output_tokens}
    return event


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "usage": {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
            "output_tokens": 1,
        }
    },
}


def test_thinking_signature_text_and_cumulative_usage() -> None:
    events = run(
        MESSAGE_START,
        start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        {"type": "ping"},
        delta(0, type="thinking_delta", thinking="Hmm"),
        delta(0, type="signature_delta", signature="EuYDCmMI"),
        stop(0),
        start(1, {"type": "text", "text": ""}),
        delta(1, type="text_delta", text="Hi"),
        stop(1),
        message_delta("end_turn", 42),
        {"type": "message_stop"},
    )
    first = Usage(input_tokens=115, output_tokens=1, cached_input_tokens=100)
    last = Usage(input_tokens=115, output_tokens=42, cached_input_tokens=100)
    assert events == [
        first,
        ReasoningDelta(part=0, delta="Hmm"),
        TextDelta(part=1, delta="Hi"),
        last,
        Finish(
            finish_reason="stop",
            provider_finish_reason="end_turn",
            usage=TokenUsage(input_tokens=115, output_tokens=42, cached_input_tokens=100),
        ),
    ]


def test_tool_use_with_input_json_delta() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {}}
    events = run(
        start(0, tool),
        delta(0, type="input_json_delta", partial_json=""),
        delta(0, type="input_json_delta", partial_json='{"a": '),
        delta(0, type="input_json_delta", partial_json="1}"),
        stop(0),
        message_delta("tool_use"),
    )
    assert events == [
        ToolCallStart(part=0, tool_call_id="toolu_1", name="get"),
        ToolCallDelta(part=0, tool_call_id="toolu_1", delta='{"a": '),
        ToolCallDelta(part=0, tool_call_id="toolu_1", delta="1}"),
        ToolCall(part=0, tool_call_id="toolu_1", name="get", arguments={"a": 1}),
        Finish(finish_reason="tool_calls", provider_finish_reason="tool_use"),
    ]


def test_tool_use_with_complete_input_and_no_delta() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"a": 1}}
    events = run(start(0, tool), stop(0), message_delta("tool_use"))
    assert events[1] == ToolCall(part=0, tool_call_id="toolu_1", name="get", arguments={"a": 1})


def test_web_search_results_and_citations_are_sources() -> None:
    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    results = [
        {"type": "web_search_result", "url": "https://a.example", "title": "A"},
        {"type": "web_search_result", "url": "https://b.example", "title": "B"},
    ]
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": results}
    citation = {"type": "web_search_result_location", "url": "https://a.example", "title": "A"}
    events = run(
        start(0, search),
        delta(0, type="input_json_delta", partial_json='{"query": "x"}'),
        stop(0),
        start(1, result),
        stop(1),
        start(2, {"type": "text", "text": "", "citations": []}),
        delta(2, type="citations_delta", citation=citation),
        delta(2, type="citations_delta", citation=citation | {"url": "https://c.example"}),
        delta(2, type="text_delta", text="Cited."),
        stop(2),
        message_delta("end_turn"),
    )
    assert events == [
        ToolCallStart(part=0, tool_call_id="srvtoolu_1", name="web_search", provider_executed=True),
        ToolCallDelta(part=0, tool_call_id="srvtoolu_1", delta='{"query": "x"}'),
        ToolCall(
            part=0,
            tool_call_id="srvtoolu_1",
            name="web_search",
            arguments={"query": "x"},
            provider_executed=True,
        ),
        Source(part=1, url="https://a.example", title="A"),
        Source(part=2, url="https://b.example", title="B"),
        Source(part=3, url="https://c.example", title="A"),
        TextDelta(part=4, delta="Cited."),
        Finish(finish_reason="stop", provider_finish_reason="end_turn"),
    ]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "other"),
        ("something_new", "other"),
    ],
)
def test_stop_reasons(raw: str, want: str) -> None:
    assert run(message_delta(raw))[-1] == Finish(finish_reason=want, provider_finish_reason=raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("overloaded_error", "provider_overloaded"),
        ("rate_limit_error", "provider_rate_limited"),
        ("api_error", "provider_error"),
    ],
)
def test_error_event(kind: str, code: str) -> None:
    parser = MessagesParser()
    event = {"type": "error", "error": {"type": kind, "message": "Overloaded"}}
    with pytest.raises(ProviderError) as caught:
        parser.feed(event)
    assert (caught.value.code, caught.value.message, caught.value.retryable) == (
        code,
        "Overloaded",
        True,
    )


def test_stream_cut_before_message_delta() -> None:
    parser = MessagesParser()
    parser.feed(start(0, {"type": "text", "text": ""}))
    parser.feed(delta(0, type="text_delta", text="partial"))
    with pytest.raises(ProviderError, match="closed the stream before it finished"):
        parser.end()
