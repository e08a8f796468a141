"""ResponsesParser on small hand-written event tables (sans-I/O)."""

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
from tokenwire.providers.base import ProviderEvent
from tokenwire.providers.openai_responses import ResponsesParser


def run(*events: dict[str, Any]) -> list[ProviderEvent]:
    parser = ResponsesParser()
    return [e for event in events for e in parser.feed(event)] + parser.end()


def completed(status: str = "completed", **response: Any) -> dict[str, Any]:
    return {"type": f"response.{status}", "response": {"status": status, **response}}


def text(delta: str, item: str = "msg_1", content_index: int = 0) -> dict[str, Any]:
    return {
        "type": "response.output_text.delta",
        "item_id": item,
        "content_index": content_index,
        "delta": delta,
    }


def summary(delta: str, index: int) -> dict[str, Any]:
    kind = "response.reasoning_summary_text.delta"
    return {"type": kind, "item_id": "rs_1", "summary_index": index, "delta": delta}


def test_reasoning_summary_then_text_with_usage() -> None:
    usage = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 30,
        "output_tokens_details": {"reasoning_tokens": 20},
    }
    events = run(
        {"type": "response.created", "response": {"status": "in_progress"}},
        summary("**Plan**", 0),
        summary("Second", 1),
        text("Hi"),
        text("!"),
        completed(usage=usage),
    )
    tokens = TokenUsage(
        input_tokens=10, output_tokens=30, reasoning_tokens=20, cached_input_tokens=2
    )
    assert events == [
        ReasoningDelta(part=0, delta="**Plan**"),
        ReasoningDelta(part=1, delta="Second"),
        TextDelta(part=2, delta="Hi"),
        TextDelta(part=2, delta="!"),
        Usage(input_tokens=10, output_tokens=30, reasoning_tokens=20, cached_input_tokens=2),
        Finish(finish_reason="stop", provider_finish_reason="completed", usage=tokens),
    ]


def test_function_call() -> None:
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get",
        "arguments": "",
    }
    arguments = {"type": "response.function_call_arguments.delta", "item_id": "fc_1"}
    done = item | {"arguments": '{"a": 1}', "status": "completed"}
    events = run(
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        arguments | {"delta": '{"a"'},
        arguments | {"delta": ": 1}"},
        {
            "type": "response.function_call_arguments.done",
            "item_id": "fc_1",
            "arguments": '{"a": 1}',
        },
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        completed(),
    )
    assert events == [
        ToolCallStart(part=0, tool_call_id="call_1", name="get"),
        ToolCallDelta(part=0, tool_call_id="call_1", delta='{"a"'),
        ToolCallDelta(part=0, tool_call_id="call_1", delta=": 1}"),
        ToolCall(part=0, tool_call_id="call_1", name="get", arguments={"a": 1}),
        Finish(finish_reason="tool_calls", provider_finish_reason="completed"),
    ]


def test_web_search_and_citations() -> None:
    search = {"type": "web_search_call", "id": "ws_1", "status": "in_progress"}
    action: dict[str, object] = {"type": "search", "query": "tokenwire"}
    cite = {"type": "url_citation", "url": "https://a.example", "title": "A"}
    message = {
        "type": "message",
        "id": "msg_1",
        "content": [
            {"type": "output_text", "annotations": [cite, cite | {"url": "https://b.example"}]}
        ],
    }
    events = run(
        {"type": "response.output_item.added", "item": search},
        {"type": "response.web_search_call.searching", "item_id": "ws_1"},
        {"type": "response.output_item.done", "item": search | {"action": action}},
        text("See "),
        {"type": "response.output_text.annotation.added", "item_id": "msg_1", "annotation": cite},
        text("this."),
        {"type": "response.output_item.done", "item": message},
        completed(),
    )
    assert events == [
        ToolCallStart(part=0, tool_call_id="ws_1", name="web_search", provider_executed=True),
        ToolCall(
            part=0, tool_call_id="ws_1", name="web_search", arguments=action, provider_executed=True
        ),
        TextDelta(part=1, delta="See "),
        Source(part=2, url="https://a.example", title="A"),
        TextDelta(part=1, delta="this."),
        Source(part=3, url="https://b.example", title="A"),
        Finish(finish_reason="stop", provider_finish_reason="completed"),
    ]


@pytest.mark.parametrize(
    ("reason", "want"),
    [("max_output_tokens", "length"), ("content_filter", "content_filter"), ("other", "other")],
)
def test_incomplete(reason: str, want: str) -> None:
    events = run(text("cut"), completed("incomplete", incomplete_details={"reason": reason}))
    assert events[-1] == Finish(finish_reason=want, provider_finish_reason=reason)  # type: ignore[arg-type]


def test_refusal_is_text() -> None:
    refusal = {"type": "response.refusal.delta", "item_id": "msg_1", "content_index": 0}
    events = run(refusal | {"delta": "No."}, completed())
    assert events[0] == TextDelta(part=0, delta="No.", refusal=True)


@pytest.mark.parametrize(
    ("event", "code", "message"),
    [
        (
            {"type": "error", "code": "rate_limit_exceeded", "message": "Too fast", "param": None},
            "provider_rate_limited",
            "Too fast",
        ),
        (
            completed("failed", error={"code": "server_error", "message": "Boom"}),
            "provider_error",
            "Boom",
        ),
        ({"type": "error"}, "provider_error", "the provider reported an error"),
    ],
)
def test_errors(event: dict[str, Any], code: str, message: str) -> None:
    parser = ResponsesParser()
    parser.feed(text("partial"))
    with pytest.raises(ProviderError) as caught:
        parser.feed(event)
    assert (caught.value.code, caught.value.message) == (code, message)


def test_stream_cut_before_completed() -> None:
    parser = ResponsesParser()
    parser.feed(text("partial"))
    with pytest.raises(ProviderError, match="closed the stream before it finished"):
        parser.end()
