"""OpenAI Responses API, sans-I/O: the request mapping (``POST /v1/responses`` bodies
to :meth:`tokenwire.Tokenwire.start` arguments) and the event encoding tables,
every encoded event parsed strictly with the ``openai`` SDK's own pydantic types."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import Response

from tests.support.responses import TERMINAL, TOOL, validate
from tokenwire.errors import OpenAIRequestError
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
)
from tokenwire.protocol.openai_responses_api import ResponseEncoder, item_location
from tokenwire.providers.base import Message, MessageToolCall, ToolSpec
from tokenwire.server.responses_request import parse_responses_request

# --- request mapping (sans-I/O) ----------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    parsed = parse_responses_request({"model": "fake:echo", "input": "hi", "stream": True})
    assert parsed.messages == (Message("user", "hi"),)
    assert parsed.stream and parsed.system is None and parsed.tools == ()


def test_items_map_to_messages_tool_calls_and_tool_results() -> None:
    parsed = parse_responses_request(
        {
            "model": "openai:gpt-4o",
            "instructions": "be brief",
            "input": [
                {"role": "developer", "content": "no lists"},
                {"role": "user", "content": [{"type": "input_text", "text": "time?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": "checking"},
                {"type": "function_call", "call_id": "c1", "name": "get_time", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "get_date", "arguments": ""},
                {"type": "function_call_output", "call_id": "c1", "output": "noon"},
                {
                    "type": "function_call_output",
                    "call_id": "c2",
                    "output": [{"type": "input_text", "text": "May 1"}],
                },
            ],
            "tools": [TOOL, {"type": "function", "name": "get_date", "description": "d"}],
            "tool_choice": {"type": "function", "name": "get_time"},
            "max_output_tokens": 50,
            "temperature": 0.2,
            "reasoning": {"effort": "low", "summary": "auto"},
            "metadata": {"k": "v"},
            "store": False,
            "include": ["reasoning.encrypted_content"],
        }
    )
    calls = (MessageToolCall("c1", "get_time", "{}"), MessageToolCall("c2", "get_date", "{}"))
    assert parsed.messages == (
        Message("user", "time?"),
        Message("assistant", "checking", tool_calls=calls),
        Message("tool", "noon", tool_call_id="c1", name="get_time"),
        Message("tool", "May 1", tool_call_id="c2", name="get_date"),
    )
    assert parsed.system == "be brief\n\nno lists"
    assert parsed.tools == (
        ToolSpec("get_time", "", {"type": "object"}),
        ToolSpec("get_date", "d", {"type": "object", "properties": {}}),
    )
    # tools also ride in params wherever the Chat Completions parser keeps them there
    assert {k: v for k, v in parsed.params.items() if k != "tools"} == {
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
        "reasoning_effort": "low",
    }
    assert parsed.echo["metadata"] == {"k": "v"} and parsed.echo["store"] is False


def test_tool_choice_none_offers_no_tools_and_params_pass_through() -> None:
    parsed = parse_responses_request(
        {
            "model": "fake:tools",
            "input": "x",
            "tools": [TOOL],
            "tool_choice": "none",
            "params": {"tool_args": {"a": 1}},
        }
    )
    assert parsed.tools == ()
    assert parsed.params == {"tool_args": {"a": 1}, "tool_choice": "none"}


def test_family_translation_is_the_chat_completions_one() -> None:
    parsed = parse_responses_request(
        {
            "model": "openai-responses:o3",
            "input": "x",
            "max_output_tokens": 9,
            "reasoning": {"effort": "high"},
        }
    )
    assert parsed.params == {"max_output_tokens": 9, "reasoning": {"effort": "high"}}


@pytest.mark.parametrize(
    ("body", "param", "status"),
    [
        ({"input": "x"}, "model", 400),
        ({"model": "nomodel", "input": "x"}, "model", 404),
        ({"model": "fake:echo", "input": "x", "foo": 1}, "foo", 400),
        (
            {"model": "fake:echo", "input": "x", "previous_response_id": 5},
            "previous_response_id",
            400,
        ),
        ({"model": "fake:echo", "input": "x", "background": True}, "background", 400),
        ({"model": "fake:echo", "input": []}, "input", 400),
        ({"model": "fake:echo", "input": [{"role": "tool", "content": "x"}]}, "input[0].role", 400),
        (
            {
                "model": "fake:echo",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}],
            },
            "input[0].content[0]",
            400,
        ),
        (
            {"model": "fake:echo", "input": [{"type": "item_reference", "id": "x"}]},
            "input[0].type",
            400,
        ),
        (
            {"model": "fake:echo", "input": [{"type": "function_call", "name": "f"}]},
            "input[0].call_id",
            400,
        ),
        (
            {"model": "fake:echo", "input": "x", "tools": [{"type": "web_search"}]},
            "tools[0].type",
            400,
        ),
        ({"model": "fake:echo", "input": "x", "tool_choice": "maybe"}, "tool_choice", 400),
        ({"model": "fake:echo", "input": "x", "temperature": "hot"}, "temperature", 400),
        ({"model": "fake:echo", "input": "x", "max_output_tokens": 0}, "max_output_tokens", 400),
        (
            {"model": "fake:echo", "input": "x", "reasoning": {"effort": "max"}},
            "reasoning.effort",
            400,
        ),
        ({"model": "fake:echo", "input": "x", "metadata": {"k": 1}}, "metadata", 400),
        ({"model": "fake:echo", "input": "x", "params": {"model": "a:b"}}, "params.model", 400),
        ({"model": "fake:echo", "input": "x", "params": 3}, "params", 400),
        (
            {"model": "fake:echo", "input": "x", "text": {"format": {"type": "xml"}}},
            "text.format",
            400,
        ),
        (
            {"model": "anthropic:claude", "input": "x", "reasoning": {"effort": "low"}},
            "reasoning.effort",
            400,
        ),
    ],
)
def test_bad_requests_name_the_parameter(body: dict[str, Any], param: str, status: int) -> None:
    with pytest.raises(OpenAIRequestError) as caught:
        parse_responses_request(body)
    assert (caught.value.param, caught.value.status) == (param, status)
    assert param.split("[")[0].split(".")[0] in caught.value.message


# --- event encoding (sans-I/O) -----------------------------------------------------------

START = Start(stream_id="s1", message_id="m", conversation_id="c", model="fake:x", created_at=5.0)


def encode(events: list[Event]) -> tuple[list[dict[str, Any]], ResponseEncoder]:
    encoder = ResponseEncoder("fake:x", {"tools": [], "tool_choice": "auto"})
    out = [e for event in events for e in encoder.feed(event)]
    for e in out:
        validate(e)  # the SDK's own types accept every event
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["type"] in TERMINAL for e in out].count(True) <= 1
    return out, encoder


def test_the_event_sequence_of_reasoning_text_and_a_function_call() -> None:
    out, encoder = encode(
        [
            START,
            ReasoningDelta(part=0, delta="hm"),
            TextDelta(part=1, delta="a"),
            TextDelta(part=1, delta="b"),
            ToolCallStart(part=2, tool_call_id="call_1", name="f"),
            ToolCallDelta(part=2, tool_call_id="call_1", delta='{"x"'),
            ToolCallDelta(part=2, tool_call_id="call_1", delta=": 1}"),
            ToolCall(part=2, tool_call_id="call_1", name="f", arguments={"x": 1}),
            Finish(finish_reason="tool_calls", usage=TokenUsage(input_tokens=3, output_tokens=4)),
        ]
    )
    assert [e["type"].removeprefix("response.") for e in out] == [
        "created",
        "in_progress",
        "output_item.added",
        "reasoning_summary_part.added",
        "reasoning_summary_text.delta",
        "reasoning_summary_text.done",
        "reasoning_summary_part.done",
        "output_item.done",
        "output_item.added",
        "content_part.added",
        "output_text.delta",
        "output_text.delta",
        "output_text.done",
        "content_part.done",
        "output_item.done",
        "output_item.added",
        "function_call_arguments.delta",
        "function_call_arguments.delta",
        "function_call_arguments.done",
        "output_item.done",
        "completed",
    ]
    final = Response.model_validate(out[-1]["response"])
    assert final.id == "resp_s1" and final.status == "completed"
    assert final.output_text == "ab"
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[2].arguments == '{"x": 1}'  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.total_tokens == 7
    assert Response.model_validate(encoder.response()) == final


def test_a_tool_call_without_deltas_sends_its_arguments_once() -> None:
    out, _ = encode(
        [
            START,
            ToolCall(part=0, tool_call_id="c", name="f", arguments={}),
            Finish(finish_reason="stop"),
        ]
    )
    deltas = [e["delta"] for e in out if e["type"] == "response.function_call_arguments.delta"]
    assert deltas == ["{}"]


def test_provider_executed_calls_are_not_sent() -> None:
    call = ToolCall(
        part=0, tool_call_id="ws", name="web_search", arguments={}, provider_executed=True
    )
    out, _ = encode([START, call, Finish(finish_reason="stop")])
    assert out[-1]["response"]["output"] == []


@pytest.mark.parametrize(
    ("terminal", "kind", "status", "details"),
    [
        (Finish(finish_reason="length"), "response.incomplete", "incomplete", "max_output_tokens"),
        (
            Finish(finish_reason="content_filter"),
            "response.incomplete",
            "incomplete",
            "content_filter",
        ),
        (Cancelled(reason="user"), "response.incomplete", "cancelled", None),
        (Error(code="provider_error", message="boom"), "response.failed", "failed", None),
    ],
)
def test_every_stream_ends_with_one_terminal_event(
    terminal: Event, kind: str, status: str, details: str | None
) -> None:
    out, _ = encode([START, TextDelta(part=0, delta="x"), terminal])
    assert out[-2]["type"] == "response.output_item.done"  # open items are closed first
    last = out[-1]
    assert last["type"] == kind
    response = Response.model_validate(last["response"])
    assert response.status == status
    assert (response.incomplete_details and response.incomplete_details.reason) == details
    if isinstance(terminal, Error):
        assert response.error is not None and response.error.message == "boom"
        assert response.error.code == "server_error"
    if isinstance(terminal, Cancelled):
        assert last["response"]["x_tokenwire"] == {"status": "cancelled", "reason": "user"}


def test_item_ids_locate_their_stream_and_index() -> None:
    assert item_location("msg_abc123_2") == ("abc123", 2)
    assert item_location("fc_abc_0") == ("abc", 0)
    for bad in ("msg_abc", "call_abc_1", "rs__1", "msg_abc_x", ""):
        assert item_location(bad) is None
