"""OpenAI-compatible ``POST /v1/chat/completions``: exact encoding tables, then the
official ``openai`` SDK against a real tokenwire server on 127.0.0.1 whose providers
replay the shared recordings from the ``mock_provider`` process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from tests.support.recordings import recordings
from tests.support.servers import uvicorn_thread
from tests.support.sse import chat_sse, read_sse
from tokenwire import ProviderRegistry, Settings, Tokenwire, create_app
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
from tokenwire.protocol.openai_compat import (
    ChunkEncoder,
    OpenAIRequestError,
    error_status,
)
from tokenwire.providers.anthropic import AnthropicProvider
from tokenwire.providers.base import Message, MessageToolCall, ToolSpec
from tokenwire.providers.openai_chat import OpenAIChatProvider
from tokenwire.server.openai_request import ChatRequest, parse_request

# --- request mapping (sans-I/O) ----------------------------------------------------------

USER = {"role": "user", "content": "hi"}
FN = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
PICK_G = {"type": "function", "function": {"name": "g"}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
BAD_ARGS = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
CALLS = {"role": "assistant", "content": None, "tool_calls": [CALL]}
TOOL_RESULT = {
    "role": "tool",
    "tool_call_id": "call_1",
    "content": [{"type": "text", "text": "42"}],
}


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (
            {"model": "fake:echo", "messages": [USER]},
            ChatRequest(model="fake:echo", messages=(Message("user", "hi"),)),
        ),
        (
            {
                "model": "openai:gpt-4o",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "developer", "content": [{"type": "text", "text": "no lists"}]},
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                    },
                    {"role": "assistant", "content": "ok", "name": "bot"},
                ],
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": 0.5,
                "max_completion_tokens": 9,
                "stop": ["x"],
                "seed": 1,
                "n": 1,
                "user": "u1",
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "top_p": None,
                "stall_after": 3,
            },
            ChatRequest(
                model="openai:gpt-4o",
                messages=(Message("user", "ab"), Message("assistant", "ok")),
                system="be brief\n\nno lists",
                params={
                    "temperature": 0.5,
                    "max_completion_tokens": 9,
                    "stop": ["x"],
                    "seed": 1,
                    "user": "u1",
                    "stall_after": 3,
                },
                stream=True,
                include_usage=True,
                tools=(ToolSpec("f", "", {"type": "object", "properties": {}}),),
            ),
        ),
        (
            {
                "model": "anthropic:claude",
                "messages": [USER],
                "max_completion_tokens": 100,
                "stop": "END",
                "user": "dropped",
                "parallel_tool_calls": False,
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "description": "d",
                            "parameters": {"type": "object"},
                        },
                    }
                ],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
            ChatRequest(
                model="anthropic:claude",
                messages=(Message("user", "hi"),),
                params={
                    "max_tokens": 100,
                    "stop_sequences": ["END"],
                    "tool_choice": {"type": "tool", "name": "f"},
                },
                tools=(ToolSpec("f", "d", {"type": "object"}),),
            ),
        ),
        (
            {
                "model": "openai-responses:o3",
                "messages": [USER],
                "max_tokens": 50,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "tool_choice": "required",
            },
            ChatRequest(
                model="openai-responses:o3",
                messages=(Message("user", "hi"),),
                params={"max_output_tokens": 50, "tool_choice": "required"},
                tools=(ToolSpec("f", "", {}),),
            ),
        ),
        (
            {
                "model": "openai:gpt-4o",
                "messages": [USER, CALLS, TOOL_RESULT, {"role": "user", "content": "and?"}],
                "tools": [FN],
                "tool_choice": "auto",
            },
            ChatRequest(
                model="openai:gpt-4o",
                messages=(
                    Message("user", "hi"),
                    Message(
                        "assistant", "", tool_calls=(MessageToolCall("call_1", "f", '{"x":1}'),)
                    ),
                    Message("tool", "42", tool_call_id="call_1"),
                    Message("user", "and?"),
                ),
                params={"tool_choice": "auto"},
                tools=(ToolSpec("f", "", {"type": "object"}),),
            ),
        ),
    ],
    ids=["minimal", "openai-full", "anthropic-translated", "responses-translated", "tool-loop"],
)
def test_parse_request(body: dict[str, Any], want: ChatRequest) -> None:
    snapshot = json.dumps(body)
    assert parse_request(body) == want
    assert json.dumps(body) == snapshot  # inputs are not mutated


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        ({"messages": [USER]}, 400, "model", "model"),
        ({"model": "gpt-4o", "messages": [USER]}, 404, "model", "provider:model"),
        ({"model": "fake:echo"}, 400, "messages", "non-empty array"),
        ({"model": "fake:echo", "messages": []}, 400, "messages", "non-empty array"),
        ({"model": "fake:echo", "messages": ["hi"]}, 400, "messages[0]", "object"),
        (
            {"model": "fake:echo", "messages": [{"role": "system", "content": "x"}]},
            400,
            "messages",
            "user or assistant",
        ),
        (
            {"model": "fake:echo", "messages": [{"role": "tool", "content": "x"}]},
            400,
            "messages[0].tool_call_id",
            "non-empty string",
        ),
        (
            {"model": "fake:echo", "messages": [{"role": "user", "content": None}]},
            400,
            "messages[0].content",
            "string or an array",
        ),
        (
            {
                "model": "fake:echo",
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
                ],
            },
            400,
            "messages[0].content[0]",
            "'image_url'",
        ),
        (
            {"model": "fake:echo", "messages": [{"role": "assistant", "tool_calls": [{}]}]},
            400,
            "messages[0].tool_calls[0].id",
            "non-empty string",
        ),
        ({"model": "fake:echo", "messages": [USER], "n": 2}, 400, "n", "'n' must be 1"),
        ({"model": "fake:echo", "messages": [USER], "logprobs": True}, 400, "logprobs", "log"),
        ({"model": "fake:echo", "messages": [USER], "functions": []}, 400, "functions", "tools"),
        (
            {"model": "fake:echo", "messages": [USER], "temperature": "hot"},
            400,
            "temperature",
            "number",
        ),
        ({"model": "fake:echo", "messages": [USER], "stop": [1]}, 400, "stop", "string"),
        ({"model": "anthropic:c", "messages": [USER], "seed": 1}, 400, "seed", "'anthropic:'"),
        (
            {"model": "openai-responses:o", "messages": [USER], "stop": "x"},
            400,
            "stop",
            "responses",
        ),
        (
            {"model": "anthropic:c", "messages": [USER], "tools": [{"type": "x"}]},
            400,
            "tools[0]",
            "function",
        ),
        (
            {"model": "fake:echo", "messages": [USER], "stream_options": 1},
            400,
            "stream_options",
            "object",
        ),
        (
            {"model": "fake:echo", "messages": [USER, TOOL_RESULT]},
            400,
            "messages[1].tool_call_id",
            "answers no tool call",
        ),
        (
            {"model": "fake:echo", "messages": [USER, {**CALLS, "tool_calls": [BAD_ARGS]}]},
            400,
            "messages[1].tool_calls[0].function.arguments",
            "JSON text",
        ),
        (
            {"model": "fake:echo", "messages": [USER, {**CALLS, "tool_calls": {}}]},
            400,
            "messages[1].tool_calls",
            "array",
        ),
        (
            {"model": "fake:echo", "messages": [USER, {**TOOL_RESULT, "content": None}, CALLS]},
            400,
            "messages[1].tool_call_id",
            "answers no tool call",
        ),
        (
            {"model": "fake:echo", "messages": [USER, CALLS, {**TOOL_RESULT, "content": 1}]},
            400,
            "messages[2].content",
            "string or an array",
        ),
        (
            {"model": "fake:echo", "messages": [USER], "tools": [FN], "tool_choice": "any"},
            400,
            "tool_choice",
            "'required'",
        ),
        (
            {"model": "fake:echo", "messages": [USER], "tools": [FN], "tool_choice": PICK_G},
            400,
            "tool_choice",
            "'g'",
        ),
        (
            {"model": "fake:echo", "messages": [USER], "tool_choice": "required"},
            400,
            "tool_choice",
            "no 'tools'",
        ),
        ({"model": "fake:echo", "messages": [USER], "tools": {}}, 400, "tools", "array"),
        (
            {
                "model": "fake:echo",
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "a b"}}],
            },
            400,
            "tools[0].function.name",
            "1-64",
        ),
        (
            {
                "model": "fake:echo",
                "messages": [USER],
                "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}],
            },
            400,
            "tools[0].function.parameters",
            "JSON Schema",
        ),
    ],
)
def test_parse_request_refuses(
    body: dict[str, Any], status: int, param: str, fragment: str
) -> None:
    with pytest.raises(OpenAIRequestError) as info:
        parse_request(body)
    assert (info.value.status, info.value.param) == (status, param)
    assert fragment in info.value.message


# --- chunk encoding (sans-I/O) -------------------------------------------------------------

START = Start(
    seq=1, stream_id="s1", message_id="m", conversation_id="c", model="fake:x", created_at=7.9
)
HEAD = (
    b'data: {"id":"chatcmpl-s1","object":"chat.completion.chunk","created":7,"model":"m",'
    b'"service_tier":"default","system_fingerprint":"fp_tokenwire",'
)


def _choice(delta: str, finish: str = "null", usage: bool = False) -> bytes:
    tail = b',"usage":null' if usage else b""
    return (
        HEAD
        + b'"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]%s}\n\n'
        % (delta.encode(), finish.encode(), tail)
    )


USAGE_JSON = (
    b'"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8,'
    b'"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}'
)
TOKENS = TokenUsage(input_tokens=3, output_tokens=5, reasoning_tokens=2, cached_input_tokens=1)


@pytest.mark.parametrize(
    ("events", "include_usage", "want"),
    [
        (
            [
                START,
                TextDelta(part=0, delta="h\u00e9"),
                TextDelta(part=0, delta=""),
                Finish(finish_reason="stop"),
            ],
            False,
            _choice('{"role":"assistant","content":"","refusal":null}')
            + _choice('{"content":"h\u00e9"}')
            + _choice("{}", '"stop"')
            + b"data: [DONE]\n\n",
        ),
        (
            [
                START,
                ReasoningDelta(part=0, delta="r"),
                Usage(input_tokens=1),
                Finish(finish_reason="other", usage=TOKENS),
            ],
            True,
            _choice('{"role":"assistant","content":"","refusal":null}', usage=True)
            + _choice('{"reasoning_content":"r"}', usage=True)
            + _choice("{}", '"stop"', usage=True)
            + HEAD
            + b'"choices":[],'
            + USAGE_JSON
            + b"}\n\ndata: [DONE]\n\n",
        ),
        (
            [
                START,
                ToolCallStart(part=0, tool_call_id="a", name="f"),
                ToolCallDelta(part=0, tool_call_id="a", delta='{"x":'),
                ToolCallDelta(part=0, tool_call_id="a", delta="1}"),
                ToolCall(part=0, tool_call_id="a", name="f", arguments={"x": 1}),
                ToolCall(part=1, tool_call_id="b", name="g", arguments={}),
                ToolCallStart(part=2, tool_call_id="w", name="web", provider_executed=True),
                ToolCallDelta(part=2, tool_call_id="w", delta="{}"),
                Finish(finish_reason="tool_calls"),
            ],
            False,
            _choice('{"role":"assistant","content":"","refusal":null}')
            + _choice(
                '{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":""}}]}'
            )
            + _choice('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"x\\":"}}]}')
            + _choice('{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}')
            + _choice(
                '{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"g","arguments":"{}"}}]}'
            )
            + _choice("{}", '"tool_calls"')
            + b"data: [DONE]\n\n",
        ),
        (
            [START, TextDelta(part=0, delta="a"), Cancelled(reason="user")],
            False,
            _choice('{"role":"assistant","content":"","refusal":null}')
            + _choice('{"content":"a"}')
            + _choice("{}", '"stop"')[:-3]
            + b',"x_tokenwire":{"status":"cancelled","reason":"user"}}\n\ndata: [DONE]\n\n',
        ),
        (
            [START, Error(code="provider_rate_limited", message="slow down", retryable=True)],
            True,
            _choice('{"role":"assistant","content":"","refusal":null}', usage=True)
            + b'data: {"error":{"message":"slow down","type":"rate_limit_error",'
            b'"param":null,"code":"provider_rate_limited"}}\n\n',
        ),
    ],
    ids=["text", "reasoning-usage", "tools", "cancelled", "error"],
)
def test_chunk_encoding_is_byte_exact(
    events: list[Event], include_usage: bool, want: bytes
) -> None:
    encoder = ChunkEncoder("m", include_usage=include_usage)
    assert b"".join(encoder.encode(e) for e in events) == want


def test_completion_object() -> None:
    encoder = ChunkEncoder("m")
    events: list[Event] = [
        START,
        ReasoningDelta(part=0, delta="hm"),
        ToolCallStart(part=1, tool_call_id="a", name="f"),
        ToolCallDelta(part=1, tool_call_id="a", delta='{"x": 1}'),
        ToolCall(part=1, tool_call_id="a", name="f", arguments={"x": 1}),
        Finish(finish_reason="tool_calls", usage=TOKENS),
    ]
    for event in events:
        encoder.feed(event)
    assert encoder.completion() == {
        "id": "chatcmpl-s1",
        "object": "chat.completion",
        "created": 7,
        "model": "m",
        "service_tier": "default",
        "system_fingerprint": "fp_tokenwire",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "reasoning_content": "hm",
                    "tool_calls": [
                        {
                            "id": "a",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"x": 1}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": json.loads(b"{" + USAGE_JSON + b"}")["usage"],
    }


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("provider_rate_limited", 429),
        ("provider_overloaded", 503),
        ("provider_timeout", 504),
        ("provider_error", 502),
        ("invalid_request", 400),
        ("producer_lost", 502),
    ],
)
def test_error_status(code: str, status: int) -> None:
    assert error_status(code) == status


# --- end to end: the openai SDK against a real server ---------------------------------------

PREFIX = {"openai-chat": "openai", "anthropic-messages": "anthropic"}
PATHS = recordings("openai-chat") + recordings("anthropic-messages")
NONEMPTY = {
    "gpt-4o_tool_call_include_usage": "tool_calls",
    "groq_deepseek-r1-distill_reasoning_1507chunks": "reasoning",
    "claude_tool_use_input_json_delta": "tool_calls",
    "gpt-4.1-nano_text_303chunks": "text",
    "claude-haiku-4-5_thinking": "reasoning",
}


@pytest.fixture(scope="module")
def server(mock_provider: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    registry = ProviderRegistry(fake=True)
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(10.0))
    registry.register(
        "openai", OpenAIChatProvider(base_url=mock_provider + "/v1", api_key="k", http_client=http)
    )
    registry.register(
        "anthropic", AnthropicProvider(base_url=mock_provider, api_key="k", http_client=http)
    )
    settings = Settings(
        fake_provider=True, data_dir=tmp_path_factory.mktemp("openai-compat"), max_retries=0
    )
    with uvicorn_thread(create_app(tokenwire=Tokenwire(settings, registry=registry))) as url:
        yield url


@pytest.fixture(scope="module")
def sdk(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server + "/v1", api_key="unused", max_retries=0, timeout=30
    ) as client:
        yield client


def native(server: str, model: str) -> dict[str, Any]:
    """What the native SSE stream of the same generation says."""
    events = chat_sse(server, model)
    hidden = {e["tool_call_id"] for e in events if e.get("provider_executed")}
    usage = next((e for e in reversed(events) if e["type"] == "usage"), None)
    last = events[-1]
    if last["type"] == "finish" and last.get("usage"):
        usage = last["usage"]
    return {
        "text": "".join(e["delta"] for e in events if e["type"] == "text-delta"),
        "reasoning": "".join(e["delta"] for e in events if e["type"] == "reasoning-delta"),
        "tool_calls": [
            (e["name"], e["arguments"] if not e.get("invalid") else e["arguments_text"])
            for e in events
            if e["type"] == "tool-call" and e["tool_call_id"] not in hidden
        ],
        "finish_reason": "stop"
        if last.get("finish_reason") == "other"
        else last.get("finish_reason"),
        "usage": _usage(usage),
        "error": last["message"] if last["type"] == "error" else None,
    }


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    u = usage or {}
    return {
        "prompt_tokens": u.get("input_tokens", 0),
        "completion_tokens": u.get("output_tokens", 0),
        "reasoning_tokens": u.get("reasoning_tokens", 0),
        "cached_tokens": u.get("cached_input_tokens", 0),
    }


def _sdk_usage(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "reasoning_tokens": usage.completion_tokens_details.reasoning_tokens,
        "cached_tokens": usage.prompt_tokens_details.cached_tokens,
    }


def _args(text: str) -> Any:
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


def read_streamed(sdk: openai.OpenAI, model: str) -> dict[str, Any]:
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, str]] = {}
    finish: str | None = None
    usage: dict[str, int] | None = None
    with sdk.chat.completions.with_streaming_response.create(
        model=model,
        messages=[{"role": "user", "content": "replay"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        stream_id = response.headers["x-tokenwire-stream-id"]
        for chunk in response.parse():
            assert chunk.id == f"chatcmpl-{stream_id}" and chunk.model == model
            if chunk.usage is not None:
                usage = _sdk_usage(chunk.usage)
            for choice in chunk.choices:
                delta = choice.delta
                text.append((delta.content or "") + (delta.refusal or ""))  # native: both text
                reasoning.append(getattr(delta, "reasoning_content", None) or "")
                for call in delta.tool_calls or ():
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    if call.function and call.function.name:
                        entry["name"] = call.function.name
                    entry["arguments"] += (call.function and call.function.arguments) or ""
                finish = choice.finish_reason or finish
    return {
        "text": "".join(text),
        "reasoning": "".join(reasoning),
        "tool_calls": [(c["name"], _args(c["arguments"])) for _, c in sorted(calls.items())],
        "finish_reason": finish,
        "usage": usage,
        "error": None,
    }


def read_whole(sdk: openai.OpenAI, model: str) -> dict[str, Any]:
    raw = sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "replay"}]
    )
    completion = raw.parse()
    assert completion.id == f"chatcmpl-{raw.headers['x-tokenwire-stream-id']}"
    (choice,) = completion.choices
    message = choice.message
    return {
        "text": (message.content or "") + (message.refusal or ""),
        "reasoning": getattr(message, "reasoning_content", None) or "",
        "tool_calls": [
            (c.function.name, _args(c.function.arguments))
            for c in message.tool_calls or ()
            if c.type == "function"
        ],
        "finish_reason": choice.finish_reason,
        "usage": _sdk_usage(completion.usage),
        "error": None,
    }


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p.parent.name}/{p.stem}")
@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "whole"])
def test_sdk_reads_what_the_native_stream_says(
    server: str, sdk: openai.OpenAI, path: Path, streamed: bool
) -> None:
    model = f"{PREFIX[path.parent.name]}:{path.parent.name}/{path.stem}"
    want = native(server, model)
    if want["error"] is not None:
        with pytest.raises(openai.APIError) as info:
            (read_streamed if streamed else read_whole)(sdk, model)
        assert want["error"] in info.value.message
        return
    got = (read_streamed if streamed else read_whole)(sdk, model)
    assert got == want
    if path.stem in NONEMPTY:  # the comparison is not between two empty readings
        assert got[NONEMPTY[path.stem]] and got["usage"]["completion_tokens"] > 0


def test_cancel_through_the_native_api_ends_the_sdk_stream(server: str, sdk: openai.OpenAI) -> None:
    text = ""
    with sdk.chat.completions.with_streaming_response.create(
        model="fake:lorem",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        extra_body={"stall_after": 3},
    ) as response:
        stream_id = response.headers["x-tokenwire-stream-id"]
        chunks = response.parse()
        for chunk in chunks:
            text += chunk.choices[0].delta.content or ""
            if text == "lorem ipsum dolor":
                break
        cancel = httpx.post(f"{server}/v1/streams/{stream_id}/cancel")
        assert cancel.status_code == 202
        rest = list(chunks)
    assert [c.choices[0].delta.content for c in rest] == [None]
    assert rest[-1].choices[0].finish_reason == "stop"
    assert rest[-1].model_extra == {"x_tokenwire": {"status": "cancelled", "reason": "user"}}
    snapshot = httpx.get(f"{server}/v1/streams/{stream_id}").json()
    assert (snapshot["status"], snapshot["text"]) == ("cancelled", "lorem ipsum dolor")


def test_a_client_disconnect_does_not_stop_the_generation(server: str, sdk: openai.OpenAI) -> None:
    with sdk.chat.completions.with_streaming_response.create(
        model="fake:lorem",
        messages=[{"role": "user", "content": "go"}],
        stream=True,
        extra_body={"tokens": 60, "delay_ms": 5},
    ) as response:
        stream_id = response.headers["x-tokenwire-stream-id"]
        next(iter(response.parse()))
    with httpx.Client(base_url=server, timeout=30) as client:
        events, _ = read_sse(client, "GET", f"/v1/streams/{stream_id}/events")
    assert events[-1]["type"] == "finish"
    assert len("".join(e["delta"] for e in events if e["type"] == "text-delta").split()) == 60


def test_errors_after_the_start_are_in_band(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="fake:lorem",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"fail_after": 2},
    )
    with pytest.raises(openai.APIError) as info:
        list(stream)
    assert info.value.message == "fake failure mid-stream"
    assert not isinstance(info.value, openai.APIStatusError)


@pytest.mark.parametrize(
    ("failure", "exc_type", "status"),
    [
        ("rate_limited", openai.RateLimitError, 429),
        ("overloaded", openai.InternalServerError, 503),
        ("error", openai.InternalServerError, 502),
    ],
)
def test_whole_answer_failures_are_http_errors(
    sdk: openai.OpenAI, failure: str, exc_type: type[openai.APIStatusError], status: int
) -> None:
    with pytest.raises(exc_type) as info:
        sdk.chat.completions.create(
            model="fake:echo",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"fail_before": failure},
        )
    assert info.value.status_code == status
    assert info.value.response.headers["x-tokenwire-stream-id"]
    assert f"fake {failure}" in info.value.message


@pytest.mark.parametrize(
    ("kwargs", "exc_type", "fragment"),
    [
        ({"model": "nope:x"}, openai.NotFoundError, "unknown provider 'nope'"),
        ({"model": "gpt-4o"}, openai.NotFoundError, "provider:model"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}
                ]
            },
            openai.BadRequestError,
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "a"}]},
            openai.BadRequestError,
            "'messages[0].tool_call_id' 'a' answers no tool call",
        ),
        (
            {"model": "fake:tools", "tools": [{"type": "function", "function": {"name": 1}}]},
            openai.BadRequestError,
            "'tools[0].function.name'",
        ),
        ({"n": 2}, openai.BadRequestError, "'n' must be 1"),
        ({"logprobs": True}, openai.BadRequestError, "'logprobs'"),
        ({"temperature": "hot"}, openai.BadRequestError, "'temperature'"),
    ],
)
def test_bad_requests_raise_the_sdk_exceptions(
    sdk: openai.OpenAI, kwargs: dict[str, Any], exc_type: type[openai.APIStatusError], fragment: str
) -> None:
    args: dict[str, Any] = {"model": "fake:echo", "messages": [USER], **kwargs}
    for stream in (False, True):
        with pytest.raises(exc_type) as info:
            sdk.chat.completions.create(**args, stream=stream)
        assert fragment in info.value.message
        body = info.value.body
        assert isinstance(body, dict) and fragment in body["message"] and body["type"]


@pytest.mark.parametrize(
    ("content", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
    ],
)
def test_body_validation_errors_have_openais_shape(
    server: str, content: bytes, param: str | None, fragment: str
) -> None:
    response = httpx.post(
        f"{server}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]
    native = httpx.post(
        f"{server}/v1/chat", content=content, headers={"content-type": "application/json"}
    )
    assert (
        native.status_code == 422 and "detail" in native.json()
    )  # the native API keeps its format
