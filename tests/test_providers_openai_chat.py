"""ChatCompletionsParser on small hand-written chunk tables (sans-I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenwire.errors import ProviderError
from tokenwire.events import (
    Finish,
    ReasoningDelta,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from tokenwire.providers.base import ProviderEvent
from tokenwire.providers.openai_chat import ChatCompletionsParser


def delta(finish_reason: str | None = None, index: int = 0, **fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": fields, "finish_reason": finish_reason}]}


def run(*chunks: dict[str, Any]) -> list[ProviderEvent]:
    parser = ChatCompletionsParser()
    return [e for c in chunks for e in parser.feed(c)] + parser.end()


def test_text_then_usage_only_chunk() -> None:
    usage = {
        "prompt_tokens": 16,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    events = run(
        delta(role="assistant", content="", refusal=None),
        delta(content="Hel"),
        delta(content="lo"),
        delta("stop"),
        {"choices": [], "usage": usage},
    )
    want_usage = Usage(input_tokens=16, output_tokens=3, reasoning_tokens=1, cached_input_tokens=4)
    assert events == [
        TextDelta(part=0, delta="Hel"),
        TextDelta(part=0, delta="lo"),
        want_usage,
        Finish(
            finish_reason="stop", provider_finish_reason="stop", usage=want_usage.as_token_usage()
        ),
    ]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_fields(field: str) -> None:
    fields: dict[str, Any] = {field: "think"}
    events = run(delta(**fields), delta(content="say"), delta("stop"))
    assert events[:2] == [ReasoningDelta(part=0, delta="think"), TextDelta(part=1, delta="say")]


def test_reasoning_content_wins_over_reasoning_duplicate() -> None:
    events = run(delta(reasoning_content="a", reasoning="a"), delta("stop"))
    assert events[0] == ReasoningDelta(part=0, delta="a")
    assert len(events) == 2


def test_think_tags_split_across_deltas() -> None:
    events = run(
        delta(content="<thi"),
        delta(content="nk>\nplan"),
        delta(content="</think>\n\nAn"),
        delta(content="swer"),
        delta("stop"),
    )
    assert events[:-1] == [
        ReasoningDelta(part=0, delta="plan"),
        TextDelta(part=1, delta="An"),
        TextDelta(part=1, delta="swer"),
    ]


def test_unclosed_think_is_flushed_at_finish() -> None:
    events = run(delta(content="<think>still thinking"), delta(content=" </thi"), delta("length"))
    assert events[:-1] == [
        ReasoningDelta(part=0, delta="still thinking"),
        ReasoningDelta(part=0, delta=" "),  # streamed at once
        ReasoningDelta(part=0, delta="</thi"),  # held back as a possible tag, flushed at finish
    ]
    assert events[-1] == Finish(finish_reason="length", provider_finish_reason="length")


def test_typed_content_part_array() -> None:
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}
    events = run(
        delta(content=[thinking]),
        delta(content=[{"type": "text", "text": "Hi"}, {"type": "reference", "ids": [1]}]),
        delta("stop"),
    )
    assert events[:-1] == [ReasoningDelta(part=0, delta="hmm"), TextDelta(part=1, delta="Hi")]


def test_parallel_tool_calls_interleaved() -> None:
    def call(index: int, arguments: str, **first: str) -> dict[str, Any]:
        function = {"arguments": arguments} | ({"name": first["name"]} if first else {})
        entry: dict[str, Any] = {"index": index, "function": function}
        if first:
            entry |= {"id": first["id"], "type": "function"}
        return delta(tool_calls=[entry])

    events = run(
        call(0, "", id="call_a", name="weather"),
        call(1, '{"ci', id="call_b", name="time"),
        call(0, '{"city": '),
        call(1, 'ty": "Oslo"}'),
        call(0, '"Paris"}'),
        delta("tool_calls"),
    )
    assert events == [
        ToolCallStart(part=0, tool_call_id="call_a", name="weather"),
        ToolCallStart(part=1, tool_call_id="call_b", name="time"),
        ToolCallDelta(part=1, tool_call_id="call_b", delta='{"ci'),
        ToolCallDelta(part=0, tool_call_id="call_a", delta='{"city": '),
        ToolCallDelta(part=1, tool_call_id="call_b", delta='ty": "Oslo"}'),
        ToolCallDelta(part=0, tool_call_id="call_a", delta='"Paris"}'),
        ToolCall(part=0, tool_call_id="call_a", name="weather", arguments={"city": "Paris"}),
        ToolCall(part=1, tool_call_id="call_b", name="time", arguments={"city": "Oslo"}),
        Finish(finish_reason="tool_calls", provider_finish_reason="tool_calls"),
    ]


def test_invalid_tool_arguments_and_legacy_function_call() -> None:
    events = run(delta(function_call={"name": "f", "arguments": "{nope"}), delta("function_call"))
    call = events[-2]
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments, call.invalid, call.arguments_text) == (
        "f",
        None,
        True,
        "{nope",
    )
    assert events[-1] == Finish(finish_reason="tool_calls", provider_finish_reason="function_call")


def test_only_choice_zero_is_followed() -> None:
    events = run(
        delta(content="zero"),
        delta(content="one", index=1),
        delta("stop", index=1),
        delta("length"),
    )
    assert events == [
        TextDelta(part=0, delta="zero"),
        Finish(finish_reason="length", provider_finish_reason="length"),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("stop", "stop"), ("content_filter", "content_filter"), ("eos", "other")],
)
def test_refusal_is_text_and_finish_reason_kept(raw: str, reason: str) -> None:
    events = run(delta(content=None, refusal="I can't"), delta(raw))
    assert events == [
        TextDelta(part=0, delta="I can't", refusal=True),  # text, marked a refusal
        Finish(finish_reason=reason, provider_finish_reason=raw),  # type: ignore[arg-type]
    ]


def test_groq_and_deepseek_usage_shapes() -> None:
    groq = {"choices": [], "x_groq": {"usage": {"prompt_tokens": 5, "completion_tokens": 7}}}
    deepseek = {"choices": [], "usage": {"prompt_tokens": 9, "prompt_cache_hit_tokens": 8}}
    assert run(delta("stop"), groq)[-1] == Finish(
        finish_reason="stop",
        provider_finish_reason="stop",
        usage=TokenUsage(input_tokens=5, output_tokens=7),
    )
    usage = run(delta("stop"), deepseek)[0]
    assert isinstance(usage, Usage) and usage.cached_input_tokens == 8


def test_in_band_error_chunk() -> None:
    parser = ChatCompletionsParser()
    with pytest.raises(ProviderError) as caught:
        parser.feed({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}})
    assert (caught.value.code, caught.value.message) == (
        "provider_rate_limited",
        "Rate limit reached",
    )


def test_stream_cut_before_finish_reason() -> None:
    parser = ChatCompletionsParser()
    parser.feed(delta(content="partial"))
    with pytest.raises(ProviderError) as caught:
        parser.end()
    assert (caught.value.code, caught.value.retryable) == ("provider_error", True)


def test_in_band_error_code_names_overload() -> None:
    parser = ChatCompletionsParser()
    error = {"message": "Busy", "type": "server_error", "code": "overloaded"}
    with pytest.raises(ProviderError) as caught:
        parser.feed({"error": error})
    assert (caught.value.code, caught.value.message) == ("provider_overloaded", "Busy")
